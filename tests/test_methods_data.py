"""Data-driven methods thinet, cp, hrank, obd_c: right answers known independently.

- ThiNet / CP: an input channel of the consumer conv with exactly zero contribution scores
  lowest; ThiNet's order equals a brute-force greedy over real masked convolutions; CP's LASSO
  equals scikit-learn's on the explicitly built per-channel contributions.
- HRank: a channel with all-zero maps (rank 0) < a constant one (rank 1) < a full-rank one;
  the root's BatchNorm is found from the data on a ResNet.
- OBD-C: on a linear layer with known K-FAC factors, the closed form by hand, the sum over the
  Kronecker-factored eigenbasis and the explicit Kronecker product agree; runs on a CIFAR ResNet-18.
- All four through the real subprocess runner (observation files over the wire protocol).
"""

from __future__ import annotations

import sys

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from harness.protocol.grouping import PruneConfig, describe_groups
from harness.methods import find_method, providing
from harness.models import classifier_of, create_model
from harness.protocol.observations import collect
from harness.runners import client_class
from specs.messages import Group, Member
from specs.sdk import Observations, contribution_gram
from specs.sdk.server import load_method_class
from specs.track import Calibration

#: the discovered methods that read activations (what this module's wire-protocol test sends them)
METHODS = [m.id for m in providing("importance")
           if set(m.manifest.observations) & {"inputs", "outputs", "output_gradients"}]


def method(method_id: str, **hp):
    """(instance, module) of a method, loaded the way the SDK loads it."""
    source = find_method(method_id)
    cls = load_method_class(source.path, source.manifest)
    return cls(source.manifest, hp, seed=0), sys.modules[cls.__module__]


def observe(model, x, kinds, cal=None, ignored=None):
    groups = describe_groups(model, x[:1], PruneConfig(ignored_layers=ignored or [model[-1]]))
    obs = collect(kinds, model.eval(), groups, [(x, torch.zeros(len(x), dtype=torch.long))], seed=0,
                  calibration=cal or Calibration(num_samples=len(x), batch_size=len(x)))
    return {g.id: g for g in groups}, Observations(obs)


