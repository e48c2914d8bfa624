"""The spec: validation, round trips, schema drift, framing, and that specs is a leaf."""

from __future__ import annotations

import json
import socket
import struct
import subprocess
import sys

import pytest
from pydantic import ValidationError

from specs import wire
from specs.manifest import HyperParameter, MethodManifest
from specs.messages import (ErrorReply, Group, Hello, HelloReply, Member, ScoreReply, ScoreRequest, Shutdown,
                            TensorFile, harness_message, method_message)
from specs.result import ResultRecord
from specs.schema import SCHEMA_DIR, generate
from specs.track import TrackConfig

from conftest import MANIFEST, REPO


def test_schema_files_match_models():
    generated = generate()
    assert sorted(p.name for p in SCHEMA_DIR.glob("*.json")) == sorted(generated)
    for name, text in generated.items():
        assert (SCHEMA_DIR / name).read_text() == text, f"{name} drifted: run `make schema`"


def test_manifest_round_trip_and_defaults():
    m = MethodManifest.model_validate(MANIFEST)
    again = MethodManifest.model_validate_json(m.model_dump_json())
    assert again == m
    assert m.entrypoint == "method:Method" and m.resources.memory_mb == 512


@pytest.mark.parametrize("patch, message", [
    ({"extra": 1}, "Extra inputs are not permitted"),
    ({"spec_version": "2.0"}, "not compatible"),
    ({"id": "Bad Id"}, "String should match pattern"),
    ({"provides": []}, "at least 1 item"),
    ({"provides": ["importance", "importance"]}, "twice"),
    ({"observations": ["telepathy"]}, "Input should be"),
    ({"hyperparameters": {"p": {"type": "int", "default": "two"}}}, "not of type int"),
    ({"hyperparameters": {"p": {"type": "int", "default": 5, "maximum": 2}}}, "above the maximum"),
])
def test_manifest_rejects(patch, message):
    with pytest.raises(ValidationError, match=message):
        MethodManifest.model_validate({**MANIFEST, **patch})


def test_schema_hint_is_accepted_and_not_echoed():
    m = MethodManifest.model_validate({**MANIFEST, "$schema": "../specs/schema/manifest.schema.json"})
    assert "$schema" not in m.model_dump(mode="json") and "schema_ref" not in m.model_dump(mode="json")


def test_hyperparameters_resolve_and_reject():
    m = MethodManifest.model_validate({**MANIFEST, "hyperparameters": {
        "p": {"type": "int", "default": 2, "minimum": 1, "maximum": 2},
        "alpha": {"type": "float", "default": 0.5},
        "mode": {"type": "str", "default": "a", "choices": ["a", "b"]}}})
    assert m.resolve_hyperparameters({"p": 1, "alpha": 1}) == {"p": 1, "alpha": 1.0, "mode": "a"}
    with pytest.raises(ValueError, match="no hyperparameter 'q'"):
        m.resolve_hyperparameters({"q": 1})
    with pytest.raises(ValueError, match="not one of"):
        m.resolve_hyperparameters({"mode": "c"})
    with pytest.raises(ValueError, match="not of type int"):
        m.resolve_hyperparameters({"p": True})  # bool is not an int here
    with pytest.raises(ValueError, match="below the minimum"):
        HyperParameter(type="int", default=1, minimum=1).check(0)


def _member(**kw):
    base = dict(layer="conv1", module_type="Conv2d", kind="conv", dim="out", weight="conv1.weight",
                idxs=[0, 1], root_idxs=[0, 1])
    return Member(**{**base, **kw})


def test_messages_round_trip_through_unions():
    group = Group(id="conv1", root="conv1", n_channels=2, members=[_member()])
    msgs = [Hello(harness_version="x", seed=1), Shutdown(),
            ScoreRequest(round=0, groups=[group], observations={"weights": TensorFile(file="w.safetensors")},
                         reply_file="s.safetensors")]
    for msg in msgs:
        assert harness_message.validate_python(json.loads(msg.model_dump_json())) == msg
    replies = [HelloReply(manifest=MethodManifest.model_validate(MANIFEST)),
               ScoreReply(scores=TensorFile(file="s.safetensors", keys=["conv1"])), ErrorReply(message="x")]
    for msg in replies:
        assert method_message.validate_python(json.loads(msg.model_dump_json())) == msg


