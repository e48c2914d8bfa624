"""The platform's JSON API through an HTTP client (FastAPI's TestClient): plan validation with the CLI's
messages, access control and CSRF, queue limits, path traversal and upload limits, leaderboards (statistics
against scipy, ranks equal to ``harness.views.leaderboard``'s, one section per base checkpoint), the
``cancelled`` status. Nothing here trains a model."""

from __future__ import annotations

import hashlib
import json
import os
import re
import statistics
import zipfile
from html.parser import HTMLParser
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from markupsafe import escape
from scipy import stats
from typer.testing import CliRunner

from harness.cli import app as cli_app
from harness.views import leaderboard as lb
from harness.web.app import create_app
from harness.web.auth import CSRF_HEADER
from harness.web.config import ServerConfig, check_access, token_sha256
from harness.errors import HarnessError
from specs.result import ResultRecord

BASE = "http://127.0.0.1:8000"
TOKEN = "correct-horse-battery-staple"


@pytest.fixture
def local(tmp_path):
    """A local server (its owner, no credentials) with its queue stopped: plans stay queued."""
    app = create_app(ServerConfig(store=tmp_path / "store"), start_queue=False)
    with TestClient(app, base_url=BASE) as client:
        client.headers[CSRF_HEADER] = client.get("/api/me").json()["csrf"]
        yield client


def _record(method, speedup, seed, final, status="ok", track="t", reg=None, latency=None, key=None, base_sha=None,
            recal=None, constant=False):
    ok = status == "ok"
    return ResultRecord.model_validate(dict(
        status=status, error=None if ok else f"{status}: why",
        run_key=key or hashlib.sha256(f"{method}{reg}{speedup}{seed}{base_sha or ''}".encode()).hexdigest(),
        method={"id": method, "version": "1", "runner": "subprocess"}, track={"id": track, "hash": "0" * 64},
        regularizer={"id": reg, "version": "1", "runner": "subprocess"} if reg else None,
        model="resnet18", dataset="digits", seed=seed, strategy="protected_global",
        speedup={"target": speedup, "achieved": speedup * 1.01 if ok else None},
        macs={"base": 100.0, "pruned": 100 / speedup if ok else None}, params={"base": 100, "pruned": 40 if ok else None},
        metric={"name": "top1", "base": 90.0, "pruned": 10.0 if ok else None, "final": final if ok else None,
                "pruned_recal": recal if ok else None, "delta": final - 90.0 if ok else None},
        latency=None if latency is None or not ok else {
            "device": "cpu", "batch1_base_ms": 2.0, "batch1_pruned_ms": 2.0 / latency, "speedup_batch1": latency,
            "throughput_batch": 32, "throughput_base": 100.0, "throughput_pruned": 100.0 * latency,
            "speedup_throughput": latency, "repeats": 5},
        diagnostics={"tied_fraction": 1.0 if constant else 0.0, "constant_groups": ["g0", "g1"] if constant else [],
                     "groups": 2} if ok else None,
        layer_channels={"conv1": [64, 32]}, min_channel_fraction=0.5, timing={"step_s": 1.0, "total_s": 2.0},
        provenance={"harness_version": "0", "spec_version": "1.0", "checkpoint_sha256": base_sha},
        started_at="a", finished_at="b"))


def _write(store: Path, records) -> None:
    for r in records:
        d = store / r.track.id / f"{r.method.id}-{r.run_key[:8]}-{r.seed}-{r.speedup.target:g}"
        d.mkdir(parents=True)
        (d / "result.json").write_text(r.model_dump_json())


# -- plans -----------------------------------------------------------------------------------------
def _cli_error(*args) -> str:
    res = CliRunner().invoke(cli_app, ["sweep", *args])
    assert res.exit_code == 2, res.output
    line = res.output.strip().splitlines()[-1]
    assert line.startswith("error: ")
    return line[len("error: "):]


BASE_PLAN = {"track": "digits-resnet18", "methods": ["lamp"], "seeds": [0]}
BASE_FLAGS = {"--track": "digits-resnet18", "--methods": "lamp", "--seeds": "0"}


@pytest.mark.parametrize("change, flags, field", [
    ({"methods": ["nope"]}, {"--methods": "nope"}, "methods"),
    ({"methods": ["group_norm"]}, {"--methods": "group_norm"}, "methods"),
    ({"regularizers": ["lamp"]}, {"--regularizers": "lamp"}, "regularizers"),
    ({"speedups": [0.5]}, {"--speedups": "0.5"}, "speedups"),
    ({"track": "digits-resnet81"}, {"--track": "digits-resnet81"}, "track"),
])
def test_invalid_plans_get_the_cli_message_next_to_the_field(local, tmp_path, change, flags, field):
    cli_flags = [x for kv in {**BASE_FLAGS, **flags}.items() for x in kv] + ["--out", str(tmp_path / "cli")]
    expected = _cli_error(*cli_flags)
    for dry in ("true", "false"):
        res = local.post(f"/api/plans?dry_run={dry}", json={**BASE_PLAN, **change})
        assert res.status_code == 422, res.text
        assert res.json() == {"error": expected, "field": field}
    assert local.get("/api/plans").json() == []  # nothing queued
    assert not list((tmp_path / "cli").rglob("result.json"))


