"""Attacks on a shared platform, as an ordinary user of it would make them (issue 18's threat model):
a real server process (``uvicorn`` on a loopback port) with a users file, three users (alice, bob;
root is the admin), requests over HTTP. Every attack asserts its status code and that no marker file
appeared: nothing a user sends is unpickled, imported or executed in the server. The plan queue is
not started (plans stay queued: nothing here trains). Cost: about 60 s, of which the schema fuzz
(Schemathesis, from the server's own OpenAPI schema) takes about 30 s.
"""

from __future__ import annotations

import http.client
import io
import json
import os
import socket
import subprocess
import sys
import threading
import time
import zipfile
from pathlib import Path

import httpx
import pytest
import schemathesis
from schemathesis import checks
from hypothesis import HealthCheck, given, settings

from harness.web.config import token_sha256

REPO = Path(__file__).resolve().parents[1]
CHECKS = [checks.not_a_server_error, checks.status_code_conformance, checks.content_type_conformance,
          checks.response_headers_conformance, checks.response_schema_conformance]
TOKENS = {"alice": "alice-token-0123456789", "bob": "bob-token-0123456789", "root": "root-token-0123456789"}
PLAN = {"track": "digits-resnet18", "methods": ["lamp"], "speedups": [2], "seeds": [0]}