@pytest.mark.parametrize("bad", [
    lambda: _member(idxs=[0, 1, 2]),                                    # idxs / root_idxs lengths differ
    lambda: TensorFile(file="../etc/passwd"),                           # no paths out of the exchange dir
    lambda: TensorFile(file="/abs.safetensors"),
    lambda: method_message.validate_python({"type": "scores"}),         # missing field
    lambda: method_message.validate_python({"type": "telepathy"}),      # unknown message
    lambda: ErrorReply(message="x" * 5000),
])
def test_messages_reject(bad):
    with pytest.raises(ValidationError):
        bad()


def test_every_registered_track_validates_and_hashes_stably():
    from harness.tracks import registry
    reg = registry()
    assert "digits-resnet18" in reg
    for name in reg.names():
        track = reg.get(name)
        assert TrackConfig.model_validate_json(track.model_dump_json()).hash() == track.hash()
    t = reg.get("digits-resnet18")
    changed = t.model_copy(update={"seeds": [0]})
    assert changed.hash() != t.hash()
    # neither the alternative recipes (recipe-swap runs carry their recipe's hash in the run key)
    # nor the spec version change what a track measures
    assert t.recipes and t.model_copy(update={"recipes": {}}).hash() == t.hash()
    assert t.model_copy(update={"spec_version": "1.0"}).hash() == t.hash()