def test_the_server_decides_where_and_how(local, tmp_path):
    res = local.post("/api/plans?dry_run=true", json={**BASE_PLAN, "hyperparameters": {"pp": 3}})
    assert res.status_code == 422 and res.json()["field"] == "hyperparameters" and "pp" in res.json()["error"]
    res = local.post("/api/plans", json={"track": "digits-resnet18", "out": "/etc"})
    assert res.status_code == 422 and res.json()["field"] == "out" and "Extra inputs" in res.json()["error"]
    res = local.post("/api/plans?dry_run=true", json={"track": "digits-resnet18", "methods": ["lamp", "fpgm"],
                                                      "regularizers": ["-", "group_norm"], "speedups": [2, 4]})
    assert res.status_code == 201, res.text
    assert res.json() == {"runs": 2 * 2 * 2 * 3, "new": 24, "track": "digits-resnet18", "targets": [2.0, 4.0],
                          "seeds": [0, 1, 2]}


def test_a_queued_plan_lists_its_runs_and_cancels(local):
    res = local.post("/api/plans", json={"track": "digits-resnet18", "methods": ["lamp"], "speedups": [2], "seeds": [0, 1],
                                         "label": "two seeds"})
    assert res.status_code == 201, res.text
    out = res.json()
    assert out["counts"] == {"queued": 2} and [r["seed"] for r in out["runs"]] == [0, 1]
    from harness.methods import find_method
    from harness.protocol.run import RunSpec
    from harness.protocol.run import run_key_of
    from harness.tracks import load_track
    spec = RunSpec(track=load_track("digits-resnet18"), method=find_method("lamp"), speedup=2.0, seed=1)
    assert out["runs"][1]["key"] == run_key_of(spec)  # the CLI's run key: the same store entry
    plan_id = out["plan"]["id"]
    assert local.get(f"/api/runs/{run_key_of(spec)}").json()["status"] == "queued"
    res = local.post(f"/api/plans/{plan_id}/cancel")
    assert res.status_code == 200 and res.json()["plan"]["state"] == "cancelled"
    assert local.get(f"/api/runs/{run_key_of(spec)}").json()["status"] == "not run"  # never started: no record


def test_per_user_queue_limit(tmp_path):
    app = create_app(ServerConfig(store=tmp_path / "s", max_queued_runs=3), start_queue=False)
    with TestClient(app, base_url=BASE) as client:
        client.headers[CSRF_HEADER] = client.get("/api/me").json()["csrf"]
        plan = {"track": "digits-resnet18", "methods": ["lamp"], "speedups": [2], "seeds": [0, 1]}
        assert client.post("/api/plans", json=plan).status_code == 201
        before = sorted((tmp_path / "s" / ".web" / "plans").iterdir())
        res = client.post("/api/plans", json={**plan, "seeds": [2, 3]})
        assert res.status_code == 429 and "limit 3" in res.json()["error"]
        assert sorted((tmp_path / "s" / ".web" / "plans").iterdir()) == before


# -- access ----------------------------------------------------------------------------------------
def test_beyond_loopback_needs_credentials(tmp_path):
    with pytest.raises(HarnessError, match="--token"):
        check_access(ServerConfig(store=tmp_path, host="0.0.0.0"), None)
    res = CliRunner().invoke(cli_app, ["serve", str(tmp_path), "--host", "0.0.0.0"])
    assert res.exit_code == 2 and "exposes the platform beyond this machine" in res.output
    check_access(ServerConfig(store=tmp_path, host="0.0.0.0"), TOKEN)  # fine


def test_token_sessions_and_csrf(tmp_path):
    app = create_app(ServerConfig(store=tmp_path / "s", host="0.0.0.0"), token=TOKEN, start_queue=False)
    plan = {"track": "digits-resnet18", "methods": ["lamp"], "speedups": [2], "seeds": [0]}
    with TestClient(app, base_url=BASE) as client:
        assert client.get("/api/me").status_code == 401
        assert client.get("/api/me", headers={"Authorization": "Bearer wrong-token-wrong"}).status_code == 401
        page = client.get("/tracks/x", follow_redirects=False)
        assert page.status_code == 303 and page.headers["location"] == "/login?next=/tracks/x"
        # API clients: the bearer token, no CSRF header needed (a browser never sends it on its own)
        bearer = {"Authorization": f"Bearer {TOKEN}"}
        assert client.post("/api/plans?dry_run=true", json=plan, headers=bearer).status_code == 201
        # browsers: a session cookie, and every state change carries the CSRF token
        assert client.post("/api/session", json={"token": "nope"}).status_code == 401
        login = client.post("/api/session", json={"token": TOKEN})
        assert login.status_code == 200 and "httponly" in login.headers["set-cookie"].lower()
        assert "samesite=strict" in login.headers["set-cookie"].lower()
        csrf = login.json()["csrf"]
        assert client.get("/api/me").json()["user"] == "owner"
        res = client.post("/api/plans", json=plan)
        assert res.status_code == 403 and "X-PBench-CSRF" in res.json()["error"]
        res = client.post("/api/plans", json=plan, headers={CSRF_HEADER: csrf, "Origin": "http://evil.example"})
        assert res.status_code == 403 and "cross-origin" in res.json()["error"]
        assert client.get("/api/plans").json() == []  # nothing was queued by the refused requests
        res = client.post("/api/plans", json=plan, headers={CSRF_HEADER: csrf, "Origin": BASE})
        assert res.status_code == 201, res.text