SERVER = """
import sys, uvicorn
from pathlib import Path
from harness.web.app import create_app
from harness.web.config import ServerConfig
store, users, port = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3])
app = create_app(ServerConfig(store=store, users_file=users, port=port, upload_idle_s=2), start_queue=False)
uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning")
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Shared:
    """The running server: its URL, store, marker folder and one HTTP client per user."""

    def __init__(self, root: Path):
        self.root, self.store, self.markers = root, root / "store", root / "markers"
        self.markers.mkdir(parents=True)
        users = root / "users.yaml"
        users.write_text("users:\n" + "".join(
            f"  - {{name: {n}, token_sha256: {token_sha256(t)}, admin: {str(n == 'root').lower()}}}\n"
            for n, t in TOKENS.items()))
        # a module with an import-time side effect, importable by the server: it must stay unimported
        evil_path = root / "evil_path"
        evil_path.mkdir()
        (evil_path / "pbench_evil_module.py").write_text(
            f"open({str(self.markers / 'imported')!r}, 'w').close()\ndef factory(**kw):\n    return None\n")
        # folders in the server's working directory named like a registered track and method: names are
        # looked up in the registries, never in the working directory
        (root / "digits-resnet18").mkdir()
        (root / "lamp").mkdir()
        (root / "lamp" / "manifest.json").write_text("{}")
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), str(evil_path)]), "PBENCH_NO_PROGRESS": "1"}
        self.proc = subprocess.Popen([sys.executable, "-c", SERVER, str(self.store), str(users), str(self.port)],
                                     env=env, cwd=root, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        for _ in range(300):
            try:
                if httpx.get(f"{self.url}/api/me", timeout=1).status_code == 401:
                    break
            except httpx.TransportError:
                time.sleep(0.1)
        else:
            raise RuntimeError(f"the server did not start: {self.proc.stdout.read().decode()[-2000:]}")
        self.client = {n: httpx.Client(base_url=self.url, headers={"Authorization": f"Bearer {t}"}, timeout=120)
                       for n, t in TOKENS.items()}

    def markers_left(self) -> list[str]:
        return sorted(p.name for p in self.markers.iterdir())

    def close(self) -> str:
        for c in self.client.values():
            c.close()
        self.proc.terminate()
        try:
            out, _ = self.proc.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            out, _ = self.proc.communicate()
        return out.decode(errors="replace")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    srv = Shared(tmp_path_factory.mktemp("attacks"))
    yield srv
    log = srv.close()
    assert "Traceback" not in log, log[-3000:]  # no 500 left a traceback in the server's log
    assert srv.markers_left() == []


def _one_line_4xx(res: httpx.Response, status: int, field: str | None = None) -> dict:
    assert res.status_code == status, (res.status_code, res.text[:500])
    body = res.json()
    assert "\n" not in body["error"] and "Traceback" not in body["error"], body
    if field is not None:
        assert body.get("field") == field, body
    return body


# -- code and paths in plans -----------------------------------------------------------------------
def _evil_pickle(path: Path, marker: Path) -> Path:
    import torch

    class Evil:
        def __reduce__(self):
            return os.system, (f"touch {marker}",)

    torch.save(Evil(), path)
    return path


@pytest.mark.parametrize("field, value", [
    ("model", "file:{evil}"),                   # unpickled the file while the plan was checked
    ("model", "pbench_evil_module:factory"),   # imported a module on the server's path
    ("model", "this:x"),
    ("model", "os:getcwd"),
    ("model", "torchvision:../../etc/passwd"),
    ("model", "timm:hf-hub:someone/model"),
    ("model", "pbench_evil_module:x"),
    ("track", "{root}/track.yaml"),
    ("track", "harness"),                       # a folder in the server's working directory, not a track id
    ("methods", ["{root}/method"]),
    ("methods", ["method_template"]),
    ("regularizers", ["../methods/group_norm"]),
    ("dataset", "{root}/data"),
    ("hyperparameters", {"p": "/etc/passwd"}),
])
def test_code_and_paths_in_plans_get_422_and_nothing_runs(server, field, value, tmp_path):
    evil = _evil_pickle(tmp_path / "evil.pt", server.markers / "unpickled")
    fill = lambda v: v.format(evil=evil, root=server.root) if isinstance(v, str) else v  # noqa: E731
    value = fill(value) if isinstance(value, str) else (
        [fill(v) for v in value] if isinstance(value, list) else {k: fill(v) for k, v in value.items()})
    plan = {**PLAN, field: value}
    if field in ("model", "dataset"):
        plan = {k: v for k, v in plan.items() if k != "track"}
        plan.setdefault("dataset", "digits")
    for dry in ("true", "false"):
        _one_line_4xx(server.client["alice"].post(f"/api/plans?dry_run={dry}", json=plan), 422, field)
    assert server.markers_left() == []


def test_library_models_pass_the_policy_and_a_request_never_trains_their_base(server):
    """A library model passes the name policy; its derived base is not trained inside the request (the
    operator pretrains it), so the plan is refused naming the command, and nothing was trained."""
    res = server.client["alice"].post("/api/plans?dry_run=true", json={
        "model": "torchvision:mobilenet_v2", "dataset": "digits", "methods": ["lamp"], "speedups": [2],
        "seeds": [0]})
    body = _one_line_4xx(res, 422, "model")
    assert "pbench-harness pretrain" in body["error"] and "digits-torchvision-mobilenet_v2" in body["error"], body
    assert server.client["alice"].post("/api/plans?dry_run=true", json=PLAN).status_code == 201  # a pinned base


# -- uploads ---------------------------------------------------------------------------------------
def _pickles(tmp_path: Path, markers: Path) -> dict[str, Path]:
    """Crafted model pickles: a direct __reduce__ to a function, and constructors of a class from each package
    the old scan allowed, with arguments from the file (ultralytics' YOLO loads the path it is given with an
    unsafe loader: a second pickle that runs a command)."""
    import pickle

    import timm.models.resnet
    import torchvision.models
    import ultralytics
    from torch import nn

    inner = _evil_pickle(tmp_path / "inner.pt", markers / "yolo-chain")

    def crafted(target, args):
        class C:
            def __reduce__(self):
                return target, args
        return pickle.dumps(C())

    out = {"reduce-to-function": tmp_path / "direct.pt"}
    _evil_pickle(out["reduce-to-function"], markers / "direct")
    for name, target, args in [("torch", nn.Linear, (3, 4)), ("torchvision", torchvision.models.ResNet, (None, [])),
                               ("timm", timm.models.resnet.ResNet, (None, [])),
                               ("ultralytics", ultralytics.YOLO, (str(inner),))]:
        out[name] = tmp_path / f"{name}.pt"
        out[name].write_bytes(crafted(target, args))
    return out


def test_crafted_pickles_uploaded_as_models_run_nothing(server, tmp_path):
    for name, path in _pickles(tmp_path, server.markers).items():
        res = server.client["bob"].post("/api/uploads/models", data={"architecture": "resnet18", "dataset": "digits"},
                                        files={"file": (path.name, path.read_bytes())})
        body = _one_line_4xx(res, 422)
        assert "not a safetensors file" in body["error"], (name, body)
    assert server.markers_left() == []
    assert server.client["bob"].get("/api/uploads").json()["models"] == []
    assert [p for p in (server.store / ".web" / "uploads").rglob("*") if p.is_file()] == []


@pytest.mark.parametrize("form, field", [({"architecture": "file:/etc/passwd", "dataset": "digits"}, "architecture"),
                                         ({"architecture": "pbench_evil_module:factory", "dataset": "digits"},
                                          "architecture"),
                                         ({"architecture": "resnet18", "dataset": "../../data"}, "dataset")])
def test_model_uploads_name_library_architectures_and_registered_datasets(server, form, field):
    res = server.client["bob"].post("/api/uploads/models", data=form, files={"file": ("w.safetensors", b"x" * 64)})
    _one_line_4xx(res, 422, field)
    assert server.markers_left() == []


def _zip(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buf.getvalue()


def _method_zip() -> bytes:
    manifest = json.dumps({"spec_version": "1.3", "id": "evil_method", "version": "1.0.0", "name": "Evil",
                           "provides": ["importance"], "observations": ["weights"]})
    return _zip({"manifest.json": manifest.encode(), "method.py": b"x = 1\n" * 400})


def _corrupt(kind: str) -> bytes:
    data = bytearray(_method_zip())
    zf = zipfile.ZipFile(io.BytesIO(bytes(data)))
    info = zf.getinfo("method.py")
    start = info.header_offset + 30 + len(info.filename.encode()) + len(info.extra)
    if kind == "bad-crc":
        central = data.rindex(b"PK\x01\x02")  # method.py's entry in the central directory
        data[central + 16: central + 20] = b"\x00\x00\x00\x00"
        data[info.header_offset + 14: info.header_offset + 18] = b"\x00\x00\x00\x00"
    elif kind == "corrupt-deflate":
        data[start: start + 8] = b"\xff" * 8
    elif kind == "false-size":
        central = data.rindex(b"PK\x01\x02")
        data[central + 24: central + 28] = (10).to_bytes(4, "little")  # claims 10 bytes, inflates to 2400
    return bytes(data)


@pytest.mark.parametrize("kind", ["bad-crc", "corrupt-deflate", "false-size", "not-a-zip"])
def test_corrupt_method_zips_get_4xx_and_leave_nothing(server, kind):
    body = b"PK\x03\x04 not really" if kind == "not-a-zip" else _corrupt(kind)
    res = server.client["alice"].post("/api/uploads/methods", files={"file": ("m.zip", body)})
    assert 400 <= res.status_code < 500, res.text
    _one_line_4xx(res, res.status_code)
    assert [p for p in (server.store / ".web" / "uploads").rglob("*") if p.is_file()] == []


def test_uploads_are_bounded_per_user(server):
    """While alice's upload is still arriving (it holds her check slot), her next one is answered 429; bob's is not
    held up by hers."""
    boundary = "pbenchboundary"
    head = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"w.zip\"\r\n"
            f"Content-Type: application/zip\r\n\r\n").encode()
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    conn.putrequest("POST", "/api/uploads/methods")
    conn.putheader("Authorization", f"Bearer {TOKENS['alice']}")
    conn.putheader("Content-Type", f"multipart/form-data; boundary={boundary}")
    conn.putheader("Content-Length", str(len(head) + 4096))
    conn.endheaders()
    conn.send(head + b"x" * 100)  # ... and the rest never comes while we look
    stop = threading.Event()

    def trickle():  # a byte every quarter second: the upload stalls less than the server's idle limit
        while not stop.wait(0.25):
            try:
                conn.send(b"x")
            except OSError:
                return

    threading.Thread(target=trickle, daemon=True).start()
    try:
        for _ in range(300):  # until the held upload reached the server (a refused probe keeps nothing)
            res = server.client["alice"].post("/api/uploads/methods", files={"file": ("m.zip", b"not a zip")})
            if res.status_code == 429:
                break
            time.sleep(0.1)
        _one_line_4xx(res, 429)
        res = server.client["bob"].post("/api/uploads/methods", files={"file": ("m.zip", b"not a zip")})
        _one_line_4xx(res, 422)
    finally:
        stop.set()
        conn.close()


def test_uploads_that_are_not_forms_get_4xx(server):
    res = server.client["alice"].post("/api/uploads/methods", content=b"raw bytes",
                                      headers={"Content-Type": "application/octet-stream"})
    _one_line_4xx(res, 415)
    res = server.client["alice"].post("/api/uploads/methods", content=b"--x\r\ngarbage",
                                      headers={"Content-Type": "multipart/form-data; boundary=x"})
    assert 400 <= res.status_code < 500


# -- sessions and authorization --------------------------------------------------------------------
def test_a_logged_out_cookie_answers_401(server):
    with httpx.Client(base_url=server.url, timeout=30) as browser:
        me = browser.post("/api/session", json={"token": TOKENS["alice"]}).json()
        assert browser.get("/api/me").status_code == 200
        cookie = browser.cookies["pbench_session"]
        assert browser.delete("/api/session", headers={"X-PBench-CSRF": me["csrf"]}).status_code == 204
    with httpx.Client(base_url=server.url, cookies={"pbench_session": cookie}, timeout=30) as replay:
        _one_line_4xx(replay.get("/api/me"), 401)


def test_a_shared_run_survives_one_users_cancel(server):
    alice, bob, root = (server.client[n] for n in ("alice", "bob", "root"))
    plan = {**PLAN, "seeds": [7]}
    a = alice.post("/api/plans", json=plan).json()
    b = bob.post("/api/plans", json=plan).json()
    key = a["runs"][0]["key"]
    assert b["runs"][0]["key"] == key
    cancel = server.store / ".events" / f"{key}.cancel"
    res = bob.post(f"/api/runs/{key}/cancel")
    assert res.status_code == 200 and "goes on" in res.json()["result"], res.text
    assert not cancel.exists()  # alice still wants it
    _one_line_4xx(server.client["bob"].post(f"/api/plans/{a['plan']['id']}/cancel"), 403)
    res = alice.post(f"/api/runs/{key}/cancel")
    assert res.status_code == 200 and cancel.read_text().startswith("cancelled by alice, bob"), res.text
    # an admin stops a run others still want at once, and says so
    c = alice.post("/api/plans", json={**plan, "seeds": [8]}).json()
    bob.post("/api/plans", json={**plan, "seeds": [8]})
    key = c["runs"][0]["key"]
    assert root.post(f"/api/runs/{key}/cancel").status_code == 200
    assert (server.store / ".events" / f"{key}.cancel").read_text().startswith("cancelled by root (admin)")


# -- one-line 4xx for hostile requests ---------------------------------------------------------------
def _raw(server, method: str, path: str, headers: dict[str, bytes], body: bytes = b"",
         length: int | None = None) -> tuple[int, dict]:
    """A request whose header bytes are sent as given (httpx would refuse non-ASCII); ``length`` may promise
    more body than is sent."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as s:
        lines = [f"{method} {path} HTTP/1.1".encode(), f"Host: 127.0.0.1:{server.port}".encode(),
                 f"Content-Length: {len(body) if length is None else length}".encode(), b"Connection: close"]
        lines += [k.encode() + b": " + v for k, v in headers.items()]
        s.sendall(b"\r\n".join(lines) + b"\r\n\r\n" + body)
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    head, _, payload = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), json.loads(payload or b"{}")


