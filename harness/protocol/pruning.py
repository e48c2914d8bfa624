"""Pruning strategy and speedup search (harness-owned, identical for every method).

Given validated scores, a strategy defines a family of nested plans indexed by
an integer ``t`` (more channels removed as ``t`` grows):

- ``global``: rank all channels of all groups together, remove the ``t`` lowest;
  every group keeps at least one channel.
- ``protected_global``: as ``global``, but no group ever keeps fewer than
  ``ceil(min_channel_fraction * base channels)`` channels. This floor is enforced
  here, not through Torch-Pruning's ``max_pruning_ratio`` (a soft limit).
- ``local``: every group removes the same fraction ``t / LOCAL_STEPS`` of its
  channels (lowest scores first).

Equal scores are ordered by a permutation of all channels seeded with the run seed
(and the round), never by group, layer or channel order: a method whose scores tie
(e.g. constant scores) loses channels spread at random over the model, not the first
groups stripped to their floor. :meth:`Planner.diagnostics` says how many scores tied.

The search finds the smallest ``t`` whose *physically pruned* model reaches the
target MACs speedup, measured with Torch-Pruning's op counter on a pruned copy.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from collections import defaultdict
from typing import Callable, Optional

import torch
import torch.nn as nn
import timm  # noqa: F401  (before Torch-Pruning: see harness.protocol.grouping)
from torch_pruning.pruner.algorithms.base_pruner import BasePruner

from harness.errors import HarnessError
from harness.protocol.grouping import (PruneConfig, _count_on_meta, apply_plan, build_graph, count_layer_macs,
                                       count_macs_params, describe_groups, meta_copy, meta_count_exact, to_meta)
from specs.messages import Group
from specs.track import Strategy

LOCAL_STEPS = 1000
#: Torch-Pruning's rounding (it does not use ``self``): units to remove -> units to remove, keeping a multiple
_round_to = BasePruner._round_to
#: offset of the tie-breaking generator's seed (keeps it apart from the other seeded streams of a run)
TIE_SEED = 20_000


class Unreachable(HarnessError):
    """The strategy cannot reach the speedup target (e.g. the 10% floor forbids it)."""


@dataclass
class Ties:
    """How much a round's scores tie, as the planner ranks them (all groups together for the global
    strategies, each group alone for ``local``): ``tied`` of ``units`` channels have a score equal to another
    channel's; ``constant_groups`` (of ``groups`` with two or more channels) have one score for all."""

    units: int
    tied: int
    groups: int
    constant_groups: list[str]


@dataclass
class Planner:
    """Nested plans for one round. ``plan(t)`` maps group id -> root channels to remove."""

    groups: list[Group]
    unit_scores: dict[str, torch.Tensor]  # per group: one score per unit (channel, or channel slot across ch_groups)
    caps: dict[str, int]                   # per group: max units removable this round
    strategy: Strategy
    tie_break: dict[str, torch.Tensor]     # per group: each unit's position in a seeded permutation of all units
    round_to: int = 1                      # a pruned group keeps a multiple of this many units (see make_planner)

    @property
    def t_max(self) -> int:
        return LOCAL_STEPS if self.strategy == "local" else sum(self.caps.values())

    def _sorted_units(self, gid: str) -> list[int]:
        """The units of group ``gid``, lowest score first, equal scores in the seeded tie-break order
        (sorted once per group: every plan step reads the same order)."""
        cache = self.__dict__.setdefault("_sorted", {})
        if gid not in cache:
            s, tb = self.unit_scores[gid], self.tie_break[gid]
            by_tie = torch.argsort(tb)
            cache[gid] = by_tie[torch.sort(s[by_tie], stable=True).indices].tolist()
        return cache[gid]

    def _order(self) -> list[tuple[str, int]]:
        if not hasattr(self, "_global_order"):
            keys = []
            for g in self.groups:
                s, tb = self.unit_scores[g.id].tolist(), self.tie_break[g.id].tolist()
                keys.extend((s[u], tb[u], g.id, u) for u in self._sorted_units(g.id)[: self.caps[g.id]])
            keys.sort()  # score, then the seeded permutation (unique): never group or channel order
            self._global_order = [(k[2], k[3]) for k in keys]
        return self._global_order

    def units(self, t: int) -> dict[str, list[int]]:
        """Units to remove per group for step ``t``: the ``k`` lowest of each group, ``k`` then rounded up
        so that the group keeps a multiple of ``round_to`` units (never more than its cap)."""
        if self.strategy == "local":
            counts = {g.id: min(self.caps[g.id], math.floor(t / LOCAL_STEPS * len(self.unit_scores[g.id])))
                      for g in self.groups}
        else:
            counts = {g.id: 0 for g in self.groups}
            for gid, _ in self._order()[:t]:
                counts[gid] += 1
        return {gid: self._sorted_units(gid)[: self._rounded(gid, k)] for gid, k in counts.items()}

    def _rounded(self, gid: str, k: int) -> int:
        """``k`` units removed from group ``gid``, rounded as Torch-Pruning's pruners round them
        (``BasePruner._round_to``: the kept count down to a multiple of ``round_to``), within the cap."""
        if self.round_to == 1 or k == 0:
            return k
        n = len(self.unit_scores[gid])
        return min(self.caps[gid], _round_to(None, k, n, self.round_to))

    def plan(self, t: int) -> dict[str, list[int]]:
        """Root channel indices to remove per group for step ``t`` (units expanded over ch_groups)."""
        units = self.units(t)
        out = {}
        for g in self.groups:
            size = g.n_channels // g.ch_groups
            out[g.id] = sorted(u + k * size for u in units[g.id] for k in range(g.ch_groups))
        return out

    def ties(self) -> Ties:
        """How many of this round's unit scores tie (see :class:`Ties`)."""
        scored = [g for g in self.groups if len(self.unit_scores[g.id])]
        constant = [g.id for g in scored if len(self.unit_scores[g.id]) > 1
                    and bool((self.unit_scores[g.id] == self.unit_scores[g.id][0]).all())]
        pools = [self.unit_scores[g.id] for g in scored]
        if self.strategy != "local" and pools:
            pools = [torch.cat([p.to(torch.float64) for p in pools])]
        tied = 0
        for p in pools:
            _, inverse, counts = torch.unique(p, return_inverse=True, return_counts=True)
            tied += int((counts[inverse] > 1).sum())
        return Ties(units=sum(len(p) for p in pools), tied=tied,
                    groups=sum(len(self.unit_scores[g.id]) > 1 for g in scored), constant_groups=constant)


