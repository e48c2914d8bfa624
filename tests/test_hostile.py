"""Hostile or broken methods through the subprocess runner: every run ends as a failed record
with a one-line reason, nothing else is left in the run folder, and the harness carries on."""

from __future__ import annotations

import json
import re
import textwrap

import pytest

from harness.errors import HarnessError
from harness.protocol.run import RunSpec, evaluate
from harness.store import read_record

GOOD = "from specs.sdk import ImportanceMethod\nimport torch\n"

CASES = {
    "wrong_length": ("""
        class Method(ImportanceMethod):
            def score_group(self, group, obs):
                return torch.ones(group.n_channels - 1)
        """, r"expected \d+ scores, got shape \(\d+,\)"),
    "nan": ("""
        class Method(ImportanceMethod):
            def score_group(self, group, obs):
                s = torch.ones(group.n_channels)
                s[0] = float("nan")
                return s
        """, r"1 of \d+ scores are NaN or infinite"),
    "unknown_group": ("""
        class Method(ImportanceMethod):
            def score(self, groups, obs):
                out = {g.id: torch.ones(g.n_channels) for g in groups}
                out["not.a.layer"] = torch.ones(3)
                return out
        """, r"scores for unknown group id 'not.a.layer'"),
    "missing_group": ("""
        class Method(ImportanceMethod):
            def score(self, groups, obs):
                return {g.id: torch.ones(g.n_channels) for g in groups[1:]}
        """, r"no scores for group"),
    "raises": ("""
        class Method(ImportanceMethod):
            def score_group(self, group, obs):
                raise ValueError("boom")
        """, r"method error during 'score': ValueError: boom"),
    "crash": ("""
        import os
        class Method(ImportanceMethod):
            def score_group(self, group, obs):
                os._exit(3)
        """, r"method process ended \(exit code 3\) during 'score'"),
    "hang": ("""
        import time
        class Method(ImportanceMethod):
            def score_group(self, group, obs):
                time.sleep(600)
        """, r"did not answer 'score' within 2 s \(killed\)"),
    "garbage_on_socket": ("""
        import gc, socket
        class Method(ImportanceMethod):
            def score(self, groups, obs):
                sock = next(o for o in gc.get_objects() if isinstance(o, socket.socket))
                sock.sendall(b"\\x00\\x00\\x00\\x00\\x00\\x00\\x00\\x05hello")
                import time; time.sleep(600)
        """, r"protocol error: message is not valid JSON"),
    "oversized_reply_file": ("""
        import specs.sdk.server as sdk
        from specs.messages import TensorFile
        def evil_save(exchange, name, tensors):
            with open(exchange / name, "wb") as f:
                f.truncate(200 * 1024 * 1024)  # 200 MB (sparse)
            return TensorFile(file=name)
        sdk._save = evil_save
        class Method(ImportanceMethod):
            def score_group(self, group, obs):
                return torch.ones(group.n_channels)
        """, r"has 209715200 bytes, more than the \d+ allowed"),
    "symlink_reply": ("""
        import os
        import specs.sdk.server as sdk
        from specs.messages import TensorFile
        def evil_save(exchange, name, tensors):
            os.symlink("/etc/passwd", exchange / name)
            return TensorFile(file=name)
        sdk._save = evil_save
        class Method(ImportanceMethod):
            def score_group(self, group, obs):
                return torch.ones(group.n_channels)
        """, r"cannot be opened"),
    "not_safetensors": ("""
        import specs.sdk.server as sdk
        from specs.messages import TensorFile
        def evil_save(exchange, name, tensors):
            (exchange / name).write_bytes(b"definitely not safetensors")
            return TensorFile(file=name)
        sdk._save = evil_save
        class Method(ImportanceMethod):
            def score_group(self, group, obs):
                return torch.ones(group.n_channels)
        """, r"is not a valid safetensors file"),
    "import_error": ("""
        import not_a_module_anywhere
        """, r"method error during 'hello': ModuleNotFoundError"),
    "wrong_base_class": ("""
        class Method:
            pass
        """, r"must subclass specs.sdk.ImportanceMethod"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_hostile_method_is_a_recorded_failure(case, make_method, tiny_track, tmp_path):
    code, pattern = CASES[case]
    source = make_method(GOOD + code.replace("\n        ", "\n"))
    spec = RunSpec(track=tiny_track, method=source, speedup=2, seed=0, runner="subprocess", out=tmp_path / "out",
                   call_timeout=2)
    record, run_dir = evaluate(spec)
    assert record.status == "failed"
    assert "\n" not in record.error and "Traceback" not in record.error
    assert re.search(pattern, record.error), record.error
    # nothing but the record, which validates when read back
    assert sorted(p.name for p in run_dir.iterdir()) == ["result.json"]
    assert read_record(run_dir / "result.json") == record
    assert not [p for p in run_dir.parent.iterdir() if p.name.startswith(".")]  # no staging left behind


BIG_INLINE = textwrap.dedent("""
    import specs.sdk.server as sdk
    from safetensors.torch import save
    put = sdk._Reply.put
    def big(self, name, tensors):
        ref = put(self, name, tensors)
        self.blobs[-1] = save({"junk": torch.zeros(3 * 2**20 // 4)})  # a 3 MB blob
        return ref
    sdk._Reply.put = big
    """)
SCORES = textwrap.dedent("""
    class Method(ImportanceMethod):
        def score_group(self, group, obs):
            return torch.ones(group.n_channels)
    """)
#: (spec_version the method declares, code, write limit in MB or None for the default, expected error)
WRITE_CASES = {
    "inline_reply_above_the_write_limit": (
        "1.3", BIG_INLINE + SCORES, 1, r"wrote more than 1 MB: a reply of 3 MB to 'score' \(killed; raise it with"),
    "inline_reply_above_its_size": (
        "1.3", BIG_INLINE + SCORES, None, r"inline reply to 'score' has \d+ bytes, more than the \d+ allowed \(killed\)"),
    "file_reply_to_an_inline_request": ("1.3", textwrap.dedent("""
        import specs.sdk.server as sdk
        sdk._Reply.put = lambda self, name, tensors: sdk._save(self.exchange, name, tensors)
        """) + SCORES, None, r"reply to 'score' sent its tensors in a file, expected inline on the socket"),
    "exchange_fill": ("1.0", textwrap.dedent("""
        import os, sys
        class Method(ImportanceMethod):
            def score_group(self, group, obs):
                exchange = sys.argv[sys.argv.index("--exchange") + 1]
                for i in range(3):
                    with open(os.path.join(exchange, f"junk-{group.id}-{i}"), "wb") as f:
                        f.write(os.urandom(2**20))
                return torch.ones(group.n_channels)
        """), 1, r"wrote more than 1 MB into its exchange directory \(\d+ MB by 'score', killed; raise it with"),
}


@pytest.mark.parametrize("case", sorted(WRITE_CASES))
def test_a_method_writing_too_much_is_stopped(case, make_method, tiny_track, tmp_path):
    from specs.manifest import SandboxLimits
    version, code, limit, pattern = WRITE_CASES[case]
    source = make_method(GOOD + code, spec_version=version)
    spec = RunSpec(track=tiny_track, method=source, speedup=2, seed=0, runner="subprocess", out=tmp_path / "out",
                   sandbox=SandboxLimits(max_write_mb=limit), save_models=False, measure_latency=False)
    record, run_dir = evaluate(spec)
    assert record.status == "failed"
    assert re.search(pattern, record.error), record.error
    assert sorted(p.name for p in run_dir.iterdir()) == ["result.json"]


def test_the_harness_carries_on_after_a_failure(make_method, tiny_track, tmp_path):
    bad = make_method(GOOD + "class Method(ImportanceMethod):\n    def score_group(self, g, o):\n"
                             "        raise RuntimeError('x')\n")
    good = make_method(GOOD + "class Method(ImportanceMethod):\n    def score_group(self, g, o):\n"
                              "        return torch.arange(g.n_channels, dtype=torch.float32)\n", id="fine")
    out = tmp_path / "out"
    first, _ = evaluate(RunSpec(track=tiny_track, method=bad, speedup=2, seed=0, out=out))
    second, run_dir = evaluate(RunSpec(track=tiny_track, method=good, speedup=2, seed=0, out=out))
    assert (first.status, second.status) == ("failed", "ok")
    assert {"pruned.pt", "final.pt", "result.json"} <= {p.name for p in run_dir.iterdir()}


def test_bad_hyperparameter_is_bad_input_not_a_failed_run(tiny_track, tmp_path):
    from harness.methods import find_method
    spec = RunSpec(track=tiny_track, method=find_method("magnitude_l2"), speedup=2, seed=0, out=tmp_path,
                   hyperparameters={"p": 7})
    with pytest.raises(HarnessError, match="above the maximum"):
        evaluate(spec)
    assert not any(tmp_path.rglob("result.json"))


def test_invalid_manifest_is_a_one_line_error(tmp_path):
    from harness.methods import find_method
    d = tmp_path / "m"
    d.mkdir()
    (d / "manifest.json").write_text(json.dumps({"id": "x"}))
    with pytest.raises(HarnessError, match=r"invalid manifest: version: Field required \(\+\d more\)"):
        find_method(str(d))