def test_odd_bytes_in_cookie_and_csrf_headers_get_4xx(server):
    status, body = _raw(server, "GET", "/api/me", {"Cookie": b"pbench_session=\xff\xfe\xe9t\xe9"})
    assert status == 401 and "\n" not in body["error"]
    with httpx.Client(base_url=server.url, timeout=30) as browser:
        browser.post("/api/session", json={"token": TOKENS["bob"]})
        cookie = browser.cookies["pbench_session"].encode()
    status, body = _raw(server, "POST", "/api/plans?dry_run=true",
                        {"Cookie": b"pbench_session=" + cookie, "X-PBench-CSRF": b"\xe9\xff",
                         "Content-Type": b"application/json"}, json.dumps(PLAN).encode())
    assert status == 403 and "X-PBench-CSRF" in body["error"]
    status, body = _raw(server, "POST", "/api/session", {"Content-Type": b"application/json"},
                        b'{"token": "\\ud800\\udfff-\xc3\xa9"}')
    assert status == 401


@pytest.mark.parametrize("plan", [
    {**PLAN, "track": "t" * 900_000},
    {**PLAN, "methods": ["m" * 15_000] * 64},
    {**PLAN, "hyperparameters": {"p": "x" * 100_000}},
    {**PLAN, "label": "l" * 10_000},
])
def test_huge_names_get_422(server, plan):
    res = server.client["alice"].post("/api/plans?dry_run=true", json=plan)
    assert res.status_code in (413, 422), res.text[:300]
    _one_line_4xx(res, res.status_code)