def make_planner(groups: list[Group], scores: dict[str, torch.Tensor], base_channels: dict[str, int],
                 strategy: Strategy, min_fraction: float, seed: int, round_: int = 0, round_to: int = 1) -> Planner:
    """``base_channels``: root channels of each group in the unpruned base model (for the floor);
    ``seed`` (the run seed) and ``round_`` seed the permutation that orders equal scores.

    ``round_to`` (the track's ``pruning.round_to``): every group that loses units keeps a multiple of
    ``round_to`` units. A unit is a channel, or a slot across a group's ``ch_groups``: for attention a
    head dim (every head keeps the same dims, so heads x head_dim is a multiple too), for grouped convs
    a slot of every conv group. The floor is rounded up to a multiple (a group smaller than that is
    never pruned), so the floor still holds."""
    unit_scores, caps = {}, {}
    for g in groups:
        if g.n_channels % g.ch_groups:
            raise HarnessError(f"group {g.id}: {g.n_channels} channels do not split into {g.ch_groups} groups")
        s = scores[g.id]
        # channels that share a slot across channel groups are removed together: average their scores
        unit_scores[g.id] = s.view(g.ch_groups, -1).mean(0) if g.ch_groups > 1 else s
        units_now = g.n_channels // g.ch_groups
        base_units = base_channels.get(g.id, g.n_channels) // g.ch_groups
        keep = max(1, math.ceil(min_fraction * base_units)) if strategy == "protected_global" else 1
        keep = math.ceil(keep / round_to) * round_to
        caps[g.id] = max(0, units_now - keep)
    sizes = [len(unit_scores[g.id]) for g in groups]
    gen = torch.Generator().manual_seed(TIE_SEED + 64 * int(seed) + int(round_))
    perm = torch.randperm(sum(sizes), generator=gen)
    tie_break = dict(zip((g.id for g in groups), torch.split(perm, sizes)))
    return Planner(groups, unit_scores, caps, strategy, tie_break, round_to)


@dataclass
class SearchResult:
    model: nn.Module
    t: int
    macs: float
    params: int
    evaluations: int


class ProbeMismatch(RuntimeError):
    """A plan step measured other MACs on the model than on its probe (a weightless copy traced and counted
    on meta tensors): the model's forward takes another path on meta tensors, unseen by the checks. Not a
    :class:`~harness.errors.HarnessError` (bad input): :func:`~harness.protocol.run.evaluate` records the
    run as failed and a sweep goes on."""