def test_users_file_and_local_csrf(tmp_path):
    users = tmp_path / "users.yaml"
    users.write_text(f"users:\n  - {{name: alice, token_sha256: {token_sha256('alice-token-0123456')}, "
                     f"max_queued_runs: 1}}\n")
    app = create_app(ServerConfig(store=tmp_path / "s", users_file=users), start_queue=False)
    plan = {"track": "digits-resnet18", "methods": ["lamp"], "speedups": [2], "seeds": [0, 1]}
    with TestClient(app, base_url=BASE) as client:
        alice = {"Authorization": "Bearer alice-token-0123456"}
        assert client.get("/api/me", headers=alice).json() == {
            "user": "alice", "admin": False, "csrf": client.get("/api/me", headers=alice).json()["csrf"],
            "local_owner": False}
        res = client.post("/api/plans", json=plan, headers=alice)
        assert res.status_code == 429  # her own limit: one run at a time
        res = client.post("/api/plans", json={**plan, "track": "/tmp/some.yaml"}, headers=alice)
        assert res.status_code == 422 and res.json()["field"] == "track"  # no server paths on a shared server
    # a local server (no credentials) still refuses a state change a page of another site could forge
    app = create_app(ServerConfig(store=tmp_path / "t"), start_queue=False)
    with TestClient(app, base_url=BASE) as client:
        assert client.post("/api/plans?dry_run=true", json=plan).status_code == 403
        res = client.get("/api/me", headers={"Host": "attacker.example:8000"})
        assert res.status_code == 400 and "unexpected Host" in res.json()["error"]  # no DNS rebinding


# -- traversal and limits --------------------------------------------------------------------------
def test_path_traversal_gets_4xx_and_changes_nothing(tmp_path):
    store = tmp_path / "s"
    rec = _record("lamp", 2, 0, 80.0, key="ab" * 32)
    _write(store, [rec])
    run_dir = next(store.rglob("result.json")).parent
    (run_dir / "secret.txt").write_text("no")
    (tmp_path / "outside.txt").write_text("no")
    before = sorted(p for p in tmp_path.rglob("*") if ".web" not in p.parts)
    app = create_app(ServerConfig(store=store), start_queue=False)
    with TestClient(app, base_url=BASE) as client:
        key = rec.run_key
        assert client.get(f"/api/runs/{key}/files/result.json").json()["run_key"] == key
        for url in [f"/api/runs/{key}/files/secret.txt", f"/api/runs/{key}/files/..%2F..%2F..%2Foutside.txt",
                    f"/api/runs/{key}/files/%2e%2e%2foutside.txt", "/api/runs/..%2F..%2Fetc%2Fpasswd",
                    f"/api/runs/{key}/../../../outside.txt", "/api/runs/" + "../" * 5 + "etc/passwd",
                    "/api/plans/..%2Fsecret", "/static/../app.py", "/static/..%2Fapp.py"]:
            res = client.get(url)
            assert 400 <= res.status_code < 500, (url, res.status_code)
            assert b"no" != res.content and b"import" not in res.content
    after = sorted(p for p in tmp_path.rglob("*") if ".web" not in p.parts)
    assert after == before


def test_oversized_uploads_get_413_and_nothing_is_kept(tmp_path):
    app = create_app(ServerConfig(store=tmp_path / "s", max_method_mb=0.01, max_model_mb=0.01), start_queue=False)
    uploads = tmp_path / "s" / ".web" / "uploads"
    with TestClient(app, base_url=BASE) as client:
        client.headers[CSRF_HEADER] = client.get("/api/me").json()["csrf"]
        big = b"x" * 200_000
        for url in ("/api/uploads/methods", "/api/uploads/models"):
            res = client.post(url, files={"file": ("m.zip", big)})
            assert res.status_code == 413, res.text
        # a client that does not declare the size is cut off as its body streams in
        res = client.post("/api/uploads/methods", content=iter([b"--x\r\n", big]),
                          headers={"content-type": "multipart/form-data; boundary=x"})
        assert res.status_code == 413
        assert client.get("/api/uploads").json() == {"methods": [], "models": []}
    assert [p for p in uploads.rglob("*") if p.is_file()] == []


