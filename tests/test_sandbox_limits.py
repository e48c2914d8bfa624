"""The organizers' caps (flags > track > host defaults) and their checks, and the disk preflight of
``sweep``: a manifest asking for too much, or a nearly full disk, stops before anything is written.
(The same through the docker runner and blind-eval: tests/test_sandbox_escapes.py.)"""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from harness.cli import app
from harness.orchestration.preflight import DEFAULT_MIN_FREE_MB, LowDisk, check_free_space, free_mb
from harness.plan import Plan
from harness.runners.sandbox import (DEFAULT_CALL_TIMEOUT_CAP_S, DEFAULT_LOG_MB, DEFAULT_WRITE_MB, Host,
                                     ResourcesRejected, check_resources, fs_type, resolve_limits)
from specs.manifest import MethodManifest, SandboxLimits

HOST = Host(memory_mb=24000, cpus=2)


def manifest(**resources) -> MethodManifest:
    return MethodManifest(id="greedy", version="1.0.0", name="Greedy", provides=["importance"],
                          resources=resources)


def test_defaults_come_from_the_host():
    limits = resolve_limits(host=HOST)
    assert (limits.max_memory_mb, limits.max_cpus) == (12000, 2.0)  # half its memory, all its cores
    assert (limits.max_call_timeout_s, limits.max_write_mb, limits.max_log_mb) == \
        (DEFAULT_CALL_TIMEOUT_CAP_S, DEFAULT_WRITE_MB, DEFAULT_LOG_MB)


def test_flags_win_over_the_track_which_wins_over_the_defaults():
    flags = SandboxLimits(max_memory_mb=1000)
    track = SandboxLimits(max_memory_mb=4000, max_write_mb=64, max_cpus=16)
    limits = resolve_limits(flags, track, host=HOST)
    assert limits.max_memory_mb == 1000 and limits.max_write_mb == 64
    assert limits.max_cpus == 2.0  # never more than the engine host has: the engine would refuse the container


def test_a_greedy_manifest_is_rejected_with_every_excess_named():
    with pytest.raises(ResourcesRejected) as err:
        check_resources(manifest(memory_mb=262144, cpus=64, call_timeout_s=86400), resolve_limits(host=HOST))
    message = str(err.value)
    assert message.startswith("resources: method 'greedy' asks for more than the organizers allow: ")
    assert "memory_mb 262144 > 12000 MB (--max-memory-mb)" in message
    assert "cpus 64 > 2 (--max-cpus)" in message and "call_timeout_s 86400 > 3600 s (--max-call-timeout)" in message
    assert "\n" not in message
    check_resources(manifest(memory_mb=12000, cpus=2, call_timeout_s=3600), resolve_limits(host=HOST))  # at the caps


def test_a_track_may_set_caps_without_changing_its_hash(tiny_track):
    capped = tiny_track.model_copy(update={"sandbox": SandboxLimits(max_memory_mb=512, max_write_mb=8)})
    assert capped.hash() == tiny_track.hash()


def test_a_plan_file_and_flags_merge_their_caps(tmp_path, tiny_track_file):
    path = tmp_path / "plan.yaml"
    path.write_text(f"track: {tiny_track_file}\nsandbox: {{max_memory_mb: 4096, max_write_mb: 64}}\n")
    plan = Plan.from_file(path, sandbox={"max_write_mb": 8})
    assert plan.sandbox == SandboxLimits(max_memory_mb=4096, max_write_mb=8)


def test_the_exchange_tmpfs_is_a_tmpfs():
    assert fs_type("/proc") == "proc"
    if fs_type("/dev/shm") != "tmpfs":
        pytest.skip("no tmpfs at /dev/shm on this machine")
    assert fs_type("/dev/shm/some/missing/child") == "tmpfs"


def test_the_preflight_refuses_a_nearly_full_disk(tmp_path):
    free = free_mb(tmp_path / "not" / "yet")  # the nearest existing parent's file system
    assert free > 0
    check_free_space(tmp_path / "store", docker=False, min_free_mb=0)
    with pytest.raises(LowDisk) as err:
        check_free_space(tmp_path / "store", docker=False, min_free_mb=free * 10)
    assert f"MB free under {tmp_path / 'store'} (the result store); starting a run needs" in str(err.value)
    assert DEFAULT_MIN_FREE_MB == 2048


def test_sweep_starts_nothing_on_a_nearly_full_disk(tiny_track_file, tmp_path):
    out = tmp_path / "results"
    res = CliRunner().invoke(app, ["sweep", "--track", str(tiny_track_file), "--methods", "magnitude_l2",
                                   "--speedups", "2", "--seeds", "0", "--out", str(out),
                                   "--min-free-mb", str(10**12)])
    assert res.exit_code == 2, res.output
    text = " ".join(res.output.split())
    assert "MB free under" in text and "starting the sweep needs 1000000000000 MB free" in text, res.output
    assert "Traceback" not in res.output
    assert not out.exists() or not any(out.rglob("result.json"))
