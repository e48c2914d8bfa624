"""Spec 1.3 replies on the socket (``inline_reply``): the same answers as file replies, for scores,
dense and compact regularizer gradients; nothing written into the exchange directory; messages that a
1.0-1.2 peer still reads; the framing's size limit checked before a body is read."""

from __future__ import annotations

import json
import shutil
import socket

import pytest
import torch
import torch.nn as nn
from pydantic import ValidationError

from harness.methods import find_method, load_source
from harness.protocol.grouping import PruneConfig, describe_groups
from harness.protocol.observations import collect, param_keys
from harness.runners import client_class
from harness.runners.socket_client import SocketLink
from specs import wire
from specs.messages import InlineTensors, RegularizeReply, ScoreReply, ScoreRequest, TensorFile, method_message
from specs.sdk import SOCKET_NAME


def declaring(method_id: str, version: str, tmp_path):
    """A copy of a reference method whose manifest declares ``spec_version`` = ``version``."""
    src = find_method(method_id).path
    dest = tmp_path / f"{method_id}-{version}"
    shutil.copytree(src, dest, ignore=shutil.ignore_patterns("__pycache__"))
    manifest = json.loads((dest / "manifest.json").read_text())
    manifest["spec_version"] = version
    (dest / "manifest.json").write_text(json.dumps(manifest))
    return load_source(dest)


@pytest.fixture(scope="module")
def small():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 6, 3, padding=1),
                          nn.BatchNorm2d(6), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, 3))
    groups = describe_groups(model, torch.randn(1, 3, 8, 8), PruneConfig(ignored_layers=[model[8]]))
    return model, groups


def harness_files(client) -> list[str]:
    return sorted(p.name for p in client.exchange.iterdir())


def test_inline_scores_equal_file_scores(small, tmp_path):
    model, groups = small
    obs = collect(["weights"], model, groups, batches=[])
    answers = {}
    for version in ("1.0", "1.3"):
        with client_class("subprocess")(declaring("magnitude_l2", version, tmp_path), {}, seed=0) as client:
            assert client.inline == (version == "1.3")
            answers[version] = client.score(0, groups, obs)
            assert harness_files(client) == [SOCKET_NAME]  # inputs removed, no reply file left behind
    assert answers["1.0"].keys() == answers["1.3"].keys()
    for gid, s in answers["1.0"].items():
        assert torch.equal(s, answers["1.3"][gid])


@pytest.mark.parametrize("reg_id", ["group_norm", "growing_reg"])
def test_inline_regularizer_equals_file_regularizer(reg_id, small, tmp_path):
    model, groups = small
    weights = {k: p.detach().clone() for k, p in model.named_parameters() if k in param_keys(groups)}
    got = {}
    for version in ("1.1", "1.3"):
        with client_class("subprocess")(declaring(reg_id, version, tmp_path), {}, seed=0) as client:
            link = client.regularizer_link(groups)
            assert isinstance(link, SocketLink)
            try:
                compact = [link(step, 10, weights) for step in range(3)]
                assert harness_files(client) == [SOCKET_NAME, "reg-weights.safetensors"]
            finally:
                link.close()
            got[version] = (compact, client.regularize(0, 10, groups, weights))  # the 1.0 conversation too
    (compact_f, dense_f), (compact_i, dense_i) = got["1.1"], got["1.3"]
    for a, b in zip(compact_f, compact_i):
        assert a.dense.keys() == b.dense.keys() and a.scales.keys() == b.scales.keys()
        assert all(torch.equal(a.dense[k], b.dense[k]) for k in a.dense)
        for key, items in a.scales.items():
            assert sorted((d, s.tolist()) for d, s in items) == sorted((d, s.tolist()) for d, s in b.scales[key])
        assert a.scales or a.dense
    assert dense_f.keys() == dense_i.keys() and all(torch.equal(dense_f[k], dense_i[k]) for k in dense_f)