def _zip(tmp_path: Path, entries: dict, name="m.zip", symlink: str = None) -> bytes:
    path = tmp_path / name
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for arc, data in entries.items():
            zf.writestr(arc, data)
        if symlink:
            info = zipfile.ZipInfo(symlink)
            info.external_attr = (0o120777 << 16)
            zf.writestr(info, "/etc/passwd")
    return path.read_bytes()


def _method_files(mid="uploaded_l1", version="0.1.0") -> dict:
    from harness.methods import TEMPLATE_DIR
    manifest = json.loads((TEMPLATE_DIR / "manifest.json").read_text())
    manifest.update(id=mid, version=version)
    manifest.pop("$schema", None)
    return {"manifest.json": json.dumps(manifest), "method.py": (TEMPLATE_DIR / "method.py").read_text()}


@pytest.mark.parametrize("case, status, message", [
    ("traversal", 422, "'..' would leave"),
    ("absolute", 422, "absolute"),
    ("symlink", 422, "symbolic link"),
    ("bomb", 422, "zip bomb"),
    ("unpacked", 413, "unpacks to"),
    ("no_manifest", 422, "no manifest.json"),
    ("bad_manifest", 422, "manifest"),
    ("reference_id", 409, "reference method"),
    ("not_zip", 422, "not a zip"),
])
def test_unsafe_or_invalid_method_zips_are_refused(tmp_path, case, status, message):
    files = _method_files()
    entries, link = dict(files), None
    if case == "traversal":
        entries["../../evil.py"] = "x"
    elif case == "absolute":
        entries["/tmp/evil.py"] = "x"
    elif case == "symlink":
        link = "data"
    elif case == "bomb":
        entries["weights.bin"] = b"\0" * (3 << 20)  # 3 MB of zeros deflate ~1000:1
    elif case == "unpacked":
        entries["weights.bin"] = os.urandom(2 << 20)  # incompressible: 2 MB zipped and unpacked, limit 1 MB
    elif case == "no_manifest":
        entries = {"method.py": files["method.py"]}
    elif case == "bad_manifest":
        entries["manifest.json"] = json.dumps({**json.loads(files["manifest.json"]), "provides": ["magic"]})
    elif case == "reference_id":
        entries = _method_files("magnitude_l1")
    data = b"PK not a zip" if case == "not_zip" else _zip(tmp_path, entries, symlink=link)
    app = create_app(ServerConfig(store=tmp_path / "s", max_method_unpacked_mb=1), start_queue=False)
    with TestClient(app, base_url=BASE) as client:
        client.headers[CSRF_HEADER] = client.get("/api/me").json()["csrf"]
        res = client.post("/api/uploads/methods", files={"file": ("m.zip", data)})
        assert res.status_code == status, res.text
        assert message in res.json()["error"]
        assert client.get("/api/uploads").json()["methods"] == []
    assert not (tmp_path / "evil.py").exists() and not Path("/tmp/evil.py").exists()
    leftovers = [p for p in (tmp_path / "s" / ".web" / "uploads").rglob("*") if p.is_file()]
    assert leftovers == []


def test_model_weights_are_data_checked_against_their_architecture(tmp_path):
    """An uploaded model is safetensors weights of an architecture the harness builds: they load strictly (a
    wrong architecture or a pickle is refused, and nothing is kept), and a plan runs them as upload:<id> on
    their own derived track whose base checkpoint is the file."""
    import torch
    from safetensors.torch import save

    from harness.models import build_model
    from specs.track import ModelRef

    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            import os
            return os.system, (f"touch {marker}",)

    torch.save({"model": Evil()}, tmp_path / "evil.pt")
    model = build_model(ModelRef(name="torchvision:shufflenet_v2_x0_5"), num_classes=10, in_chans=1, image_size=8)
    weights = save({k: v.contiguous() for k, v in model.state_dict().items()})
    form = {"architecture": "torchvision:shufflenet_v2_x0_5", "dataset": "digits"}
    app = create_app(ServerConfig(store=tmp_path / "s"), start_queue=False)
    with TestClient(app, base_url=BASE) as client:
        client.headers[CSRF_HEADER] = client.get("/api/me").json()["csrf"]
        res = client.post("/api/uploads/models", data=form, files={"file": ("evil.pt", (tmp_path / "evil.pt").read_bytes())})
        assert res.status_code == 422 and "not a safetensors file" in res.json()["error"], res.text
        res = client.post("/api/uploads/models", data={**form, "architecture": "torchvision:resnet18"},
                          files={"file": ("w.safetensors", weights)})
        assert res.status_code == 422 and "tensors" in res.json()["error"], res.text
        assert client.get("/api/uploads").json()["models"] == []
        assert [p.name for p in (tmp_path / "s" / ".web" / "uploads" / "models").iterdir()] == []
        res = client.post("/api/uploads/models", data=form, files={"file": ("w.safetensors", weights)})
        assert res.status_code == 201, res.text
        up = res.json()
        assert up["reference"] == f"upload:{up['id']}" and up["params"] == sum(p.numel() for p in model.parameters())
        res = client.post("/api/plans?dry_run=true", json={"model": up["reference"], "methods": ["lamp"],
                                                            "speedups": [2], "seeds": [0]})
        assert res.status_code == 201 and res.json()["track"] == up["track"] == f"digits-upload-{up['id']}", res.text
        res = client.post("/api/plans?dry_run=true", json={"model": up["reference"], "dataset": "cifar10"})
        assert res.status_code == 422 and res.json()["field"] == "dataset"
    assert not marker.exists()
    track = json.loads((tmp_path / "s" / ".web" / "uploads" / "models" / f"{up['id']}.track.json").read_text())
    assert track["checkpoint"]["sha256"] == hashlib.sha256(weights).hexdigest()