def test_huge_offsets_get_422(server):
    plan = server.client["alice"].post("/api/plans", json={**PLAN, "seeds": [9]}).json()["plan"]
    _one_line_4xx(server.client["alice"].get(f"/api/plans/{plan['id']}/log?offset=99999999999999999999"), 422)
    _one_line_4xx(server.client["alice"].get(f"/api/runs/{'0' * 64}/events?offset=99999999999999999999"), 422)


def test_no_answer_shows_a_server_path(server, tmp_path):
    from safetensors.torch import save

    from harness.models import build_model
    from specs.track import ModelRef

    model = build_model(ModelRef(name="torchvision:shufflenet_v2_x0_5"), num_classes=10, in_chans=1, image_size=8)
    res = server.client["bob"].post("/api/uploads/models",
                                    data={"architecture": "torchvision:shufflenet_v2_x0_5", "dataset": "digits"},
                                    files={"file": ("w.safetensors", save(dict(model.state_dict())))})
    assert res.status_code == 201, res.text
    up = res.json()
    res = server.client["bob"].post("/api/plans", json={"model": up["reference"], "methods": ["lamp"],
                                                         "speedups": [2], "seeds": [0]})
    assert res.status_code == 201, res.text
    plan = res.json()["plan"]["id"]
    bodies = [server.client["alice"].get(p).text for p in (
        "/api/uploads", "/api/plans", f"/api/plans/{plan}", f"/api/plans/{plan}/log", "/uploads", "/plans",
        "/api/tracks", "/api/methods", "/api/me")]
    bodies.append(server.client["alice"].post("/api/plans?dry_run=true", json={**PLAN, "track": "cifar10-resnet18"}).text)
    for text in bodies:
        assert str(server.root) not in text and str(server.store) not in text, text[:500]


