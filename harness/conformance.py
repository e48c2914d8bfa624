"""The conformance suite: one set of checks for every method (``pbench-harness check-method``).

Checks: the manifest validates; the handshake works; every reply the manifest
declares is valid on several tiny models (scores: one finite float per channel
of every group; regularizer: gradients of the right shapes); two fresh starts
with the same seed answer identically; calls stay within the declared time and
memory; under the docker runner the method runs with no network at all.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from harness.errors import MethodFailure
from harness.protocol.grouping import PruneConfig, describe_groups
from harness.methods import MethodSource
from harness.models import classifier_of, create_model
from harness.protocol.observations import collect, param_keys
from harness.runners import client_class
from specs.messages import Group
from specs.submission import CheckResult, ConformanceReport

#: (model, width, in_chans, image size): a residual net, a plain net, a bottleneck net
TINY_MODELS = [("resnet18", 0.125, 1, 8), ("vgg19", 0.125, 3, 16), ("resnet50", 0.0625, 3, 16)]


@dataclass
class Probe:
    name: str
    model: nn.Module
    groups: list[Group]
    observations: dict


def _loss(model: nn.Module, batch) -> torch.Tensor:
    x, y = batch
    return F.cross_entropy(model(x), y)


def make_probes(source: MethodSource, seed: int = 0) -> list[Probe]:
    """Tiny models with the observations the method declares, on seeded random calibration data."""
    probes = []
    for name, width, chans, size in TINY_MODELS:
        torch.manual_seed(seed)
        model = create_model(name, num_classes=10, in_chans=chans, image_size=size, width=width).eval()
        g = torch.Generator().manual_seed(seed)
        batches = [(torch.randn(8, chans, size, size, generator=g), torch.randint(0, 10, (8,), generator=g))
                   for _ in range(2)]
        example = batches[0][0][:1]
        groups = describe_groups(model, example, PruneConfig(ignored_layers=[classifier_of(model)]))
        obs = collect(source.manifest.observations, model, groups, batches, _loss)
        probes.append(Probe(f"{name}-w{width}", model, groups, obs))
    return probes


def _answers(client, probes: list[Probe]) -> list[dict]:
    out = []
    for p in probes:
        answer = {}
        if "importance" in client.manifest.provides:
            answer["scores"] = client.score(0, p.groups, p.observations)
        if "regularizer" in client.manifest.provides:
            params = dict(p.model.named_parameters())
            weights = {k: params[k].detach().clone() for k in param_keys(p.groups)}
            answer["reg"] = client.regularize(0, 10, p.groups, weights)
        out.append(answer)
    return out


def _same(a: list[dict], b: list[dict]) -> Optional[str]:
    for i, (x, y) in enumerate(zip(a, b)):
        for kind in x:
            for key in x[kind]:
                if not torch.equal(x[kind][key], y[kind][key]):
                    return f"{kind} for {key!r} on model {TINY_MODELS[i][0]} differ between two runs with the same seed"
    return None


def check_method(source: MethodSource, runner: str = "subprocess", seed: int = 0, image: Optional[str] = None,
                 progress: Optional[Callable[[str], None]] = None) -> ConformanceReport:
    cls = client_class(runner)
    kwargs = {"image": image} if image and runner == "docker" else {}
    m = source.manifest
    checks = [CheckResult(name="manifest", passed=True, detail=f"{m.id} {m.version} provides {'+'.join(m.provides)}")]
    say = progress or (lambda msg: None)
    say("building probes")
    probes = make_probes(source, seed)

    say("handshake")
    client = cls(source, {}, seed, **kwargs)
    digest = client.image_digest
    t0 = time.perf_counter()
    try:
        client.start()
    except MethodFailure as e:
        client.close()
        checks.append(CheckResult(name="handshake", passed=False, detail=str(e), seconds=time.perf_counter() - t0))
        return _report(source, runner, digest, checks)
    checks.append(CheckResult(name="handshake", passed=True, seconds=time.perf_counter() - t0,
                              detail=f"{runner} runner" + (f", image {digest}" if digest else "")))
    say("replies")
    t0 = time.perf_counter()
    try:
        answers = _answers(client, probes)
        memory = client.peak_memory_mb()
    except MethodFailure as e:
        checks.append(CheckResult(name="replies", passed=False, detail=str(e), seconds=time.perf_counter() - t0))
        return _report(source, runner, digest, checks)
    finally:
        client.close()
    call_s = time.perf_counter() - t0
    declared = " and ".join(k for k, cap in (("scores", "importance"), ("regularizer gradients", "regularizer"))
                            if cap in m.provides)
    checks.append(CheckResult(name="replies", passed=True, seconds=call_s,
                              detail=f"valid {declared} on {', '.join(p.name for p in probes)}"))

    say("determinism")
    t0 = time.perf_counter()
    try:
        with cls(source, {}, seed, **kwargs) as again:
            diff = _same(answers, _answers(again, probes))
    except MethodFailure as e:
        diff = f"second run failed: {e}"
    checks.append(CheckResult(name="determinism", passed=diff is None, seconds=time.perf_counter() - t0,
                              detail=diff or f"identical answers from two fresh starts with seed {seed}"))

    limit_s, limit_mb = m.resources.call_timeout_s, m.resources.memory_mb
    checks.append(CheckResult(name="time", passed=call_s <= limit_s * len(probes),
                              detail=f"{call_s:.2f} s for {len(probes)} probes (limit {limit_s:g} s per call)"))
    if runner == "docker":  # the container's own accounting: the limit the sandbox enforces
        checks.append(CheckResult(
            name="memory", passed=memory is not None and memory <= limit_mb,
            detail=f"peak {memory:.0f} MB (limit {limit_mb} MB)" if memory is not None else "peak not reported"))
    else:  # a local process carries the host's torch build (a CUDA one is ~0.5 GB): report, enforce in docker
        checks.append(CheckResult(
            name="memory", passed=True,
            detail=(f"peak {memory:.0f} MB with the host's torch (limit {limit_mb} MB is enforced with --in-docker)"
                    if memory is not None else f"not measurable; limit {limit_mb} MB is enforced with --in-docker")))
    checks.append(CheckResult(
        name="no network", passed=True,
        detail="ran with network_mode=none" if runner == "docker" else "not checked: use --in-docker"))
    return _report(source, runner, digest, checks)


def _report(source: MethodSource, runner: str, digest: Optional[str], checks: list[CheckResult]) -> ConformanceReport:
    return ConformanceReport(method_id=source.manifest.id, method_version=source.manifest.version, runner=runner,
                             image_digest=digest, checks=checks, passed=all(c.passed for c in checks))