# -- leaderboards ----------------------------------------------------------------------------------
def _serve(tmp_path, records):
    _write(tmp_path / "s", records)
    return TestClient(create_app(ServerConfig(store=tmp_path / "s"), start_queue=False), base_url=BASE)


class _Board(HTMLParser):
    """The page's leaderboard tables: per section (its label), the rows' (data-name, first cell's text)."""

    def __init__(self):
        super().__init__()
        self.sections: list[tuple[str, list[tuple[str, str]]]] = []
        self._in, self._name, self._cell, self._text = None, None, 0, ""

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "h2" and a.get("class") == "section-label":
            self._in, self._text = "label", ""
        elif tag == "span" and self._in == "label":  # the label ends where its record count starts
            self.sections.append((self._text.strip(), []))
            self._in = None
        elif tag == "tr" and "data-name" in a and self.sections:
            self._name, self._cell = a["data-name"], 0
        elif tag == "td" and self._name is not None:
            self._cell += 1
            if self._cell == 1:
                self._in, self._text = "cell", ""

    def handle_endtag(self, tag):
        if tag == "td" and self._in == "cell":
            self.sections[-1][1].append((self._name, self._text.strip()))
            self._in, self._name = None, None

    def handle_data(self, data):
        if self._in:
            self._text += data


def _page_ranks(html: str) -> list[tuple[str, list[tuple[str, str]]]]:
    parser = _Board()
    parser.feed(html)
    return parser.sections


def _scipy_ranks(samples: dict[str, list[float]]) -> dict[str, int]:
    """Independent reference: scipy's paired t-test (the seeds pair), Holm over all pairs, 1 + #better."""
    names = list(samples)
    pairs = [(a, b) for i, a in enumerate(names) for b in names[i + 1:]]
    ps = [stats.ttest_rel(samples[a], samples[b]).pvalue for a, b in pairs]
    order = sorted(range(len(ps)), key=lambda i: ps[i])
    better = {n: 0 for n in names}
    for k, i in enumerate(order):
        if ps[i] >= 0.05 / (len(ps) - k):
            break
        a, b = pairs[i]
        better[b if statistics.fmean(samples[a]) > statistics.fmean(samples[b]) else a] += 1
    return {n: 1 + better[n] for n in names}


