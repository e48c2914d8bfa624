"""Importance methods: each discovered one against its independent reference.

- :data:`REFERENCES` names, for every importance method in methods/, either the Torch-Pruning
  importance it must equal (with the hyperparameters that select Torch-Pruning's conventions) or the
  test that checks it against a computation by hand; a discovered method without an entry fails.
- Parity: through the real runners (subprocess and inprocess), each Torch-Pruning-referenced method
  equals Torch-Pruning's own importance group by group on CIFAR-style ResNet-18, VGG-19 and ResNet-50
  with random BN affine params. Gradient-based references get gradients computed here with autograd,
  independently of harness.protocol.observations (same batches, eval mode).
- Where we deliberately differ from Torch-Pruning 1.6.1 (Taylor scores BatchNorm; OBD-Hessian
  accumulates every calibration sample), a tiny model checks our scores against numbers
  computed by hand, and shows what Torch-Pruning computes instead.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
import torch_pruning as tp

from harness.protocol.grouping import ROOT_TYPES, PruneConfig, build_graph, describe_groups
from harness.methods import find_method, providing
from harness.models import classifier_of, create_model
from harness.protocol.observations import collect
from harness.runners import client_class
from specs.messages import Group

TESTS = Path(__file__).resolve().parent


@dataclass(frozen=True)
class TorchPruning:
    """The method equals ``importance()`` of Torch-Pruning, run with these hyperparameters; ``grads``:
    what Torch-Pruning finds in ``.grad`` ("mean": the mean-loss gradient, "fisher": the squared
    per-sample gradients summed - what its HessianImportance intends)."""

    importance: Callable[[], object]
    hp: dict = field(default_factory=dict)
    grads: Optional[str] = None


@dataclass(frozen=True)
class ByHand:
    """The method is checked against an independent computation in ``test`` (``file::function``)."""

    test: str


imp = tp.importance
#: every discovered importance method -> its reference (a missing entry fails test_every_method_has_a_reference)
REFERENCES = {
    "magnitude_l1": TorchPruning(lambda: imp.MagnitudeImportance(p=1), {"depthwise": False}),
    "magnitude_l2": TorchPruning(lambda: imp.MagnitudeImportance(p=2), {"depthwise": False}),
    "lamp": TorchPruning(imp.LAMPImportance, {"depthwise": False}),
    "fpgm": TorchPruning(imp.FPGMImportance, {"depthwise": False}),
    "bn_scale": TorchPruning(imp.BNScaleImportance),
    # conv/linear part only: TP 1.6.1 never scores BN
    "taylor": TorchPruning(imp.TaylorImportance, {"score_bn": False, "depthwise": False}, grads="mean"),
    # TP's formula fed the Fisher it intends (every sample), not its accumulate_grad
    "obd_hessian": TorchPruning(imp.HessianImportance, {"depthwise": False}, grads="fisher"),
    "thinet": ByHand("test_methods_data.py::test_thinet_order_equals_brute_force_greedy_on_real_convolutions"),
    "cp": ByHand("test_methods_data.py::test_cp_lasso_equals_sklearn_on_explicit_contributions"),
    "hrank": ByHand("test_methods_data.py::test_hrank_zero_below_rank_one_below_full_rank"),
    "obd_c": ByHand("test_methods_data.py::test_obd_c_output_channels_closed_form_eigenbasis_and_kronecker"),
    "random": ByHand("test_methods_importance.py::test_random_is_the_seeded_uniform_stream"),
}
IMPORTANCE = [m.id for m in providing("importance")]
PARITY = [m for m in IMPORTANCE if isinstance(REFERENCES.get(m), TorchPruning)]
MODELS = [("resnet18", 0.25, 8), ("vgg19", 0.125, 16), ("resnet50", 0.0625, 16)]


@pytest.mark.parametrize("method", IMPORTANCE)
def test_every_method_has_a_reference(method):
    assert method in REFERENCES, (f"{method}: add its independent reference to REFERENCES in {Path(__file__).name} "
                                  f"(a Torch-Pruning importance, or the test that checks it by hand)")
    ref = REFERENCES[method]
    if isinstance(ref, ByHand):
        file, _, name = ref.test.partition("::")
        assert f"def {name}(" in (TESTS / file).read_text(), f"{method}: {ref.test} does not exist"


def test_references_name_discovered_methods():
    assert set(REFERENCES) <= set(IMPORTANCE), sorted(set(REFERENCES) - set(IMPORTANCE))


def ce(model: nn.Module, batch) -> torch.Tensor:
    x, y = batch
    return F.cross_entropy(model(x), y)


def randomize_bn(model: nn.Module) -> None:
    with torch.no_grad():  # non-trivial BN affine parameters, so BN members matter
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.uniform_(0.2, 2.0)
                m.bias.uniform_(-0.5, 0.5)


@dataclass
class Case:
    name: str
    model: nn.Module
    example: torch.Tensor
    config: PruneConfig
    groups: list[Group]
    batches: list
    obs: dict


def make_case(name: str, width: float, size: int) -> Case:
    torch.manual_seed(0)
    model = create_model(name, num_classes=10, in_chans=3, image_size=size, width=width).eval()
    randomize_bn(model)
    example = torch.randn(1, 3, size, size)
    config = PruneConfig(ignored_layers=[classifier_of(model)])
    groups = describe_groups(model, example, config)
    batches = [(torch.randn(4, 3, size, size), torch.randint(0, 10, (4,))) for _ in range(2)]
    obs = collect(["weights", "gradients", "sq_gradients"], model, groups, batches, ce)
    return Case(name, model, example, config, groups, batches, obs)


@pytest.fixture(scope="module")
def cases() -> list[Case]:
    return [make_case(*spec) for spec in MODELS]


# --------------------------------------------------------------------------- references


def per_sample_grads(model: nn.Module, batches: list) -> list[dict[str, torch.Tensor]]:
    """One {param name: gradient} per calibration sample (eval mode), by plain autograd."""
    names, params = zip(*model.named_parameters())
    out = []
    for x, y in batches:
        for i in range(len(x)):
            grads = torch.autograd.grad(F.cross_entropy(model(x[i:i + 1]), y[i:i + 1]), params)
            out.append(dict(zip(names, grads)))
    return out


def mean_loss_grads(model: nn.Module, batches: list) -> dict[str, torch.Tensor]:
    """Gradient of the mean loss of each batch, averaged over batches (eval mode)."""
    names, params = zip(*model.named_parameters())
    total = [torch.zeros_like(p) for p in params]
    for batch in batches:
        for t, g in zip(total, torch.autograd.grad(ce(model, batch), params)):
            t += g
    return {n: t / len(batches) for n, t in zip(names, total)}


def fisher_diag(model: nn.Module, batches: list) -> dict[str, torch.Tensor]:
    """Empirical Fisher diagonal: squared per-sample gradients summed over every sample."""
    grads = per_sample_grads(model, batches)
    return {n: sum(g[n].pow(2) for g in grads) for n in grads[0]}


def tp_scores(model, example, config, importance, grads=None) -> dict[str, torch.Tensor]:
    """Torch-Pruning's ``importance`` on every group of a fresh graph, with ``grads`` in ``.grad``."""
    for n, p in model.named_parameters():
        p.grad = None if grads is None else grads[n].clone()
    try:
        names = {m: n for n, m in model.named_modules()}
        DG = build_graph(model, example, config)
        return {names[g[0].dep.target.module]: importance(g)
                for g in DG.get_all_groups(ignored_layers=config.ignored_layers, root_module_types=ROOT_TYPES)}
    finally:
        model.zero_grad(set_to_none=True)