def test_inline_fields_are_left_out_for_older_peers():
    files = ScoreRequest(round=0, groups=[], reply_file="s.safetensors").model_dump(mode="json")
    assert "inline_reply" not in files  # a 1.0-1.2 SDK (extra="forbid") accepts it
    inline = ScoreRequest(round=0, groups=[], reply_file="s.safetensors", inline_reply=True).model_dump(mode="json")
    assert inline["inline_reply"] is True
    reply = method_message.validate_python({"type": "scores", "scores": {"inline": True, "keys": ["a"]}})
    assert isinstance(reply, ScoreReply) and isinstance(reply.scores, InlineTensors)
    reply = method_message.validate_python({"type": "reg_grads", "grads": {"file": "g.safetensors"}})
    assert isinstance(reply, RegularizeReply) and isinstance(reply.grads, TensorFile) and reply.scales is None
    with pytest.raises(ValidationError):  # one or the other, never both
        method_message.validate_python({"type": "scores", "scores": {"file": "s.safetensors", "inline": True}})


def test_a_frame_above_the_limit_is_refused_before_its_body_is_read():
    a, b = socket.socketpair()
    try:
        wire.send_blob(a, b"x" * 1000)
        with pytest.raises(wire.FrameTooLarge) as err:
            wire.recv_blob(b, timeout=5, max_bytes=999)
        assert (err.value.size, err.value.limit) == (1000, 999)
        assert b.recv(10) == b"x" * 10  # the refused body is still unread on the socket
    finally:
        a.close()
        b.close()


def test_a_compact_regularizer_link_waits_for_a_client_begun_on_a_thread(small):
    """The link talks on the client's socket: on a client started with ``begin()`` (its handshake still on
    the start thread) the first request waits for the start, as ``score`` does, and gets the answer an
    ordinary start gets."""
    model, groups = small
    weights = {k: p.detach().clone() for k, p in model.named_parameters() if k in param_keys(groups)}
    answers = []
    for begun in (False, True):
        client = client_class("subprocess")(find_method("group_norm"), {}, seed=0)
        with client.begin() if begun else client:
            link = client.regularizer_link(groups)
            assert isinstance(link, SocketLink)
            try:
                answers.append(link(0, 10, weights))
            finally:
                link.close()
            assert client._starting is None and client._conn is not None
    assert answers[0].dense.keys() == answers[1].dense.keys() and answers[0].scales.keys() == answers[1].scales.keys()
    assert all(torch.equal(answers[0].dense[k], answers[1].dense[k]) for k in answers[0].dense)


def test_observations_are_never_written_through_a_link_the_method_planted(tmp_path):
    """A method that can write its exchange directory plants a link where the harness's next observation file
    will be: the harness's file replaces the link (safetensors writes a temporary file and renames it), the
    link's target is untouched, and the file is readable by the container's user."""
    import os
    import stat

    from safetensors.torch import load_file
    client = client_class("subprocess")(find_method("magnitude_l2"), {}, 0)
    try:
        target = tmp_path / "harness-secret"
        target.write_text("keep me")
        name = "obs-weights-00001.safetensors"
        os.symlink(target, client.exchange / name)
        ref = client._write("obs-weights", {"w": torch.arange(6.0).reshape(2, 3)})
        path = client.exchange / ref.file
        assert ref.file == name and target.read_text() == "keep me"
        mode = os.lstat(path).st_mode
        assert stat.S_ISREG(mode) and stat.S_IMODE(mode) == 0o644
        assert torch.equal(load_file(str(path))["w"], torch.arange(6.0).reshape(2, 3))
    finally:
        client.close()


def test_a_planted_fifo_or_directory_neither_hangs_nor_crashes_the_harness(tmp_path):
    """A FIFO planted under the next observation's name is replaced (the harness writes in its own directory
    and renames the file into the exchange: it never opens a name the method controls, so it cannot block on
    a FIFO); a non-empty directory there cannot be replaced: a MethodFailure in one line, nothing left."""
    import os
    import stat

    from harness.errors import MethodFailure
    client = client_class("subprocess")(find_method("magnitude_l2"), {}, 0)
    try:
        os.mkfifo(client.exchange / "obs-weights-00001.safetensors")
        ref = client._write("obs-weights", {"w": torch.ones(2)})
        assert stat.S_ISREG(os.lstat(client.exchange / ref.file).st_mode)
        planted = client.exchange / "obs-weights-00002.safetensors"
        planted.mkdir()
        (planted / "x").write_text("x")
        with pytest.raises(MethodFailure) as e:
            client._write("obs-weights", {"w": torch.ones(2)})
        assert "'obs-weights-00002.safetensors'" in str(e.value) and "\n" not in str(e.value)
        assert not list(client._staging.iterdir())
    finally:
        client.close()
    assert not client._staging.exists() and not client.exchange.exists()