def test_leaderboard_statistics_against_scipy(tmp_path):
    a = [80.0, 82.0, 84.0]        # a and b overlap: a tie
    b = [81.0, 83.5, 82.5]
    c = [90.0, 90.5, 91.0]        # clearly better
    records = [_record("a", 2, s, v, latency=1.5, recal=v - 40) for s, v in enumerate(a)]
    records += [_record("b", 2, s, v, latency=1.8) for s, v in enumerate(b)]
    records += [_record("c", 2, s, v, latency=1.2) for s, v in enumerate(c)]
    records += [_record("a", 4, s, v - 5) for s, v in enumerate(a)] + [_record("c", 4, s, v - 1) for s, v in enumerate(c)]
    records += [_record("b", 4, 0, 0, status="failed"), _record("b", 4, 1, 0, status="cancelled")]
    with _serve(tmp_path, records) as client:
        board = client.get("/api/leaderboards/t", params={"view": "2x"}).json()
        [section] = board["sections"]
        e = {x["name"]: x for x in section["entries"]}
        for name, values in (("a", a), ("b", b), ("c", c)):
            final = e[name]["final"]
            assert final["n"] == e[name]["n"] == 3 and final["mean"] == pytest.approx(statistics.fmean(values))
            assert final["std"] == pytest.approx(statistics.stdev(values))
            lo, hi = stats.t.interval(0.95, 2, loc=statistics.fmean(values), scale=stats.sem(values))
            assert (final["ci95_low"], final["ci95_high"]) == (pytest.approx(lo), pytest.approx(hi))
            assert final["half_width"] == pytest.approx((hi - lo) / 2)
        lo, hi = stats.t.interval(0.95, 2, loc=statistics.fmean(a) - 40, scale=stats.sem(a))
        assert (e["a"]["pruned_recal"]["ci95_low"], e["a"]["pruned_recal"]["ci95_high"]) == (pytest.approx(lo),
                                                                                               pytest.approx(hi))
        assert e["b"]["pruned_recal"]["n"] == 0 and e["b"]["pruned_recal"]["text"] == "n/a"
        # the seeds pair: paired t-tests, Holm over the three pairs; a and b are not separated
        assert _scipy_ranks({"a": a, "b": b, "c": c}) == {"a": 2, "b": 2, "c": 1}
        assert [(x["name"], x["rank"], x["tied"]) for x in section["entries"]] == [
            ("c", 1, False), ("b", 2, True), ("a", 2, True)]
        assert board["legend"] == lb.LEGEND and "Holm" in board["legend"] and board["warnings"] == []
        # at 4x, b has no ok run: shown (failed + cancelled), never ranked
        e4 = {x["name"]: x for x in client.get("/api/leaderboards/t", params={"view": "4x"}).json()["sections"][0][
            "entries"]}
        assert e4["b"]["rank"] is None and (e4["b"]["n_failed"], e4["b"]["n_cancelled"]) == (1, 1)
        assert len(e4["b"]["failed_keys"]) == 2 and e4["b"]["error"]
        # the Average view: mean ranks over the blocks (speedup, seed); b (no ok run at 4x) is left out, and
        # c beats a in all 6 blocks; two methods are too few for Friedman's test
        average_section = client.get("/api/leaderboards/t").json()["sections"][0]
        avg = {x["name"]: x for x in average_section["average"]}
        assert {n: (x["mean_rank"], x["ranked"], x["ranks"]) for n, x in avg.items()} == {
            "a": (2.0, 2, {"2x": 2, "4x": 2}), "b": (None, 1, {"2x": 2, "4x": None}), "c": (1.0, 2, {"2x": 1, "4x": 1})}
        assert average_section["friedman"] is None and average_section["analysis"]["excluded"] == ["b"]
        # filters hide rows and never re-rank
        only = client.get("/api/leaderboards/t", params={"view": "2x", "importance": ["a", "b"]}).json()
        assert [(x["name"], x["rank"]) for x in only["sections"][0]["entries"]] == [("b", 2), ("a", 2)]
        assert [p["name"] for p in only["sections"][0]["points"]] == ["b", "a", "a"]
        # the chart points: every speedup; the Pareto front of final mean vs latency speedup
        points = {(p["name"], p["speedup"]): p for p in board["sections"][0]["points"]}
        assert {k for k, p in points.items() if p["pareto"]} == {("b", 2.0), ("c", 2.0)}  # a: slower than b, worse
        assert points["c", 4.0]["latency_speedup"] is None and points["c", 4.0]["final"]["mean"] == 89.5
        # bad input: one line, 422
        for params in ({"view": "fast"}, {"view": "0.5x"}, {"setting": "nope"}):
            res = client.get("/api/leaderboards/t", params=params)
            assert res.status_code == 422 and "\n" not in res.json()["error"], res.text
        assert client.get("/api/leaderboards/none").status_code == 404
        # the page shows the same board, the legend, and the plots with CI bars
        page = client.get("/tracks/t?view=2x").text
        assert _page_ranks(page) == [(section["label"], [("c", "1"), ("b", "2"), ("a", "2")])]
        assert str(escape(lb.LEGEND)) in page and "<svg" in page and "Pareto" in page
        assert "same rank as a: no test separates them" in page
        avg_page = client.get("/tracks/t").text
        # best first as the library sorts: by mean rank, the rows left out of the analysis last
        assert [n for n, _ in _page_ranks(avg_page)[0][1]] == ["c", "a", "b"]
        assert re.search(r'data-name="b">.*?<td class="rank">left out</td>', avg_page, re.S)
        cmp = client.get("/compare", params={"runs": ",".join(e["c"]["keys"][:2])}).text
        assert cmp.count('<a href="/runs/') >= 2
        assert client.get("/tracks/t?view=fast", headers={"accept": "text/html"}).status_code == 422


def _many_records(base_sha=None, shift=0.0) -> list[ResultRecord]:
    """Five methods (one with a regularizer, one with constant scores, one with other seeds: Welch) at 2x and 4x."""
    curves = {("lamp", None): [97.1, 97.5, 97.3, 97.0], ("taylor", None): [97.2, 97.4, 97.1, 97.3],
              ("l1", "group_norm"): [95.1, 95.3, 95.8, 94.9], ("random", None): [90.0, 91.2, 89.5, 90.4],
              ("flat", None): [95.0, 95.9, 94.6, 95.4]}
    out = []
    for (method, reg), values in curves.items():
        seeds = [4, 5, 6] if method == "l1" else range(4)
        for speedup, drop in ((2, 0.0), (4, 3.0)):
            out += [_record(method, speedup, s, v - drop * (1 + 0.1 * i) + shift, reg=reg, base_sha=base_sha,
                            latency=speedup * 0.6 + 0.01 * i, recal=v - 20, constant=method == "flat")
                    for i, (s, v) in enumerate(zip(seeds, values))]
    out += [_record("lamp", 4, 9, 0, status="failed", base_sha=base_sha)]
    return out