def search_speedup(model: nn.Module, example_inputs, config_for: Callable[[nn.Module], PruneConfig],
                   planner: Planner, base_macs: float, current_macs: float, target: float,
                   first: Optional[int] = None, in_place: bool = False, graph=None,
                   meta: Optional[bool] = None) -> SearchResult:
    """Smallest plan step whose physically pruned copy reaches ``base_macs / macs >= target``.

    ``config_for(m)`` builds the prune config of a model (a copy has new module objects).
    Every probe prunes a copy (:func:`probe_macs`) and counts its MACs; probes are placed
    by interpolating log-speedup between the bracket ends, with a bisection step whenever
    interpolation fails to halve the bracket, so the exact minimum is found in a handful of probes.
    ``first`` is where to probe first (e.g. :func:`predicted_step`); by default a square-law guess.
    The step found is then applied to a copy of ``model`` (``in_place``: to ``model`` itself, through
    ``graph``, its dependency graph, when given) and measured again (:func:`materialize`).

    ``meta``: whether ``model``'s count on meta tensors equals Torch-Pruning's
    (:func:`~harness.protocol.grouping.meta_count_exact`; None: checked here). Then probes are pruned copies
    without weights, counted on meta tensors, as long as the first one's graph (traced on meta tensors) has
    ``planner``'s groups; else every probe is a real copy. A probe that still disagrees with the model
    raises :class:`ProbeMismatch`.
    """
    if meta is None:
        meta = meta_count_exact(model, example_inputs)[3]
    cache: dict[int, Optional[float]] = {}  # plan step -> probed MACs
    weightless = [meta]  # (cleared when a meta copy's groups differ from the model's)

    def speedup(t: int) -> float:
        if t not in cache:
            groups = planner.groups if len(cache) == 0 else None  # (checked on the first probe)
            counted = probe_macs(model, example_inputs, config_for, planner.plan(t), weightless[0], groups)
            if counted is None:
                weightless[0] = False
                counted = probe_macs(model, example_inputs, config_for, planner.plan(t))
            cache[t] = counted[0]
        return base_macs / cache[t]

    def done(t: int) -> SearchResult:
        return materialize(model, example_inputs, config_for, planner.plan(t), t, cache[t], len(cache),
                           in_place, graph, meta)

    goal = target * (1 - 1e-9)
    if base_macs / current_macs >= goal:
        cache[0] = None  # nothing to remove, nothing probed
        return done(0)
    return done(_smallest_step(speedup, goal, target, base_macs / current_macs, planner, first))


def _smallest_step(speedup: Callable[[int], float], goal: float, target: float, s_lo: float, planner: Planner,
                   first: Optional[int]) -> int:
    """For :func:`search_speedup`: the smallest plan step ``t`` with ``speedup(t) >= goal`` (``speedup`` grows
    with ``t``; step 0, the model as it is, gives ``s_lo < goal``), or :class:`Unreachable`. Probes are placed
    by interpolating log-speedup between the bracket ends, with a bisection step whenever interpolation fails
    to halve the bracket; ``first``: the first probe (default: a square-law guess)."""
    lo = 0
    if first is None:  # MACs of conv nets shrink roughly with the square of the channels kept
        first = round(planner.t_max * (1 - (s_lo / target) ** 0.5))
    first = min(planner.t_max, max(1, first))
    if speedup(first) >= goal:
        hi = first
    else:
        lo, s_lo = first, speedup(first)
        hi = planner.t_max
        if speedup(hi) < goal:
            raise Unreachable(f"speedup {target:g}x is unreachable with strategy {planner.strategy}: "
                              f"at most {speedup(hi):.2f}x")
    bisect = False
    while hi - lo > 1:
        if bisect:
            mid = (lo + hi) // 2
        else:
            s_hi = speedup(hi)
            frac = (math.log(goal) - math.log(s_lo)) / max(1e-12, math.log(s_hi) - math.log(s_lo))
            mid = min(hi - 1, max(lo + 1, round(lo + frac * (hi - lo))))
        width = hi - lo
        if speedup(mid) >= goal:
            hi = mid
        else:
            lo, s_lo = mid, speedup(mid)
        bisect = (hi - lo) > width / 2
    return hi