def test_a_kind_the_harness_does_not_build_is_never_imported(server):
    """``kind:name`` whose kind the harness does not build would be read as ``<module>:<factory>``: refused
    for a module named after the kind too (a module ``pbench_evil_module`` with an import-time side effect)."""
    res = server.client["alice"].post("/api/plans?dry_run=true", json={
        "model": "pbench_evil_module:anything", "dataset": "digits", "methods": ["lamp"]})
    _one_line_4xx(res, 422, "model")
    assert server.markers_left() == []


def test_a_deeply_nested_safetensors_header_gets_422(server):
    bomb = (200_001).to_bytes(8, "little") + b"[" * 100_000 + b"]" * 100_000 + b" "
    res = server.client["bob"].post("/api/uploads/models", data={"architecture": "resnet18", "dataset": "digits"},
                                    files={"file": ("w.safetensors", bomb)})
    assert "not a safetensors file" in _one_line_4xx(res, 422)["error"]


def test_a_dry_run_never_trains_a_base_on_a_shared_server(server):
    res = server.client["alice"].post("/api/plans?dry_run=true", json={**PLAN, "track": "cifar10-resnet18"})
    body = _one_line_4xx(res, 422, "track")
    assert "pbench-harness pretrain cifar10-resnet18" in body["error"] or "no data" in body["error"], body
    assert not list((server.root / ".cache").rglob("*.tmp")) if (server.root / ".cache").exists() else True


