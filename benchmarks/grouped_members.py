"""Grouped and depthwise members: how far each rule is from the truth, side by side.

1. GroupLASSO's gradient on a conv0 -> BN -> grouped conv1 -> BN -> fc net (groups 2 and 4, the
   test's net), against autograd's gradient of the group-lasso penalty written slice by slice
   (tests/test_methods_members.py): the SDK now (a channel's slice in the grouped consumer = its own conv
   group's block) and the rule before it (layout-v1: the column ``c % width`` for every group,
   Torch-Pruning's ``repeat(groups)`` - reproduced here in a few lines).
2. Depthwise members: MagnitudeL2 with depthwise filters counted (the default) against Torch-Pruning's
   MagnitudeImportance (which leaves them out), per group, on torchvision's MobileNetV2 and timm's
   EfficientNet/MobileNetV3.

    PYTHONPATH=. python benchmarks/grouped_members.py
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch
import torch.nn as nn

from harness.methods import find_method
from harness.protocol.grouping import PruneConfig, describe_groups
from harness.runners import client_class
from specs.sdk import expand_compact, grouped, member_dim

def _test_module():
    """tests/test_methods_members.py: its grouped net and autograd's group-lasso gradient (one definition)."""
    path = Path(__file__).resolve().parents[1] / "tests" / "test_methods_members.py"
    spec = importlib.util.spec_from_file_location("test_methods_members", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def smeared(described, weights, reg: float) -> dict[str, torch.Tensor]:
    """layout-v1's rule: a member's slice of channel c is the whole hyperplane at ``idx % shape[dim]``."""
    def positions(m, t):
        return torch.as_tensor(m.idxs) % t.shape[member_dim(m, t)]

    def sq_norms(m, t):
        sq = t.pow(2)
        d = member_dim(m, t)
        if sq.dim() > 1:
            sq = sq.sum([i for i in range(sq.dim()) if i != d])
        return sq[positions(m, t)]

    out = {}
    for g in described:
        norms = torch.zeros(g.n_channels)
        for m in g.members:
            if m.kind in ("conv", "linear", "bn") and m.weight:
                norms.index_add_(0, torch.as_tensor(m.root_idxs), sq_norms(m, weights[m.weight]))
        coef = reg / (norms + 1e-9).sqrt()
        for m in g.members:
            if m.kind in ("conv", "linear", "bn") and m.weight:
                t = weights[m.weight]
                d = member_dim(m, t)
                s = out.setdefault(f"{m.weight}@{d}", torch.zeros(t.shape[d]))
                s.index_add_(0, positions(m, t), coef[torch.as_tensor(m.root_idxs)])
    return expand_compact(weights, out)


def max_rel(got: dict, want: dict) -> float:
    a = torch.cat([got.get(k, torch.zeros_like(v)).flatten() for k, v in want.items()])
    b = torch.cat([v.flatten() for v in want.values()])
    keep = b.abs() > 1e-12
    return float(((a - b).abs()[keep] / b.abs()[keep]).max())


def group_lasso_errors() -> None:
    reg, tests = 1e-2, _test_module()
    print("GroupLASSO gradient vs autograd's group-lasso gradient, max elementwise relative error:")
    for groups in (2, 4):
        model, _, _, by_id = tests.grouped_net(groups)
        described = list(by_id.values())
        weights = {k: p.detach().clone() for k, p in model.named_parameters()}
        with client_class("inprocess")(find_method("group_lasso"), {"reg": reg}, seed=0) as client:
            ours = client.regularize(0, 1, described, weights)
        want = tests.group_lasso_truth(model, groups, reg)
        print(f"  groups={groups}: before (column c % width for every group) {max_rel(smeared(described, weights, reg), want):.3f}"
              f" | now {max_rel(ours, want):.1e}   ({sum(grouped(m) for g in described for m in g.members)} grouped member)")


def depthwise_differences() -> None:
    import torch_pruning as tp

    from harness.models import classifier_of, create_model, prune_config_of
    from harness.protocol.grouping import ROOT_TYPES, build_graph
    from harness.protocol.observations import collect

    print("MagnitudeL2 with depthwise filters counted vs Torch-Pruning (left out), max relative difference per group:")
    for name, kwargs in (("torchvision:mobilenet_v2", {"width_mult": 0.5}), ("timm:test_efficientnet", {}),
                         ("timm:mobilenetv3_small_050", {})):
        torch.manual_seed(0)
        model = create_model(name, num_classes=10, image_size=32, **kwargs).eval()
        with torch.no_grad():
            for m in model.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.weight.uniform_(0.2, 2.0)
        example = torch.randn(1, 3, 32, 32)
        config = prune_config_of(model).merged(PruneConfig(ignored_layers=[classifier_of(model)]))
        described = describe_groups(model, example, config)
        with client_class("inprocess")(find_method("magnitude_l2"), {}, seed=0) as client:
            ours = client.score(0, described, collect(["weights"], model, described, []))
        names = {m: n for n, m in model.named_modules()}
        DG = build_graph(model, example, config)
        imp = tp.importance.MagnitudeImportance(p=2)
        diffs = []
        for g in DG.get_all_groups(ignored_layers=config.ignored_layers, root_module_types=ROOT_TYPES):
            ref, gid = imp(g), names[g[0].dep.target.module]
            if ref is not None:
                diffs.append(float(((ours[gid].float() - ref.float()).abs() / ref.abs().clamp_min(1e-12)).max()))
        with_dw = sum(any(m.depthwise for m in g.members) for g in described)
        print(f"  {name}: {with_dw} of {len(described)} groups hold a depthwise conv; max {max(diffs):.1%}, "
              f"median {sorted(diffs)[len(diffs) // 2]:.1%}")


if __name__ == "__main__":
    torch.set_num_threads(1)
    group_lasso_errors()
    depthwise_differences()