def reference(method: str, case: Case) -> dict[str, torch.Tensor]:
    ref = REFERENCES[method]
    grads = {None: None, "mean": lambda: mean_loss_grads(case.model, case.batches),
             "fisher": lambda: fisher_diag(case.model, case.batches)}[ref.grads]
    return tp_scores(case.model, case.example, case.config, ref.importance(), grads and grads())


@pytest.fixture(scope="module")
def references():
    """reference(method, case), computed once per module (both runners compare against it)."""
    memo: dict = {}

    def get(method: str, case: Case) -> dict[str, torch.Tensor]:
        if (method, case.name) not in memo:
            memo[method, case.name] = reference(method, case)
        return memo[method, case.name]
    return get


def score(client, case: Case, round: int = 0) -> dict[str, torch.Tensor]:
    return client.score(round, case.groups, {k: case.obs[k] for k in client.observations})


# --------------------------------------------------------------------------- parity through the runners


@pytest.mark.parametrize("runner", ["subprocess", "inprocess"])
@pytest.mark.parametrize("method", PARITY)
def test_equals_torch_pruning(cases, references, method, runner):
    with client_class(runner)(find_method(method), REFERENCES[method].hp, seed=0) as client:
        for case in cases:
            ours, again = score(client, case, 0), score(client, case, 1)
            ref = references(method, case)
            assert sorted(ours) == sorted(ref) == sorted(g.id for g in case.groups)
            for gid, expected in ref.items():
                assert torch.equal(ours[gid], again[gid]), f"{case.name} {gid}: not deterministic"
                torch.testing.assert_close(ours[gid].float(), expected.float(), rtol=1e-5, atol=1e-7,
                                           msg=f"{method}: {case.name} group {gid}")