def test_the_platform_ranks_as_the_library_does(tmp_path):
    records = _many_records("a" * 64) + _many_records("b" * 64, shift=-0.4)
    rows = lb.rows(records)
    with _serve(tmp_path, records) as client:
        for speedup in (2, 4):
            board = client.get("/api/leaderboards/t", params={"view": f"{speedup}x"}).json()
            page = _page_ranks(client.get(f"/tracks/t?view={speedup}x").text)
            assert [s["label"] for s in board["sections"]] == [label for label, _ in page]
            for section, (_, page_rows) in zip(board["sections"], page):
                expected = [(r.name, r.rank, r.final.n, r.final.mean, r.final.ci95_low, r.pruned_recal.ci95_high)
                            for r in rows if r.section.base_sha256 == section["base_sha256"] and r.speedup == speedup]
                assert [(e["name"], e["rank"], e["n"], e["final"]["mean"], e["final"]["ci95_low"],
                         e["pruned_recal"]["ci95_high"]) for e in section["entries"]] == expected
                assert page_rows == [(name, "-" if rank is None else str(rank)) for name, rank, *_ in expected]
                assert len(set(e["rank"] for e in section["entries"])) > 1  # the records do separate methods
            flat = [e for s in board["sections"] for e in s["entries"] if e["method"] == "flat"]
            assert all(e["constant_scores"] and len(e["warnings"]) == e["n"] for e in flat)
            assert board["flag_legend"] == lb.FLAG_LEGEND
        average = client.get("/api/leaderboards/t").json()
        expected = [(a.section.base_sha256, a.method, a.regularizer, a.mean_rank, a.ranked) for a in lb.average(rows)]
        assert [(s["base_sha256"], a["method"], a["regularizer"], a["mean_rank"], a["ranked"])
                for s in average["sections"] for a in s["average"]] == expected
        page = client.get("/tracks/t?view=2x").text
        flagged = re.findall(r'data-name="([^"]+)">\s*<td class="rank"[^>]*>\d</td>\s*<td class="l"><a [^>]+>\w+</a> '
                             r'<span class="flag" title="warning: flat 2x seed \d: the scores were constant', page)
        assert flagged == ["flat", "flat"]  # one row per section
        assert str(escape(lb.FLAG_LEGEND)) in page


def test_two_base_checkpoints_are_two_sections_never_one_cell(tmp_path):
    one = [_record(m, 2, s, v + (m == "good") * 5, base_sha="1" * 64, latency=1.5) for m in ("good", "bad") for s, v in
           enumerate([90.0, 91.0, 90.5])]
    other = [r.model_copy(update={"run_key": hashlib.sha256(r.run_key.encode()).hexdigest(),
                                  "provenance": r.provenance.model_copy(update={"checkpoint_sha256": "2" * 64})})
             for r in one]  # the same runs (methods, seeds, values) from another base checkpoint
    [warning] = lb.base_warnings(one + other)
    with _serve(tmp_path, one + other) as client:
        board = client.get("/api/leaderboards/t", params={"view": "2x"}).json()
        assert board["warnings"] == [warning] and "come from 2 base checkpoints" in warning
        assert [s["base_sha256"] for s in board["sections"]] == ["1" * 64, "2" * 64]
        for section in board["sections"]:
            assert [(e["name"], e["n"], e["rank"]) for e in section["entries"]] == [("good", 3, 1), ("bad", 3, 2)]
            assert section["runs"] == 6 and len(section["points"]) == 2
        assert all(len(s["average"]) == 2 for s in client.get("/api/leaderboards/t").json()["sections"])
        page = client.get("/tracks/t?view=2x").text
        assert str(escape(warning)) in page
        sections = _page_ranks(page)
        assert [label for label, _ in sections] == [lb.Section("t", "0" * 64, sha).label for sha in ("1" * 64, "2" * 64)]
        assert all(rows == [("good", "1"), ("bad", "2")] for _, rows in sections)
        assert page.count('<svg class="chart"') == 4  # two charts per section
        index = client.get("/").text
        assert "2 base checkpoints" in index


def test_cancelled_is_a_status_like_failed():
    r = _record("a", 2, 0, 0, status="cancelled")
    assert r.status == "cancelled" and r.error
    with pytest.raises(ValueError, match="needs an error"):
        ResultRecord.model_validate({**r.model_dump(), "error": None})
    schema = json.loads((Path(__file__).parents[1] / "specs" / "schema" / "result.schema.json").read_text())
    assert "cancelled" in json.dumps(schema["properties"]["status"])
    [row] = lb.rows([r])
    assert row.n_failed == 1 and row.rank is None and row.final.n == 0 and row.final.mean is None