def probe_macs(model: nn.Module, example_inputs, config_for: Callable[[nn.Module], PruneConfig],
               plan: dict[str, list[int]], meta: bool = False,
               groups: Optional[list[Group]] = None) -> Optional[tuple[float, int]]:
    """MACs and parameters of ``model`` pruned by ``plan``, measured on a physically pruned copy with
    Torch-Pruning's counter. ``meta`` (where the model's meta count is exact): a copy without weights
    (:func:`~harness.protocol.grouping.meta_copy`: the same shapes, so the same counts, at a fraction of a
    deep copy and a traced forward) counted on meta tensors; a model that cannot be pruned or run on meta
    tensors is copied whole. ``groups`` (``model``'s): None is returned when the copy's graph, traced on
    meta tensors, has other groups (the forward takes another path on meta tensors)."""
    if meta:
        try:
            shadow, inputs = meta_copy(model), to_meta(example_inputs)
            config = config_for(shadow)
            shadow_graph = build_graph(shadow, inputs, config)
            if groups is not None and describe_groups(shadow, inputs, config, shadow_graph) != groups:
                return None
            apply_plan(shadow, inputs, config, plan, shadow_graph)
            counted = _count_on_meta(shadow, example_inputs, own=True)
        except Exception:  # e.g. a prune fixup that needs data
            counted = None
        if counted is not None:
            return float(counted[0]), int(counted[1])
    shadow = copy.deepcopy(model)
    apply_plan(shadow, example_inputs, config_for(shadow), plan)
    return count_macs_params(shadow, example_inputs)


def max_speedup(model: nn.Module, example_inputs, config_for: Callable[[nn.Module], PruneConfig],
                strategy: Strategy, min_fraction: float, round_to: int = 1) -> float:
    """The largest MACs speedup the prune stage can reach on ``model`` (its architecture: a freshly built one
    gives its trained base's answer): every group at its floor, the plan of the last step of a planner with
    the track's strategy, floor and rounding, which removes the same number of channels from each group
    whatever the scores. What :func:`search_speedup` reports as "at most" when a target is unreachable."""
    groups = describe_groups(model, example_inputs, config_for(model))
    flat = {g.id: torch.zeros(g.n_channels) for g in groups}
    planner = make_planner(groups, flat, {}, strategy, min_fraction, seed=0, round_to=round_to)
    macs, _, _, meta = meta_count_exact(model, example_inputs)
    floor = probe_macs(model, example_inputs, config_for, planner.plan(planner.t_max), meta, groups) if meta else None
    if floor is None:
        floor = probe_macs(model, example_inputs, config_for, planner.plan(planner.t_max))
    return macs / floor[0]


def materialize(model: nn.Module, example_inputs, config_for: Callable[[nn.Module], PruneConfig],
                plan: dict[str, list[int]], t: int, probed: Optional[float], evaluations: int,
                in_place: bool = False, graph=None, meta: bool = False) -> SearchResult:
    """Plan step ``t`` applied to ``model`` (``in_place``, through ``graph`` when given) or to a deep copy,
    measured with the counter (``meta``: on meta tensors, see
    :func:`~harness.protocol.grouping.count_layer_macs`). It must measure the MACs its probe did
    (``probed``; None: not probed): the search's guarantee (target reached at the smallest step) rests on the
    probes; else :class:`ProbeMismatch`."""
    pruned = model if in_place else copy.deepcopy(model)
    apply_plan(pruned, example_inputs, config_for(pruned), plan, graph if in_place else None)
    macs, params = count_macs_params(pruned, example_inputs, meta)
    if probed is not None and macs != probed:
        raise ProbeMismatch(f"plan step {t} measured {macs:.0f} MACs on the model and {probed:.0f} on its "
                            f"{'weightless ' if meta else ''}probe")
    return SearchResult(pruned, t, macs, params, evaluations)


# --------------------------------------------------------------------------- progressive pruning