@pytest.mark.parametrize("method", PARITY)
def test_defaults_deterministic_finite(cases, method):
    source = find_method(method)
    with client_class("inprocess")(source, {}, seed=0) as first, client_class("inprocess")(source, {}, seed=1) as second:
        for case in cases:
            a, b = score(first, case), score(second, case)
            for g in case.groups:
                assert a[g.id].shape == (g.n_channels,) and torch.isfinite(a[g.id]).all()
                assert torch.equal(a[g.id], b[g.id]), f"{method}: {case.name} {g.id} depends on the seed"


# --------------------------------------------------------------------------- hand-computed checks on a tiny model


def tiny_model(out_channels: int = 6):
    """conv0 -> bn1 -> relu -> conv3 (5 "logits" after pooling). One prunable group: conv0's
    output channels = bn1's channels = conv3's input channels (conv3 is the classifier)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, out_channels, 3, padding=1), nn.BatchNorm2d(out_channels), nn.ReLU(),
                          nn.Conv2d(out_channels, 5, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten()).eval()
    randomize_bn(model)
    example = torch.randn(1, 3, 6, 6)
    config = PruneConfig(ignored_layers=[model[3]])
    groups = describe_groups(model, example, config)
    assert [g.id for g in groups] == ["0"] and {m.layer for m in groups[0].members} == {"0", "1", "3"}
    return model, example, config, groups


def run(method: str, hp: dict, groups, obs, runner: str = "inprocess") -> torch.Tensor:
    source = find_method(method)
    with client_class(runner)(source, hp, seed=0) as client:
        return client.score(0, groups, {k: obs[k] for k in source.manifest.observations})["0"].float()


def mean_normalized(parts: list[torch.Tensor]) -> torch.Tensor:
    s = torch.stack(parts).mean(0)
    return s / s.mean()


@pytest.mark.parametrize("bias", [False, True])
def test_taylor_scores_batchnorm_by_hand(bias):
    model, example, config, groups = tiny_model()
    x, y = torch.randn(6, 3, 6, 6), torch.randint(0, 5, (6,))
    batches = [(x[:3], y[:3]), (x[3:], y[3:])]
    obs = collect(["weights", "gradients"], model, groups, batches, ce)
    g = mean_loss_grads(model, batches)
    conv0, bn, conv3 = model[0], model[1], model[3]
    with torch.no_grad():
        conv_parts = [(conv0.weight * g["0.weight"]).abs().sum((1, 2, 3)),   # conv0 filters
                      (conv3.weight * g["3.weight"]).abs().sum((0, 2, 3))]   # conv3 input columns
        bn_parts = [(bn.weight * g["1.weight"]).abs()]                       # |gamma * dL/dgamma|
        if bias:
            conv_parts.append((conv0.bias * g["0.bias"]).abs())
            bn_parts.append((bn.bias * g["1.bias"]).abs())                   # |beta * dL/dbeta|

    # default: BN scored, mean over every part, mean-normalized
    ours = run("taylor", {"bias": bias}, groups, obs)
    torch.testing.assert_close(ours, mean_normalized(conv_parts + bn_parts), rtol=1e-5, atol=1e-7)
    # BN contributes exactly the hand-computed amount (sum reduction, no normalization)
    raw = {sb: run("taylor", {"bias": bias, "score_bn": sb, "reduction": "sum", "normalizer": "none"}, groups, obs)
           for sb in (True, False)}
    torch.testing.assert_close(raw[True] - raw[False], sum(bn_parts), rtol=1e-5, atol=1e-8)
    assert (sum(bn_parts) > 0).all()
    # Torch-Pruning 1.6.1 ignores the BN member: it equals ours with score_bn off, not ours
    tp_ref = tp_scores(model, example, config, tp.importance.TaylorImportance(bias=bias), g)["0"].float()
    no_bn = run("taylor", {"bias": bias, "score_bn": False}, groups, obs)
    torch.testing.assert_close(no_bn, mean_normalized(conv_parts), rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(tp_ref, no_bn, rtol=1e-5, atol=1e-7)
    assert not torch.allclose(tp_ref, ours, rtol=1e-3)


def test_bn_scale_group_without_batchnorm_is_pruned_last():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 6, 1), nn.ReLU(),
                          nn.Conv2d(6, 5, 1), nn.AdaptiveAvgPool2d(1), nn.Flatten()).eval()
    randomize_bn(model)
    groups = describe_groups(model, torch.randn(1, 3, 6, 6), PruneConfig(ignored_layers=[model[5]]))
    assert sorted(g.id for g in groups) == ["0", "3"]
    source = find_method("bn_scale")
    with client_class("inprocess")(source, {}, seed=0) as client:
        scores = client.score(0, groups, collect(source.manifest.observations, model, groups, []))
    gamma = model[1].weight.detach().abs()
    torch.testing.assert_close(scores["0"].float(), gamma / gamma.mean())
    assert torch.equal(scores["3"], torch.full((6,), scores["0"].max().item(), dtype=scores["3"].dtype))


def test_obd_hessian_accumulates_every_sample_by_hand():
    model, example, config, groups = tiny_model()
    torch.manual_seed(1)
    x, y = torch.randn(2, 3, 6, 6), torch.tensor([0, 3])
    obs = collect(["weights", "sq_gradients"], model, groups, [(x, y)], ce)
    per_sample = per_sample_grads(model, [(x, y)])
    conv0, bn, conv3 = model[0], model[1], model[3]

    def obd(H):  # 0.5 * H_ii * w_i^2 summed per channel, per member; mean over members; mean-normalized
        with torch.no_grad():
            return mean_normalized([0.5 * (conv0.weight.pow(2) * H["0.weight"]).sum((1, 2, 3)),
                                    0.5 * bn.weight.pow(2) * H["1.weight"],
                                    0.5 * (conv3.weight.pow(2) * H["3.weight"]).sum((0, 2, 3))])

    every = obd({k: per_sample[0][k].pow(2) + per_sample[1][k].pow(2) for k in per_sample[0]})
    last_only = obd({k: per_sample[1][k].pow(2) for k in per_sample[0]})
    assert not torch.equal(every.argsort(), last_only.argsort()), "pick data where the last sample alone ranks differently"

    for runner in ("inprocess", "subprocess"):
        torch.testing.assert_close(run("obd_hessian", {}, groups, obs, runner), every, rtol=1e-5, atol=1e-7)

    # Torch-Pruning 1.6.1, used as documented (accumulate_grad after each per-sample backward),
    # keeps only the last sample's squared gradient: a different ranking on the same input.
    imp = tp.importance.HessianImportance()
    for i in range(len(x)):
        model.zero_grad()
        F.cross_entropy(model(x[i:i + 1]), y[i:i + 1]).backward()
        imp.accumulate_grad(model)
    names = {m: n for n, m in model.named_modules()}
    DG = build_graph(model, example, config)
    tp_out = {names[g[0].dep.target.module]: imp(g) for g in DG.get_all_groups(
        ignored_layers=config.ignored_layers, root_module_types=ROOT_TYPES)}["0"].float()
    model.zero_grad(set_to_none=True)
    torch.testing.assert_close(tp_out, last_only, rtol=1e-5, atol=1e-7)
    assert not torch.equal(tp_out.argsort(), every.argsort())


def test_random_is_the_seeded_uniform_stream():
    """Random's scores are ``torch.rand`` from the run seed, group after group: the same through both
    runners, reproducible, and different for another seed."""
    _, _, _, groups = tiny_model()
    groups = groups + [groups[0].model_copy(update={"id": "again"})]
    for runner in ("inprocess", "subprocess"):
        for seed in (0, 3):
            with client_class(runner)(find_method("random"), {}, seed=seed) as client:
                got = client.score(0, groups, {})
            stream = torch.Generator().manual_seed(seed)
            for g in groups:
                torch.testing.assert_close(got[g.id].float(), torch.rand(g.n_channels, generator=stream))
    assert not torch.equal(got[groups[0].id], got["again"])
