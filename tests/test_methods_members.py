"""The SDK's member helpers on grouped and depthwise convs, against independent references.

- ``groups=2`` and ``groups=4`` consumers: a channel's slice is the block of its own conv group
  (``member_rows`` equals the hand-cut block), the magnitude methods' scores equal hand-computed sums,
  and GroupLASSO's gradient (through the harness's regularizer path, both runners) equals autograd's
  gradient of the group-lasso penalty written slice by slice. Torch-Pruning's repeated-column rule
  (what ``idxs % width`` did before) is measurably wrong on the same layer.
- Depthwise convs: by default a channel's depthwise filter counts in magnitude-style sums (hand
  computation); ``depthwise: false`` reproduces Torch-Pruning 1.6.1, which leaves them out.
- The harness groups a grouped conv's channels in ``ch_groups`` slots, so a plan keeps every conv
  group the same width, and the pruned model computes what the masked model computes.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn as nn
import torch_pruning as tp

from harness.methods import find_method
from harness.protocol.grouping import PruneConfig, apply_plan, build_graph, describe_groups, ROOT_TYPES
from harness.protocol.observations import collect
from harness.protocol.sparsify import make_grad_hook
from harness.runners import client_class
from specs.sdk import channel_sq_norms, grouped, member_coefficients, member_positions, member_rows

C = 8  # channels of every layer


class GroupedNet(nn.Module):
    """conv0 (3 -> 8) -> bn0 -> conv1 (8 -> 8, ``groups``) -> bn1 -> pool -> fc. Groups: conv0 {conv0
    out, bn0, conv1 in (grouped)} and conv1 {conv1 out, bn1, fc in}."""

    def __init__(self, groups: int):
        super().__init__()
        self.conv0 = nn.Conv2d(3, C, 3, padding=1, bias=False)
        self.bn0 = nn.BatchNorm2d(C)
        self.conv1 = nn.Conv2d(C, C, 3, padding=1, groups=groups, bias=False)
        self.bn1 = nn.BatchNorm2d(C)
        self.fc = nn.Linear(C, 3)

    def forward(self, x):
        x = torch.relu(self.bn0(self.conv0(x)))
        x = torch.relu(self.bn1(self.conv1(x)))
        return self.fc(x.mean((2, 3)))


def grouped_net(groups: int):
    torch.manual_seed(groups)
    model = GroupedNet(groups).eval()
    with torch.no_grad():
        for bn in (model.bn0, model.bn1):
            bn.weight.uniform_(0.2, 2.0)
    example = torch.randn(1, 3, 6, 6)
    config = PruneConfig(ignored_layers=[model.fc])
    return model, example, config, {g.id: g for g in describe_groups(model, example, config)}


def slices(model: GroupedNet, groups: int) -> dict[str, list[list[torch.Tensor]]]:
    """By hand: per group and root channel c, every weight removed with c (conv1's input c: the rows
    of c's own conv group only, at column c % (C / groups))."""
    w, rows = C // groups, C // groups
    conv0, conv1 = [], []
    for c in range(C):
        j, col = divmod(c, w)
        conv0.append([model.conv0.weight[c].flatten(), model.bn0.weight[c:c + 1],
                      model.conv1.weight[j * rows:(j + 1) * rows, col].flatten()])
        conv1.append([model.conv1.weight[c].flatten(), model.bn1.weight[c:c + 1], model.fc.weight[:, c]])
    return {"conv0": conv0, "conv1": conv1}


@pytest.mark.parametrize("groups", [2, 4])
def test_a_grouped_consumers_rows_are_its_own_groups_block(groups):
    model, _, _, described = grouped_net(groups)
    member = next(m for m in described["conv0"].members if m.layer == "conv1")
    assert grouped(member) and member.dim == "in" and member.conv_groups == groups
    w = model.conv1.weight.detach()
    hand = torch.stack([s[2] for s in slices(model, groups)["conv0"]]).detach()
    assert torch.equal(member_rows(member, w), hand)
    torch.testing.assert_close(channel_sq_norms(member, w), hand.pow(2).sum(1))
    # the adjoint: every weight of channel c's block holds c's value, nothing else is touched
    values = torch.arange(1.0, C + 1)
    coef = member_coefficients(member, w, values)
    assert torch.equal(member_rows(member, coef), values[:, None].expand_as(hand))
    assert torch.equal(coef.sum(), values.sum() * hand.shape[1])
    with pytest.raises(ValueError, match="not hyperplanes"):
        member_positions(member, w)
    # Torch-Pruning's rule (the whole column c % w for every group) smears c and c + w together
    smeared = w.transpose(0, 1).flatten(1).repeat(groups, 1)[torch.as_tensor(member.idxs)]
    assert not torch.allclose(smeared.pow(2).sum(1), hand.pow(2).sum(1))


def group_lasso_truth(model: GroupedNet, groups: int, reg: float) -> dict[str, torch.Tensor]:
    """Autograd's gradient of reg * sum_c ||theta_c|| (theta_c: every slice removed with channel c)."""
    params = {k: p.detach().clone().requires_grad_(True) for k, p in model.named_parameters()}
    penalty = 0.0
    for channels in slices(_bind(params), groups).values():
        for parts in channels:
            penalty = penalty + (torch.cat(parts).pow(2).sum() + 1e-9).sqrt()
    (reg * penalty).backward()
    return {k: p.grad if p.grad is not None else torch.zeros_like(p) for k, p in params.items()}


def _bind(params: dict[str, torch.Tensor]):
    """An object with ``.conv0.weight`` ... being the tensors in ``params`` (slices then carry their graph)."""
    from types import SimpleNamespace

    return SimpleNamespace(**{name: SimpleNamespace(weight=params[f"{name}.weight"])
                              for name in ("conv0", "bn0", "conv1", "bn1", "fc")})


@pytest.mark.parametrize("runner", ["inprocess", "subprocess"])
@pytest.mark.parametrize("groups", [2, 4])
def test_group_lasso_gradient_equals_autograd_on_grouped_convs(groups, runner):
    model, _, _, described = grouped_net(groups)
    reg = 1e-2
    truth = group_lasso_truth(model, groups, reg)
    with client_class(runner)(find_method("group_lasso"), {"reg": reg}, seed=0) as client:
        link = client.regularizer_link(list(described.values()))
        hook = make_grad_hook(model, list(described.values()), link)
        for p in model.parameters():
            p.grad = torch.zeros_like(p)
        hook(0, 10)
    for k, p in model.named_parameters():
        torch.testing.assert_close(p.grad, truth[k], rtol=1e-5, atol=1e-9, msg=f"groups={groups} {k}")
    assert truth["conv1.weight"].abs().sum() > 0


@pytest.mark.parametrize("method", ["magnitude_l1", "magnitude_l2"])
@pytest.mark.parametrize("groups", [2, 4])
def test_magnitude_equals_hand_sums_on_grouped_convs(groups, method):
    model, _, _, described = grouped_net(groups)
    p = 1 if method == "magnitude_l1" else 2
    source = find_method(method)
    with client_class("inprocess")(source, {"normalizer": "none"}, seed=0) as client:
        scores = client.score(0, list(described.values()), collect(["weights"], model, list(described.values()), []))
    with torch.no_grad():
        for gid, channels in slices(model, groups).items():
            hand = torch.stack([torch.stack([t.abs().pow(p).sum() for t in parts]).mean() for parts in channels])
            torch.testing.assert_close(scores[gid].float(), hand, rtol=1e-5, atol=1e-7, msg=gid)
    # Torch-Pruning scores the grouped consumer's column for every group: different on conv0's group
    ref = tp_scores(model, *grouped_net(groups)[1:3], tp.importance.MagnitudeImportance(p=p, normalizer=None))
    assert not torch.allclose(ref["conv0"].float(), scores["conv0"].float(), rtol=1e-3)
    torch.testing.assert_close(ref["conv1"].float(), scores["conv1"].float(), rtol=1e-5, atol=1e-7)


def tp_scores(model, example, config, importance) -> dict[str, torch.Tensor]:
    names = {m: n for n, m in model.named_modules()}
    DG = build_graph(model, example, config)
    return {names[g[0].dep.target.module]: importance(g)
            for g in DG.get_all_groups(ignored_layers=config.ignored_layers, root_module_types=ROOT_TYPES)}


@pytest.mark.parametrize("groups", [2, 4])
def test_grouped_channels_are_pruned_in_slots_and_equal_the_masked_model(groups):
    model, example, config, described = grouped_net(groups)
    assert described["conv0"].ch_groups == described["conv1"].ch_groups == groups
    width = C // groups
    plan = {"conv0": [u + k * width for u in (0,) for k in range(groups)]}  # slot 0 of every conv group
    pruned = copy.deepcopy(model)
    apply_plan(pruned, example, config, plan)
    assert (pruned.conv1.in_channels, pruned.conv1.weight.shape[1]) == (C - groups, width - 1)
    masked = copy.deepcopy(model)
    with torch.no_grad():
        masked.conv0.weight[plan["conv0"]] = 0
        masked.bn0.weight[plan["conv0"]] = 0
        masked.bn0.bias[plan["conv0"]] = 0
    x = torch.randn(2, 3, 6, 6)
    torch.testing.assert_close(pruned(x), masked(x), rtol=1e-5, atol=1e-6)


# --------------------------------------------------------------------------- depthwise members


class DepthwiseNet(nn.Module):
    """conv0 (3 -> 8) -> bn0 -> depthwise 3x3 -> bn1 -> 1x1 conv (8 -> 5) -> pool -> fc: one group
    {conv0 out, bn0, dw (its filters), bn1, pw in}."""

    def __init__(self):
        super().__init__()
        self.conv0 = nn.Conv2d(3, C, 1, bias=False)
        self.bn0 = nn.BatchNorm2d(C)
        self.dw = nn.Conv2d(C, C, 3, padding=1, groups=C, bias=False)
        self.bn1 = nn.BatchNorm2d(C)
        self.pw = nn.Conv2d(C, 5, 1, bias=False)
        self.fc = nn.Linear(5, 3)

    def forward(self, x):
        x = torch.relu(self.bn1(self.dw(torch.relu(self.bn0(self.conv0(x))))))
        return self.fc(self.pw(x).mean((2, 3)))


def depthwise_net():
    torch.manual_seed(0)
    model = DepthwiseNet().eval()
    with torch.no_grad():
        model.dw.weight.mul_(10)  # depthwise filters that matter: counting them changes the ranking
        for bn in (model.bn0, model.bn1):
            bn.weight.uniform_(0.2, 2.0)
    example = torch.randn(1, 3, 6, 6)
    config = PruneConfig(ignored_layers=[model.pw, model.fc])
    return model, example, config, describe_groups(model, example, config)


@pytest.mark.parametrize("method", ["magnitude_l1", "magnitude_l2", "lamp", "taylor", "obd_hessian", "fpgm"])
def test_depthwise_members_count_unless_told_otherwise(method):
    model, example, config, groups = depthwise_net()
    (group,) = groups
    dw = next(m for m in group.members if m.layer == "dw")
    assert dw.depthwise and dw.dim == "out" and dw.conv_groups == C
    source = find_method(method)
    x, y = torch.randn(4, 3, 6, 6), torch.randint(0, 3, (4,))
    obs = collect(source.manifest.observations, model, groups, [(x, y)],
                  lambda m, b: nn.functional.cross_entropy(m(b[0]), b[1]))

    def score(hp):
        with client_class("inprocess")(source, hp, seed=0) as client:
            return client.score(0, groups, obs)[group.id].float()

    counted, left_out = score({}), score({"depthwise": False})
    assert not torch.allclose(counted, left_out, rtol=1e-3)
    if method in ("magnitude_l1", "magnitude_l2"):  # by hand: mean over the members' |w|^p sums
        p = 1 if method == "magnitude_l1" else 2
        with torch.no_grad():
            parts = [model.conv0.weight.abs().pow(p).flatten(1).sum(1), model.bn0.weight.abs().pow(p),
                     model.bn1.weight.abs().pow(p), model.pw.weight.abs().pow(p).transpose(0, 1).flatten(1).sum(1)]
            dw_part = model.dw.weight.abs().pow(p).flatten(1).sum(1)
        for got, members in ((counted, parts + [dw_part]), (left_out, parts)):
            s = torch.stack(members).mean(0)
            torch.testing.assert_close(got, s / s.mean(), rtol=1e-5, atol=1e-7)
    # depthwise: false is Torch-Pruning 1.6.1 (whose importances never look at the depthwise handler)
    reference = {
        "magnitude_l1": tp.importance.MagnitudeImportance(p=1), "magnitude_l2": tp.importance.MagnitudeImportance(p=2),
        "lamp": tp.importance.LAMPImportance(), "fpgm": tp.importance.FPGMImportance(),
    }.get(method)
    if reference is not None:
        torch.testing.assert_close(left_out, tp_scores(model, example, config, reference)[group.id].float(),
                                   rtol=1e-5, atol=1e-7)


def test_lamp_sums_from_the_top():
    """LAMP's normalizer, score / (sum of the scores not smaller), against float64 on a 4096-channel group
    of similar scores: summing the larger scores keeps every digit; Torch-Pruning's ``total - cumsum of the
    smaller`` subtracts nearly equal numbers for the top scores (0.3% off here)."""
    from specs.sdk import normalize

    scores = torch.rand(4096, generator=torch.Generator().manual_seed(0)) * 0.5 + 0.5
    exact = torch.empty(len(scores), dtype=torch.float64)
    values, order = scores.double().sort(descending=True)
    exact[order] = values / values.cumsum(0)
    ascending, idx = scores.sort()
    below = torch.cat([torch.zeros(1), ascending.cumsum(0)[:-1]])
    subtracted = torch.empty(len(scores))
    subtracted[idx] = ascending / (scores.sum() - below)  # Torch-Pruning 1.6.1's _lamp

    def worst(x):
        return float(((x.double() - exact).abs() / exact).max())

    assert worst(normalize(scores, "lamp")) < 1e-6 and worst(subtracted) > 1e-3


CASES = [  # (member fields, tensor shape): conv/linear outputs and inputs, transposed, depthwise, bias
    (dict(kind="conv", dim="out"), (8, 6, 3, 3)), (dict(kind="conv", dim="in"), (8, 6, 3, 3)),
    (dict(kind="linear", dim="out"), (8, 6)), (dict(kind="linear", dim="in"), (6, 8)),
    (dict(kind="conv", dim="out", transposed=True), (6, 8, 3, 3)),
    (dict(kind="conv", dim="in", transposed=True), (8, 6, 3, 3)),
    (dict(kind="conv", dim="out", depthwise=True, conv_groups=8), (8, 1, 3, 3)), (dict(kind="bn", dim="out"), (8,)),
]


@pytest.mark.parametrize("fields,shape", CASES)
@pytest.mark.parametrize("idxs", [[0, 1, 2, 3, 4, 5], [2, 3, 4], [4], [0, 2, 5], [5, 1, 3], [], [-2, -1], [-1, 0]])
def test_rows_of_consecutive_indices_are_a_slice_with_the_gathered_rows_bits(fields, shape, idxs):
    """A run of consecutive indices is sliced, not gathered: the same rows, contiguous like the gathered
    copy, so a method's sums over them are the same to the bit (the committed records stay valid)."""
    from specs.messages import Member
    from specs.tensors import member_dim
    w = torch.randn(shape, generator=torch.Generator().manual_seed(0))
    member = Member(layer="l", module_type="X", weight="l.weight", idxs=idxs, root_idxs=idxs, **fields)
    rows = w.movedim(member_dim(member, w), 0) if w.dim() > 1 else w.unsqueeze(1)
    gathered = rows[torch.as_tensor(idxs, dtype=torch.long)].flatten(1)
    got = member_rows(member, w)
    assert got.is_contiguous() and gathered.is_contiguous()
    assert torch.equal(got, gathered) and got.shape == gathered.shape
    for p in (1, 2):
        assert torch.equal(got.abs().pow(p).sum(1), gathered.abs().pow(p).sum(1))
    got.mul_(0)  # (review) the rows are the method's own, as a gathered copy is: the weights stay as they were
    assert torch.equal(w, torch.randn(shape, generator=torch.Generator().manual_seed(0)))