def test_committed_digits_records_belong_to_the_current_track():
    """The README's digits table is generated from committed records: they must have been produced
    under today's digits track (a changed track or hash means `make digits-leaderboard` is due)."""
    from harness.docs import DIGITS_RESULTS
    from harness.store import Store
    from harness.tracks import load_track
    store = Store.load(DIGITS_RESULTS)
    assert not store.invalid
    assert len(store.records) >= 48
    assert {r.track.hash for r in store.records.values()} == {load_track("digits-resnet18").hash()}
    # ...and their run keys are the ones today's harness gives those runs (a sweep would skip them)
    import importlib.util
    from harness.protocol.run import run_key_of
    spec = importlib.util.spec_from_file_location("digits_leaderboard", REPO / "benchmarks" / "digits_leaderboard.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    assert {run_key_of(s) for s in bench.specs(DIGITS_RESULTS.parent)} == set(store.records)


def test_track_recipes_are_named_and_checked(tiny_track):
    recipe = tiny_track.retrain.model_copy(update={"lr": 0.5})
    t = tiny_track.model_copy(update={"recipes": {"hot": recipe}})
    assert t.retrain_recipe(None) is t.retrain and t.retrain_recipe("track") is t.retrain
    assert t.retrain_recipe("hot") == recipe
    with pytest.raises(ValueError, match="has no retraining recipe 'cold' \\(it has: track, hot\\)"):
        t.retrain_recipe("cold")
    with pytest.raises(ValidationError, match="reserved"):
        TrackConfig.model_validate({**tiny_track.model_dump(), "recipes": {"track": recipe.model_dump()}})


@pytest.mark.parametrize("patch, message", [
    ({"pruning": {"speedups": [0.5]}}, "speedups must be > 1"),
    ({"pruning": {"speedups": [1, 4]}}, "speedups must be > 1"),
    ({"retrain": {"lr": float("inf")}}, "finite number"),
    ({"pruning": {"speedups": [2], "strategy": "greedy"}}, "Input should be"),
    ({"checkpoint": {}}, "needs a path or a pretrain recipe"),
    ({"checkpoint": {"path": "x.pt", "sha256": "abc"}}, "String should match pattern"),
])
def test_track_rejects(tiny_track, patch, message):
    data = {**tiny_track.model_dump(mode="json"), **patch}
    with pytest.raises(ValidationError, match=message):
        TrackConfig.model_validate(data)


def _record(**kw):
    base = dict(status="ok", run_key="k", method={"id": "m", "version": "1", "runner": "inprocess"},
                track={"id": "t", "hash": "0" * 64}, model="resnet18", dataset="digits", seed=0,
                strategy="protected_global", speedup={"target": 2, "achieved": 2.1},
                macs={"base": 10, "pruned": 4.7}, metric={"name": "top1", "base": 90, "final": 89},
                provenance={"harness_version": "0", "spec_version": "1.0"}, started_at="a", finished_at="b")
    return {**base, **kw}


def test_result_record_rules():
    assert ResultRecord.model_validate_json(ResultRecord.model_validate(_record()).model_dump_json())
    with pytest.raises(ValidationError, match="failed record needs an error"):
        ResultRecord.model_validate(_record(status="failed"))
    with pytest.raises(ValidationError, match="needs speedup.achieved"):
        ResultRecord.model_validate(_record(speedup={"target": 2}))


def test_wire_round_trip_and_limits():
    a, b = socket.socketpair()
    wire.send(a, {"type": "hello", "x": [1, 2]})
    assert wire.recv(b, timeout=1) == {"type": "hello", "x": [1, 2]}
    a.sendall(struct.pack(">Q", 10**9))  # announces 1 GB: refused before reading the body
    with pytest.raises(wire.WireError, match="exceeds"):
        wire.recv(b, timeout=1)
    a2, b2 = socket.socketpair()
    a2.sendall(struct.pack(">Q", 3) + b"{x}")
    with pytest.raises(wire.WireError, match="not valid JSON"):
        wire.recv(b2, timeout=1)
    a3, b3 = socket.socketpair()
    a3.sendall(struct.pack(">Q", 3) + b"NaN")
    with pytest.raises(wire.WireError, match="not valid JSON"):
        wire.recv(b3, timeout=1)
    silent, listener = socket.socketpair()
    with pytest.raises(wire.WireTimeout):
        wire.recv(listener, timeout=0.2)
    silent.close()
    with pytest.raises(wire.WireError, match="closed"):
        wire.recv(listener, timeout=0.2)
    with pytest.raises(ValueError):
        wire.send(a, {"x": float("nan")})


def test_specs_is_a_leaf():
    code = ("import sys, specs, specs.manifest, specs.messages, specs.track, specs.result, specs.wire, specs.schema;"
            "bad = [m for m in sys.modules if m.split('.')[0] in ('harness', 'timm', 'ultralytics', 'torch', "
            "'torchvision', 'torch_pruning')]; print(bad); sys.exit(1 if bad else 0)")
    res = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr


def test_readme_tables_match_the_registries():
    from harness.docs import README, render
    assert render(README.read_text()) == README.read_text(), "README.md is stale: run `python -m harness.docs`"


def test_normalize_keeps_an_all_zero_group_finite():
    import torch
    from specs.sdk import normalize
    zero = torch.zeros(4)
    for how in ("mean", "sum", "max", "lamp", "standardization", "gaussian"):
        assert torch.equal(normalize(zero, how), zero), how
    torch.testing.assert_close(normalize(torch.tensor([1.0, 3.0]), "mean"), torch.tensor([0.5, 1.5]))
    # LAMP: each score over the sum of the scores not smaller than it
    torch.testing.assert_close(normalize(torch.tensor([1.0, 3.0, 2.0]), "lamp"), torch.tensor([1 / 6, 1.0, 2 / 5]))


def test_spec_versions_are_a_table_every_runner_speaks():
    """What each spec version speaks is one row of specs.version.DIALECTS (the last is SPEC_VERSION); every
    runner has a link class for every regularizer dialect in it, and the wire's two reply transports
    follow the rows (1.0-1.2 files, 1.3 on the socket)."""
    from harness.runners import RUNNERS
    from specs.version import DIALECTS, SPEC_VERSION, dialect_of

    versions = [tuple(int(x) for x in d.version.split(".")) for d in DIALECTS]
    assert versions == sorted(set(versions)) and DIALECTS[-1].version == SPEC_VERSION
    assert [(d.regularizer, d.replies) for d in map(dialect_of, ("1.0", "1.1", "1.2", "1.3"))] == [
        ("dense", "files"), ("compact", "files"), ("compact", "files"), ("compact", "inline")]
    assert dialect_of("1.9") is DIALECTS[-1] and dialect_of("one") is DIALECTS[0] and dialect_of("0.9") is DIALECTS[0]
    for name in RUNNERS.names():
        links = RUNNERS.get(name).links
        assert {d.regularizer for d in DIALECTS} <= set(links), name