def test_a_stalled_upload_gets_408_and_frees_its_place(server):
    boundary = "b0undary"
    head = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"m.zip\"\r\n\r\n").encode()
    status, body = _raw(server, "POST", "/api/uploads/methods",
                        {"Authorization": f"Bearer {TOKENS['bob']}".encode(),
                         "Content-Type": f"multipart/form-data; boundary={boundary}".encode()},
                        head + b"x" * 10, length=len(head) + 4096)
    assert status == 408 and "paused" in body["error"], body
    res = server.client["bob"].post("/api/uploads/methods", files={"file": ("m.zip", b"not a zip")})
    _one_line_4xx(res, 422)  # not 429: the stalled upload let its place go
    assert [p for p in (server.store / ".web" / "uploads" / "methods").rglob("*") if p.is_file()] == []


def test_the_plan_page_renders(server):
    plan = server.client["alice"].post("/api/plans", json={**PLAN, "seeds": [5]}).json()["plan"]["id"]
    res = server.client["alice"].get(f"/plans/{plan}", headers={"Accept": "text/html"})
    assert res.status_code == 200 and plan in res.text


def test_a_user_taken_out_of_the_users_file_loses_access_without_a_restart(server):
    users = server.root / "users.yaml"
    before = users.read_text()
    carol = "carol-token-0123456789"
    users.write_text(before + f"  - {{name: carol, token_sha256: {token_sha256(carol)}}}\n")
    with httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {carol}"}, timeout=30) as c:
        for _ in range(50):
            if c.get("/api/me").status_code == 200:
                break
            time.sleep(0.1)
        assert c.get("/api/me").json()["user"] == "carol"
        users.write_text(before)
        for _ in range(50):
            if c.get("/api/me").status_code == 401:
                break
            time.sleep(0.1)
        _one_line_4xx(c.get("/api/me"), 401)


def test_logins_keep_a_bounded_number_of_sessions(server):
    from harness.web.auth import MAX_SESSIONS
    cookies = []
    for _ in range(MAX_SESSIONS + 2):
        with httpx.Client(base_url=server.url, timeout=30) as browser:
            assert browser.post("/api/session", json={"token": TOKENS["root"]}).status_code == 200
            cookies.append(browser.cookies["pbench_session"])
    alive = [httpx.get(f"{server.url}/api/me", cookies={"pbench_session": c}).status_code for c in cookies]
    assert alive == [401, 401] + [200] * MAX_SESSIONS


# -- the whole API, fuzzed from its own schema ---------------------------------------------------------
def test_the_api_fuzzed_from_its_schema_gives_no_500(server):
    """Schemathesis draws requests for every operation of the server's OpenAPI schema (plans through
    ``dry_run=true``; event streams left out: they end only when their run does) and checks each answer with
    no server error, and status codes, content types, headers and bodies as the schema says (what a plan means is
    checked by the server, not by its schema: a schema-valid plan may be refused with 422)."""
    schema = schemathesis.openapi.from_url(f"{server.url}/openapi.json").exclude(path_regex=r"/events$")
    headers = {"Authorization": f"Bearer {TOKENS['alice']}"}
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 15
    for operation in operations:
        @given(case=operation.as_strategy())
        @settings(max_examples=6, deadline=None, suppress_health_check=list(HealthCheck), database=None,
                  derandomize=True)
        def fuzz(case):
            if case.path == "/api/plans" and case.method == "POST":
                case.query = {**(case.query or {}), "dry_run": "true"}  # check every plan, queue none
            case.call_and_validate(headers=headers, timeout=60, checks=CHECKS)

        fuzz()
    assert server.markers_left() == []