@pytest.mark.slow
def test_an_uploaded_method_is_checked_then_usable_and_docker_only_when_shared(tmp_path):
    store = tmp_path / "s"
    data = _zip(tmp_path, {f"my_method/{k}": v for k, v in _method_files().items()})  # one top folder: fine
    app = create_app(ServerConfig(store=store), start_queue=False)
    with TestClient(app, base_url=BASE) as client:
        client.headers[CSRF_HEADER] = client.get("/api/me").json()["csrf"]
        res = client.post("/api/uploads/methods", files={"file": ("m.zip", data)})
        assert res.status_code == 201, res.text
        up = res.json()
        assert (up["id"], up["status"], up["runner"]) == ("uploaded_l1", "checking", "subprocess")
        assert up["sha256"] == hashlib.sha256(data).hexdigest()
        plan = {"track": "digits-resnet18", "methods": [f"upload:{up['name']}"], "speedups": [2], "seeds": [0]}
        res = client.post("/api/plans?dry_run=true", json=plan)
        assert res.status_code == 422 and res.json()["field"] == "methods" and "not passed" in res.json()["error"]
        app.state.platform.uploads.wait_checks()
        [checked] = client.get("/api/uploads").json()["methods"]
        assert checked["status"] == "passed", checked
        assert {c["name"] for c in checked["checks"]} >= {"manifest", "handshake", "replies", "determinism"}
        assert client.post("/api/plans?dry_run=true", json=plan).status_code == 201
        assert f"upload:{up['name']}" in [m["ref"] for m in client.get("/api/methods").json()]
        again = client.post("/api/uploads/methods", files={"file": ("m.zip", data)})
        assert again.status_code == 201 and again.json()["name"] == up["name"]  # the same content: kept once
        other = dict(_method_files())
        other["method.py"] += "\n# changed\n"
        res = client.post("/api/uploads/methods", files={"file": ("m.zip", _zip(tmp_path, other, "n.zip"))})
        assert res.status_code == 409 and "bump the version" in res.json()["error"]
    users = tmp_path / "users.yaml"
    users.write_text(f"users: [{{name: alice, token_sha256: {token_sha256('alice-token-0123456')}}}]\n")
    app = create_app(ServerConfig(store=store, users_file=users), start_queue=False)  # now a shared server
    with TestClient(app, base_url=BASE, headers={"Authorization": "Bearer alice-token-0123456"}) as client:
        res = client.post("/api/plans?dry_run=true", json=plan)
        assert res.status_code == 422 and res.json()["field"] == "runner" and "docker" in res.json()["error"]


def test_a_method_whose_checks_fail_keeps_its_reason_not_its_files(tmp_path):
    """The failed upload cannot be used as a staging area for files on the server (issue 18): its record says
    why it failed, its folder is gone, and the same id and version may be uploaded again (replacing it)."""
    store = tmp_path / "s"
    files = _method_files("broken_l1", version="1.0.0-RC1")  # capitals in a version: still checked
    files["method.py"] = files["method.py"] + "\nraise SystemExit('import-time failure')\n"
    app = create_app(ServerConfig(store=store, max_uploads_per_user=1), start_queue=False)
    with TestClient(app, base_url=BASE) as client:
        client.headers[CSRF_HEADER] = client.get("/api/me").json()["csrf"]
        res = client.post("/api/uploads/methods", files={"file": ("m.zip", _zip(tmp_path, files))})
        assert res.status_code == 201, res.text
        app.state.platform.uploads.wait_checks()
        [failed] = client.get("/api/uploads").json()["methods"]
        assert failed["status"] == "failed" and failed["detail"], failed
        left = [p.relative_to(store / ".web" / "uploads").as_posix()
                for p in (store / ".web" / "uploads").rglob("*") if p.is_file()]
        assert left == [f"methods/{failed['name']}/upload.json"]
        files["method.py"] += "# another try\n"
        res = client.post("/api/uploads/methods", files={"file": ("m.zip", _zip(tmp_path, files, "again.zip"))})
        assert res.status_code == 201 and res.json()["status"] == "checking", res.text
        assert [m["name"] for m in client.get("/api/uploads").json()["methods"]] == [res.json()["name"]]
        res = client.post("/api/uploads/methods", files={"file": ("m.zip", _zip(tmp_path, _method_files("third_l1"),
                                                                                 "third.zip"))})
        assert res.status_code == 429 and "at most 1" in res.json()["error"], res.text  # this server's quota
        app.state.platform.uploads.wait_checks()  # (one being checked counts; a rejected one does not)
    # a server that stopped before a check ended checks it again when it starts
    up = json.loads(next((store / ".web" / "uploads" / "methods").glob("broken*/upload.json")).read_text())
    (store / ".web" / "uploads" / "methods" / up["name"] / "method").mkdir()
    for name, text in files.items():
        (store / ".web" / "uploads" / "methods" / up["name"] / "method" / name).write_text(text)
    (store / ".web" / "uploads" / "methods" / up["name"] / "upload.json").write_text(
        json.dumps({**up, "status": "checking", "detail": "conformance checks queued"}))
    app = create_app(ServerConfig(store=store), start_queue=False)
    with TestClient(app, base_url=BASE) as client:
        app.state.platform.uploads.wait_checks()
        assert [m["status"] for m in client.get("/api/uploads").json()["methods"]] == ["failed"]
