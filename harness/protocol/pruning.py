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
from typing import Callable

import torch
import torch.nn as nn

from harness.errors import HarnessError
from harness.protocol.grouping import PruneConfig, apply_plan, count_macs_params
from specs.messages import Group
from specs.track import Strategy

LOCAL_STEPS = 1000
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

    @property
    def t_max(self) -> int:
        return LOCAL_STEPS if self.strategy == "local" else sum(self.caps.values())

    def _sorted_units(self, gid: str) -> torch.Tensor:
        """The units of group ``gid``, lowest score first, equal scores in the seeded tie-break order."""
        s, tb = self.unit_scores[gid], self.tie_break[gid]
        by_tie = torch.argsort(tb)
        return by_tie[torch.sort(s[by_tie], stable=True).indices]

    def _order(self) -> list[tuple[str, int]]:
        if not hasattr(self, "_global_order"):
            keys = []
            for g in self.groups:
                s, tb = self.unit_scores[g.id], self.tie_break[g.id]
                kept = self._sorted_units(g.id)[: self.caps[g.id]]
                keys.extend((float(s[u]), int(tb[u]), g.id, int(u)) for u in kept)
            keys.sort()  # score, then the seeded permutation (unique): never group or channel order
            self._global_order = [(k[2], k[3]) for k in keys]
        return self._global_order

    def units(self, t: int) -> dict[str, list[int]]:
        """Units to remove per group for step ``t``."""
        if self.strategy == "local":
            out = {}
            for g in self.groups:
                k = min(self.caps[g.id], math.floor(t / LOCAL_STEPS * len(self.unit_scores[g.id])))
                out[g.id] = self._sorted_units(g.id)[:k].tolist()
            return out
        out = {g.id: [] for g in self.groups}
        for gid, u in self._order()[:t]:
            out[gid].append(u)
        return out

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
                 strategy: Strategy, min_fraction: float, seed: int, round_: int = 0) -> Planner:
    """``base_channels``: root channels of each group in the unpruned base model (for the floor);
    ``seed`` (the run seed) and ``round_`` seed the permutation that orders equal scores."""
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
        caps[g.id] = max(0, units_now - keep)
    sizes = [len(unit_scores[g.id]) for g in groups]
    gen = torch.Generator().manual_seed(TIE_SEED + 64 * int(seed) + int(round_))
    perm = torch.randperm(sum(sizes), generator=gen)
    tie_break = dict(zip((g.id for g in groups), torch.split(perm, sizes)))
    return Planner(groups, unit_scores, caps, strategy, tie_break)


@dataclass
class SearchResult:
    model: nn.Module
    t: int
    macs: float
    params: int
    evaluations: int


def search_speedup(model: nn.Module, example_inputs, config_for: Callable[[nn.Module], PruneConfig],
                   planner: Planner, base_macs: float, current_macs: float, target: float) -> SearchResult:
    """Smallest plan step whose physically pruned copy reaches ``base_macs / macs >= target``.

    ``config_for(m)`` builds the prune config of a model (a deep copy has new module objects).
    Every probe prunes a deep copy and counts its MACs; probes are placed by interpolating
    log-speedup between the bracket ends, with a bisection step whenever interpolation fails
    to halve the bracket, so the exact minimum is found in a handful of probes.
    """
    cache: dict[int, SearchResult] = {}

    def evaluate(t: int) -> SearchResult:
        if t not in cache:
            m = copy.deepcopy(model)
            apply_plan(m, example_inputs, config_for(m), planner.plan(t))
            macs, params = count_macs_params(m, example_inputs)
            cache[t] = SearchResult(m, t, macs, params, 0)
        return cache[t]

    def speedup(t: int) -> float:
        return base_macs / evaluate(t).macs

    def done(t: int) -> SearchResult:
        result = evaluate(t)
        result.evaluations = len(cache)
        return result

    goal = target * (1 - 1e-9)
    lo, s_lo = 0, base_macs / current_macs
    if s_lo >= goal:
        return done(0)
    # first probe: MACs of conv nets shrink roughly with the square of the channels kept
    first = min(planner.t_max, max(1, round(planner.t_max * (1 - (s_lo / target) ** 0.5))))
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
    return done(hi)