def macs_predictor(model: nn.Module, layer_macs: dict[str, float], total: float,
                   groups: list[Group]) -> Callable[[dict[str, list[int]]], float]:
    """``predict(plan) -> MACs`` of ``model`` pruned by ``plan``, from its per-layer counts
    (:func:`~harness.protocol.grouping.count_layer_macs`), without pruning anything: a conv or linear
    layer's count scales with its kept input x output channels (a depthwise conv's with its kept
    channels), a normalization layer's with its kept channels. Layers without parameters (activations,
    pooling) are not in any group; their counts scale with the normalization layers' kept channels
    (weighted by those layers' counts: activations follow normalizations). Within ~2% of the counter.
    """
    modules = dict(model.named_modules())
    shapes: dict[str, tuple[str, int, int]] = {}
    for name, m in modules.items():
        if isinstance(m, nn.modules.conv._ConvNd):
            depthwise = m.groups > 1 and m.groups == m.in_channels
            shapes[name] = ("depthwise" if depthwise else "conv", m.in_channels, m.out_channels)
        elif isinstance(m, nn.Linear):
            shapes[name] = ("conv", m.in_features, m.out_features)
        elif isinstance(m, (nn.modules.batchnorm._BatchNorm, nn.LayerNorm, nn.GroupNorm)):
            n = m.num_features if hasattr(m, "num_features") else \
                m.num_channels if hasattr(m, "num_channels") else int(m.normalized_shape[-1])
            shapes[name] = ("norm", n, n)
    # per group: the (layer, dim) its members touch, and how many of each one's entries every root channel
    # removes (one row per member): a plan's removals are then one column sum per group
    members = {}
    for g in groups:
        kept = [m for m in g.members if m.layer in shapes and m.layer in layer_macs]
        if kept:
            counts = torch.stack([torch.bincount(torch.tensor(m.root_idxs, dtype=torch.long),
                                                 minlength=g.n_channels)[:g.n_channels] for m in kept])
            members[g.id] = ([(m.layer, m.dim) for m in kept], counts)
    free = sum(v for n, v in layer_macs.items() if n in modules and n not in shapes and
               not any(True for _ in modules[n].children()) and not any(True for _ in modules[n].parameters()))
    norms = {n: v for n, v in layer_macs.items() if shapes.get(n, ("",))[0] == "norm"}
    norm_total = sum(norms.values())

    def predict(plan: dict[str, list[int]]) -> float:
        removed = {"in": defaultdict(int), "out": defaultdict(int)}
        for gid, idxs in plan.items():
            if not idxs or gid not in members:
                continue
            touched, counts = members[gid]
            for (layer, dim), n in zip(touched, counts[:, idxs].sum(1).tolist()):
                removed[dim][layer] += n
        macs, norm_removed = total, 0.0
        for layer in set(removed["in"]) | set(removed["out"]):
            kind, cin, cout = shapes[layer]
            keep_in = 1 - removed["in"][layer] / cin
            keep_out = 1 - removed["out"][layer] / cout
            kept = keep_in * keep_out if kind == "conv" else min(keep_in, keep_out)
            macs -= layer_macs[layer] * (1 - max(0.0, kept))
            if kind == "norm":
                norm_removed += layer_macs[layer] * (1 - max(0.0, kept))
        if norm_total:
            macs -= free * norm_removed / norm_total
        return macs

    return predict


def predicted_step(planner: Planner, predict: Callable[[dict[str, list[int]]], float], goal_macs: float) -> int:
    """The smallest plan step whose predicted MACs are at most ``goal_macs`` (``t_max`` if none)."""
    lo, hi = 0, planner.t_max
    if predict(planner.plan(hi)) > goal_macs:
        return hi
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if predict(planner.plan(mid)) <= goal_macs:
            hi = mid
        else:
            lo = mid
    return hi


def progressive_step(model: nn.Module, example_inputs, config_for: Callable[[nn.Module], PruneConfig],
                     planner: Planner, t: int, graph=None, meta: bool = False) -> tuple[SearchResult, dict[str, float]]:
    """An intermediate round of progressive pruning: plan step ``t`` applied to ``model`` in place (through
    its dependency ``graph`` when given) and measured once (no search: only the last round must land
    exactly on the target; ``meta``: counted on meta tensors, see
    :func:`~harness.protocol.grouping.count_layer_macs`). Returns the result and the pruned model's
    per-layer MACs (for the next round's predictor)."""
    apply_plan(model, example_inputs, config_for(model), planner.plan(t), graph)
    macs, params, layers = count_layer_macs(model, example_inputs, meta)
    return SearchResult(model, t, macs, params, 1), layers


def prune_round(model: nn.Module, example_inputs, config_for: Callable[[nn.Module], PruneConfig],
                planner: Planner, base_macs: float, current_macs: float, target: float, final: bool,
                layers: dict[str, float], graph=None,
                meta: bool = False) -> tuple[SearchResult, Optional[dict[str, float]]]:
    """One round's pruning, starting from the step the per-layer MACs predictor gives (``layers``:
    ``model``'s per-layer MACs). The final round (the only one of one-shot pruning) searches the exact
    minimum on copies (the predicted step is its first probe: fewer probes, the same minimum). Earlier
    rounds of progressive pruning apply the predicted step to ``model`` in place (through ``graph``, its
    dependency graph) and return the pruned model's per-layer MACs too. ``meta``: whether ``model``'s count
    on meta tensors is exact (:func:`~harness.protocol.grouping.meta_count_exact`, once per stage): probes
    and counts on meta tensors (see :func:`search_speedup`); else real copies and Torch-Pruning's counter."""
    t = predicted_step(planner, macs_predictor(model, layers, current_macs, planner.groups), base_macs / target)
    if final:
        return search_speedup(model, example_inputs, config_for, planner, base_macs, current_macs, target,
                              first=t, in_place=True, graph=graph, meta=meta), None
    return progressive_step(model, example_inputs, config_for, planner, t, graph, meta)