def conv_pair(zero_channel: int | None = 2, width: int = 6) -> nn.Sequential:
    """conv(3->width)-BN-ReLU-conv(width->4)-BN-ReLU-pool-linear; consumer input ``zero_channel`` is zeroed."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(),
                          nn.Conv2d(width, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4), nn.ReLU(),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 10))
    with torch.no_grad():
        model[1].bias.uniform_(0.1, 0.5)  # channels stay alive after the ReLU
        if zero_channel is not None:
            model[3].weight[:, zero_channel] = 0
    return model.eval()


# --------------------------------------------------------------------------- ThiNet and CP


@pytest.mark.parametrize("method_id", ["thinet", "cp"])
def test_zero_contribution_channel_scores_lowest(method_id):
    model = conv_pair(zero_channel=2)
    x = torch.randn(8, 3, 5, 5, generator=torch.Generator().manual_seed(0))
    groups, obs = observe(model, x, ["weights", "inputs"])
    inst, _ = method(method_id)
    scores = inst.score_group(groups["0"], obs)
    assert scores.shape == (6,) and torch.isfinite(scores).all()
    assert int(scores.argmin()) == 2 and (scores[2] < scores[torch.arange(6) != 2]).all(), scores


def test_thinet_order_equals_brute_force_greedy_on_real_convolutions():
    n = 12  # 12 correlated channels made from 3 inputs: the cross terms decide the order
    model = conv_pair(zero_channel=None, width=n)
    x = torch.randn(6, 3, 4, 4, generator=torch.Generator().manual_seed(1))
    cal = Calibration(num_samples=6, batch_size=6, positions_per_sample=16)  # all 16 positions: exact
    groups, obs = observe(model, x, ["weights", "inputs"], cal)
    inst, _ = method("thinet")
    scores = inst.score_group(groups["0"], obs)
    with torch.no_grad():
        a = F.relu(model[1](model[0](x)))  # the consumer's real input
        removed = []
        for _ in range(n):  # greedy: the channel whose removal adds the least squared output error
            errs = {}
            for c in sorted(set(range(n)) - set(removed)):
                mask = torch.zeros(1, n, 1, 1)
                mask[0, removed + [c]] = 1
                errs[c] = F.conv2d(a * mask, model[3].weight, padding=1).pow(2).sum().item()
            removed.append(min(errs, key=errs.get))
    expected = torch.empty(n)
    expected[removed] = torch.arange(float(n)) / (n - 1)
    torch.testing.assert_close(scores, expected)


def test_cp_lasso_equals_sklearn_on_explicit_contributions():
    linear_model = pytest.importorskip("sklearn.linear_model")
    model = conv_pair(zero_channel=None)
    x = torch.randn(6, 3, 4, 4, generator=torch.Generator().manual_seed(2))
    cal = Calibration(num_samples=6, batch_size=6, positions_per_sample=16)
    groups, obs = observe(model, x, ["weights", "inputs"], cal)
    _, cp = method("cp")
    member = next(m for m in groups["0"].members if m.layer == "3")
    Q, roots = contribution_gram(member, obs.inputs["3"], obs.weights["3.weight"])
    with torch.no_grad():
        a = F.relu(model[1](model[0](x)))
        Z = torch.stack([F.conv2d(a * F.one_hot(torch.tensor(c), 6).float()[None, :, None, None],
                                  model[3].weight, padding=1).flatten() for c in range(6)], 1).double()
    torch.testing.assert_close(Q, Z.T @ Z, rtol=1e-4, atol=1e-6)
    y, M = Z.sum(1), Z.shape[0]
    alpha_max = float((Z.T @ y).abs().max()) / M
    for frac in (0.5, 0.1, 0.01):
        ref = linear_model.Lasso(alpha=frac * alpha_max, fit_intercept=False, tol=1e-12, max_iter=100000)
        ref.fit(Z.numpy(), y.numpy())
        ours = cp.lasso_cd(Q, Q.sum(1), frac * alpha_max * M)
        torch.testing.assert_close(ours, torch.from_numpy(ref.coef_), rtol=1e-3, atol=1e-5)
        assert ((ours != 0) == torch.from_numpy(ref.coef_ != 0)).all()
    # the score says on which step of the alpha grid a channel enters: sklearn's lasso_path agrees
    steps, ratio = 20, 1e-3
    grid = alpha_max * ratio ** ((torch.arange(steps) + 1) / steps)
    _, coefs, _ = linear_model.lasso_path(Z.numpy(), y.numpy(), alphas=grid.numpy(), tol=1e-12, max_iter=100000)
    entry = [next((k for k in range(steps) if coefs[c, k] != 0), None) for c in range(6)]
    scores = cp.path_scores(Q, steps, ratio, 1e-8)
    ours = [None if s < 1e-3 / steps else steps - 1 - int(s * steps) for s in scores.tolist()]
    assert ours == entry and len(set(entry)) > 2


# --------------------------------------------------------------------------- HRank


@pytest.mark.parametrize("feature_map", ["bn_relu", "conv"])
def test_hrank_zero_below_rank_one_below_full_rank(feature_map):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 3, 1), nn.BatchNorm2d(3), nn.ReLU(), nn.Conv2d(3, 2, 1),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(2, 4))
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([0.0, 0.0, 1.0]).view(3, 1, 1, 1))
        model[0].bias.copy_(torch.tensor([0.0, 1.0, 0.0]))  # maps: zero, constant (rank 1), the image
        model[1].running_mean.zero_(), model[1].running_var.fill_(1.0)
        model[1].weight.fill_(2.0), model[1].bias.zero_()
    x = torch.rand(5, 1, 6, 6, generator=torch.Generator().manual_seed(0)) + 0.5  # full-rank positive images
    groups, obs = observe(model, x, ["outputs"])
    inst, _ = method("hrank", feature_map=feature_map, normalizer="none")
    scores = inst.score_group(groups["0"], obs)
    assert scores.tolist() == [0.0, 1.0, 6.0]


def test_hrank_finds_the_roots_batchnorm_on_a_resnet():
    torch.manual_seed(0)
    model = create_model("resnet18", num_classes=10, in_chans=1, image_size=8, width=0.125).eval()
    groups, obs = observe(model, torch.randn(4, 1, 8, 8), ["outputs"], ignored=[classifier_of(model)])
    inst, hrank = method("hrank")
    expected = {"conv1": "bn1", "layer1.0.conv1": "layer1.0.bn1", "layer3.0.shortcut.0": "layer3.0.shortcut.1",
                "layer4.1.conv1": "layer4.1.bn1"}
    for root, bn in expected.items():
        found = inst.feature_maps(groups[root], obs)
        member = next(m for m in groups[root].members if m.layer == bn)
        torch.testing.assert_close(found, hrank.channel_maps(member, obs.outputs[bn], found.shape[1]).clamp(min=0))


# --------------------------------------------------------------------------- OBD-C


def linear_case():
    """A linear layer (5 -> 4, with bias) and observations with known K-FAC factors."""
    g = torch.Generator().manual_seed(0)
    a, grad = torch.randn(50, 5, generator=g), torch.randn(50, 4, generator=g) * torch.tensor([1.0, 2.0, 0.5, 3.0])
    w, b = torch.randn(4, 5, generator=g), torch.randn(4, generator=g)
    obs = Observations(inputs={"fc": a}, output_gradients={"fc": grad}, weights={"fc.weight": w, "fc.bias": b})
    a1 = torch.cat([a, torch.ones(50, 1)], 1).double()
    A, G = a1.T @ a1 / 50, grad.double().T @ grad.double() / 50  # K-FAC factors, by hand
    W = torch.cat([w, b[:, None]], 1).double()
    return obs, A, G, W


def member(dim: str, n: int) -> Member:
    return Member(layer="fc", module_type="Linear", kind="linear", dim=dim, weight="fc.weight",
                  bias="fc.bias" if dim == "out" else None, idxs=list(range(n)), root_idxs=list(range(n)))


def kfe_saliency(dW: torch.Tensor, A: torch.Tensor, G: torch.Tensor) -> float:
    """0.5 * sum over the weights in the Kronecker-factored eigenbasis of (Fisher there) * w^2."""
    lA, UA = torch.linalg.eigh(A)
    lG, UG = torch.linalg.eigh(G)
    return float(0.5 * (torch.outer(lG, lA) * (UG.T @ dW @ UA).pow(2)).sum())


def test_obd_c_output_channels_closed_form_eigenbasis_and_kronecker():
    obs, A, G, W = linear_case()
    inst, _ = method("obd_c", normalizer="none")
    scores = inst.score_group(Group(id="fc", root="fc", n_channels=4, members=[member("out", 4)]), obs)
    closed = torch.stack([0.5 * G[o, o] * W[o] @ A @ W[o] for o in range(4)])  # EigenDamage's C-OBD
    F_ = torch.kron(G, A)  # Fisher of row-major vec(W): per-sample grad g a^T flattens to kron(g, a)
    for o in range(4):
        dW = torch.zeros_like(W)
        dW[o] = W[o]
        assert kfe_saliency(dW, A, G) == pytest.approx(float(closed[o]), rel=1e-9)
        assert float(0.5 * dW.flatten() @ F_ @ dW.flatten()) == pytest.approx(float(closed[o]), rel=1e-9)
    torch.testing.assert_close(scores.double(), closed, rtol=1e-5, atol=0)


def test_obd_c_input_channels_closed_form_eigenbasis_and_kronecker():
    obs, A, G, W = linear_case()
    inst, _ = method("obd_c", normalizer="none")
    scores = inst.score_group(Group(id="x", root="x", n_channels=5, members=[member("in", 5)]), obs)
    for c in range(5):
        dW = torch.zeros_like(W)
        dW[:, c] = W[:, c]  # the consumer loses column c (never its bias)
        expected = kfe_saliency(dW, A, G)
        assert float(0.5 * dW.flatten() @ torch.kron(G, A) @ dW.flatten()) == pytest.approx(expected, rel=1e-9)
        assert float(scores[c]) == pytest.approx(expected, rel=1e-5)


def test_obd_c_runs_on_a_cifar_resnet18():
    torch.manual_seed(0)
    model = create_model("resnet18", num_classes=10, in_chans=3, image_size=32, width=0.125).eval()
    groups, obs = observe(model, torch.randn(8, 3, 32, 32), ["weights", "inputs", "output_gradients"],
                          ignored=[classifier_of(model)])
    inst, _ = method("obd_c")
    scores = inst.score(list(groups.values()), obs)
    assert set(scores) == set(groups)
    for gid, s in scores.items():
        assert s.shape == (groups[gid].n_channels,) and torch.isfinite(s).all() and (s >= 0).all()
        assert s.max() > 0, gid


# --------------------------------------------------------------------------- through the wire protocol


def test_all_four_through_the_subprocess_runner():
    torch.manual_seed(0)
    model = create_model("resnet18", num_classes=10, in_chans=1, image_size=8, width=0.125).eval()
    x = torch.randn(16, 1, 8, 8)
    groups = describe_groups(model, x[:1], PruneConfig(ignored_layers=[classifier_of(model)]))
    kinds = ["weights", "inputs", "outputs", "output_gradients"]
    obs = collect(kinds, model, groups, [(x[:8], torch.zeros(8)), (x[8:], torch.zeros(8))], seed=0,
                  calibration=Calibration(num_samples=16, batch_size=8))
    for method_id in METHODS:
        source = find_method(method_id)
        wanted = {k: obs[k] for k in source.manifest.observations}
        with client_class("subprocess")(source, {}, seed=0) as client:
            wire = client.score(0, groups, wanted)
        with client_class("inprocess")(source, {}, seed=0) as client:
            local = client.score(0, groups, wanted)
        assert sorted(wire) == sorted(g.id for g in groups)
        for gid in wire:
            assert torch.isfinite(wire[gid]).all()
            torch.testing.assert_close(wire[gid], local[gid], msg=f"{method_id} {gid}")
