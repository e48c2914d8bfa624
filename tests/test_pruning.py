"""Strategy and speedup search on several small models: achieved >= target, the 10% floor,
nested plans, minimality, and hand-computed plans."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from harness.protocol.grouping import PruneConfig, apply_plan, count_macs_params, describe_groups, layer_channels
from harness.models import classifier_of, create_model
from harness.protocol.pruning import LOCAL_STEPS, Unreachable, make_planner, search_speedup
from specs.messages import Group, Member

MODELS = [("resnet18", 0.125, 16), ("vgg19", 0.125, 16), ("resnet50", 0.0625, 16)]


def config_for(model):
    return PruneConfig(ignored_layers=[classifier_of(model)])


def setup(name, width, size, seed=0):
    torch.manual_seed(seed)
    model = create_model(name, num_classes=10, in_chans=3, image_size=size, width=width).eval()
    example = torch.randn(1, 3, size, size)
    groups = describe_groups(model, example, config_for(model))
    scores = {g.id: torch.rand(g.n_channels, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
              for g in groups}
    return model, example, groups, scores


def prune(model, example, groups, scores, strategy, target, floor=0.1):
    base_macs, _ = count_macs_params(model, example)
    planner = make_planner(groups, scores, {g.id: g.n_channels for g in groups}, strategy, floor, seed=0)
    return planner, base_macs, search_speedup(model, example, config_for, planner, base_macs, base_macs, target)


@pytest.mark.parametrize("name, width, size", MODELS)
@pytest.mark.parametrize("strategy, target", [("protected_global", 2.0), ("protected_global", 4.0),
                                              ("global", 2.0), ("local", 2.0)])
def test_achieved_speedup_reaches_target_and_model_runs(name, width, size, strategy, target):
    model, example, groups, scores = setup(name, width, size)
    _, base_macs, found = prune(model, example, groups, scores, strategy, target)
    macs, params = count_macs_params(found.model, example)  # measured again, independently
    assert macs == found.macs
    assert base_macs / macs >= target
    assert found.model(example).shape == (1, 10)
    assert classifier_of(found.model).out_features == 10  # the classifier is never pruned


@pytest.mark.parametrize("name, width, size", MODELS)
def test_search_is_minimal(name, width, size):
    model, example, groups, scores = setup(name, width, size)
    planner, base_macs, found = prune(model, example, groups, scores, "protected_global", 2.0)
    assert found.t > 0
    one_less = copy.deepcopy(model)
    apply_plan(one_less, example, config_for(one_less), planner.plan(found.t - 1))
    assert base_macs / count_macs_params(one_less, example)[0] < 2.0


@pytest.mark.parametrize("name, width, size", MODELS)
def test_protected_floor_holds_at_8x(name, width, size):
    model, example, groups, scores = setup(name, width, size)
    # adversarial scores: the first group's channels rank below everything else
    scores = {gid: s + (0.0 if i == 0 else 10.0) for i, (gid, s) in enumerate(scores.items())}
    before = layer_channels(model)
    _, base_macs, found = prune(model, example, groups, scores, "protected_global", 8.0)
    after = layer_channels(found.model)
    assert base_macs / found.macs >= 8.0
    for g in groups:
        assert after[g.root] >= math.ceil(0.1 * before[g.root]), g.root
    # and the floor binds: some group sits exactly on it (otherwise the test proves nothing)
    assert any(after[g.root] == math.ceil(0.1 * before[g.root]) for g in groups)


def test_global_without_protection_can_empty_a_group_but_protected_cannot():
    model, example, groups, scores = setup("vgg19", 0.125, 16)
    victim = groups[3].id
    scores = {gid: s + 10.0 for gid, s in scores.items()}
    scores[victim] = scores[victim] - 10.0  # the victim's channels are the least important of all
    n = next(g.n_channels for g in groups if g.id == victim)
    _, _, unprotected = prune(model, example, groups, scores, "global", 2.0)
    _, _, protected = prune(model, example, groups, scores, "protected_global", 2.0)
    assert layer_channels(unprotected.model)[victim] == 1
    assert layer_channels(protected.model)[victim] == math.ceil(0.1 * n)


def test_unreachable_target_is_a_clear_error():
    model, example, groups, scores = setup("resnet18", 0.125, 16)
    with pytest.raises(Unreachable, match=r"unreachable with strategy protected_global: at most \d"):
        prune(model, example, groups, scores, "protected_global", 8.0, floor=0.9)


def _group(gid, n, ch_groups=1):
    member = Member(layer=gid, module_type="Conv2d", kind="conv", dim="out", weight=f"{gid}.weight",
                    idxs=list(range(n)), root_idxs=list(range(n)))
    return Group(id=gid, root=gid, n_channels=n, ch_groups=ch_groups, members=[member])


def test_plans_by_hand():
    a, b = _group("a", 4), _group("b", 10)
    scores = {"a": torch.tensor([0.5, 0.1, 0.9, 0.3], dtype=torch.float64),
              "b": torch.arange(10, dtype=torch.float64) / 10 + 0.05}  # 0.05, 0.15, ..., 0.95
    protected = make_planner([a, b], scores, {"a": 10, "b": 10}, "protected_global", 0.1, seed=0)
    # a may keep only ceil(0.1 * 10) = 1 of its 4 -> cap 3; b cap 9
    assert protected.caps == {"a": 3, "b": 9} and protected.t_max == 12
    # global order: b0 .05, a1 .1, b1 .15, b2 .25, a3 .3, b3 .35, ...
    assert protected.plan(3) == {"a": [1], "b": [0, 1]}
    assert protected.plan(5) == {"a": [1, 3], "b": [0, 1, 2]}
    assert protected.plan(12) == {"a": [0, 1, 3], "b": list(range(9))}  # a keeps its best channel (2)
    local = make_planner([a, b], scores, {"a": 4, "b": 10}, "local", 0.1, seed=0)
    assert local.plan(LOCAL_STEPS // 2) == {"a": [1, 3], "b": [0, 1, 2, 3, 4]}
    # nested: every plan contains the previous one
    for t in range(protected.t_max):
        small, big = protected.plan(t), protected.plan(t + 1)
        assert all(set(small[g]) <= set(big[g]) for g in small)


def test_channel_groups_prune_the_same_slot_in_every_group():
    g = _group("a", 6, ch_groups=2)  # slots: (0,3) (1,4) (2,5)
    scores = {"a": torch.tensor([1.0, 9.0, 5.0, 3.0, 9.0, 5.0], dtype=torch.float64)}  # slot means 2, 9, 5
    planner = make_planner([g], scores, {"a": 6}, "global", 0.1, seed=0)
    assert planner.plan(1) == {"a": [0, 3]}
    assert planner.plan(2) == {"a": [0, 2, 3, 5]}


# --------------------------------------------------------------------------- ties


def _constant(groups):
    return {g.id: torch.ones(g.n_channels, dtype=torch.float64) for g in groups}


def test_equal_scores_are_broken_by_a_seeded_permutation_not_by_group_order():
    groups = [_group(f"g{i}", 32) for i in range(6)]  # cap 28 each (floor 4)
    scores = _constant(groups)
    base = {g.id: 32 for g in groups}
    p0 = make_planner(groups, scores, base, "protected_global", 0.1, seed=0)
    again = make_planner(groups, scores, base, "protected_global", 0.1, seed=0)
    p1 = make_planner(groups, scores, base, "protected_global", 0.1, seed=1)
    half = p0.t_max // 2
    assert p0.plan(half) == again.plan(half)  # the same seed, the same plan
    assert p0.plan(half) != p1.plan(half)     # another seed, another plan
    for planner in (p0, p1):
        removed = {g: len(u) for g, u in planner.plan(half).items()}
        # spread over every group, none stripped to its floor while others are untouched
        # (ties by group order would remove g0 and g1 to the floor, g2 half, and nothing else)
        assert all(0 < n < 28 for n in removed.values()), removed
        assert sum(removed.values()) == half
    ties = p0.ties()
    assert (ties.units, ties.tied, ties.groups, ties.constant_groups) == (192, 192, 6, [g.id for g in groups])


def test_ties_within_a_group_under_local_are_seeded_too():
    g = _group("a", 10)
    scores = {"a": torch.tensor([0.0, 1, 1, 1, 1, 1, 1, 1, 1, 2], dtype=torch.float64)}
    plans = {seed: make_planner([g], scores, {"a": 10}, "local", 0.1, seed=seed).plan(LOCAL_STEPS // 2)["a"]
             for seed in range(4)}
    assert all(p[0] == 0 and 9 not in p and len(p) == 5 for p in plans.values())  # lowest first, the best kept
    assert len({tuple(p) for p in plans.values()}) > 1  # the tied middle channels are drawn by the seed
    ties = make_planner([g], scores, {"a": 10}, "local", 0.1, seed=0).ties()
    assert (ties.tied, ties.units, ties.constant_groups) == (8, 10, [])


def test_distinct_scores_ignore_the_seed():
    a, b = _group("a", 4), _group("b", 10)
    scores = {"a": torch.tensor([0.5, 0.1, 0.9, 0.3], dtype=torch.float64),
              "b": torch.arange(10, dtype=torch.float64) / 10 + 0.05}
    plans = [make_planner([a, b], scores, {"a": 10, "b": 10}, "protected_global", 0.1, seed=s).plan(5)
             for s in (0, 1, 2)]
    assert plans[0] == plans[1] == plans[2]
    assert make_planner([a, b], scores, {"a": 10, "b": 10}, "global", 0.1, seed=0).ties().tied == 0


@pytest.mark.parametrize("name, width, size", MODELS[:2])
def test_constant_scores_on_a_real_model(name, width, size):
    """Constant scores (HRank on linear roots, BNScale without BatchNorm): the architecture is the seed's
    draw, reproducible, and no group is stripped to its floor while another is left untouched."""
    model, example, groups, _ = setup(name, width, size)
    before = layer_channels(model)
    archs = []
    for seed in (0, 0, 1):
        base_macs, _ = count_macs_params(model, example)
        planner = make_planner(groups, _constant(groups), {g.id: g.n_channels for g in groups}, "protected_global",
                               0.1, seed=seed)
        found = search_speedup(model, example, config_for, planner, base_macs, base_macs, 2.0)
        archs.append(layer_channels(found.model))
    assert archs[0] == archs[1] and archs[0] != archs[2]
    for arch in archs:
        roots = [g.root for g in groups]
        at_floor = [r for r in roots if arch[r] == math.ceil(0.1 * before[r])]
        untouched = [r for r in roots if arch[r] == before[r]]
        assert not (at_floor and untouched), (at_floor, untouched)


def test_constant_scores_are_diagnosed_warned_and_flagged(make_method, tiny_track_file, tmp_path):
    from typer.testing import CliRunner

    from harness.cli import app
    from harness.store import Store
    from harness.views import leaderboard as lb
    flat = make_method("from specs.sdk import ImportanceMethod\nimport torch\n"
                       "class Method(ImportanceMethod):\n    def score_group(self, g, o):\n"
                       "        return torch.ones(g.n_channels)\n", id="flat")
    args = ["--track", str(tiny_track_file), "--speedup", "2", "--out", str(tmp_path), "--no-models",
            "--runner", "inprocess"]
    res = CliRunner().invoke(app, ["evaluate", "--method", str(flat.path), *args])
    assert res.exit_code == 0, res.output
    assert "warning: flat 2x seed 0: the scores were constant in every group" in res.output
    res = CliRunner().invoke(app, ["evaluate", "--method", "magnitude_l1", *args])
    assert res.exit_code == 0 and "warning" not in res.output, res.output
    records = {r.method.id: r for r in Store.load(tmp_path).records.values()}
    flat_d, l1_d = records["flat"].diagnostics, records["magnitude_l1"].diagnostics
    assert flat_d.all_constant and flat_d.tied_fraction == 1.0 and len(flat_d.constant_groups) == flat_d.groups > 1
    assert not l1_d.all_constant and l1_d.constant_groups == [] and l1_d.tied_fraction < 0.05
    md = lb.markdown(lb.rows(list(records.values())))
    assert f"flat {lb.FLAG}" in md and f"magnitude_l1 {lb.FLAG}" not in md and lb.FLAG_LEGEND in md
