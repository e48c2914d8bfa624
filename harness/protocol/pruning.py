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


class Unreachable(HarnessError):
    """The strategy cannot reach the speedup target (e.g. the 10% floor forbids it)."""


@dataclass
class Planner:
    """Nested plans for one round. ``plan(t)`` maps group id -> root channels to remove."""

    groups: list[Group]
    unit_scores: dict[str, torch.Tensor]  # per group: one score per unit (channel, or channel slot across ch_groups)
    caps: dict[str, int]                   # per group: max units removable this round
    strategy: Strategy

    @property
    def t_max(self) -> int:
        return LOCAL_STEPS if self.strategy == "local" else sum(self.caps.values())

    def _order(self) -> list[tuple[str, int]]:
        if not hasattr(self, "_global_order"):
            keys = []
            for gi, g in enumerate(self.groups):
                s = self.unit_scores[g.id]
                order = torch.sort(s, stable=True).indices[: self.caps[g.id]]
                keys.extend((float(s[u]), gi, rank, g.id, int(u)) for rank, u in enumerate(order))
            keys.sort()  # score, then group order, then within-group rank: deterministic ties
            self._global_order = [(k[3], k[4]) for k in keys]
        return self._global_order

    def units(self, t: int) -> dict[str, list[int]]:
        """Units to remove per group for step ``t``."""
        if self.strategy == "local":
            out = {}
            for g in self.groups:
                s = self.unit_scores[g.id]
                k = min(self.caps[g.id], math.floor(t / LOCAL_STEPS * len(s)))
                out[g.id] = torch.sort(s, stable=True).indices[:k].tolist()
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


def make_planner(groups: list[Group], scores: dict[str, torch.Tensor], base_channels: dict[str, int],
                 strategy: Strategy, min_fraction: float) -> Planner:
    """``base_channels``: root channels of each group in the unpruned base model (for the floor)."""
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
    return Planner(groups, unit_scores, caps, strategy)


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
