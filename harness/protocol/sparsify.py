"""Step 1 of the protocol, for regularizer methods: sparse training.

The harness trains the model with the track's ``sparsify`` recipe (identical for
every method). After each ``loss.backward()`` it sends the current weights of every
group member to the regularizer method and adds what comes back to the gradients
before ``optimizer.step()`` (through ``Task.train``'s ``grad_hook``).

The exchange itself belongs to the runner: :meth:`MethodClient.regularizer_link`
returns a link ``link(step, total_steps, weights) -> RegGrads`` whose answer is
validated before use (a broken one raises :class:`~harness.errors.MethodFailure`).
Methods that declare spec 1.1 get the cheap exchange (groups once, weights rewritten
in place, compact per-channel scales, see :class:`harness.runners.socket_client.SocketLink`);
spec 1.0 methods get groups and dense gradients every step.
"""

from __future__ import annotations

import time
from typing import Optional

import torch
import torch.nn as nn

from harness.errors import MethodFailure
from harness.protocol import distributed
from harness.protocol.observations import all_parameters, distinct, param_keys
from harness.protocol.train import Progress
from harness.runners.base import MethodClient, RegGrads, RegularizerLink
from harness.tasks.base import Task
from specs.messages import Group
from specs.tensors import broadcast_scale
from specs.track import Recipe


@torch.no_grad()
def apply_reg_grads(params: dict[str, nn.Parameter], reg: RegGrads) -> None:
    """``grad += dense`` and ``grad += (sum of broadcast scales) * weight``, in place."""
    for key, g in reg.dense.items():
        p = params[key]
        _grad(p).add_(g.to(p.device, p.dtype))
    for key, items in reg.scales.items():
        p = params[key]
        coef = None
        for dim, s in items:  # outer sum of the per-dimension scales: one pass over the weight
            b = broadcast_scale(s.to(p.device, p.dtype), p.dim(), dim)
            coef = b if coef is None else coef + b
        _grad(p).addcmul_(p, coef)


def _grad(p: nn.Parameter) -> torch.Tensor:
    if p.grad is None:  # a parameter the loss did not reach this step
        p.grad = torch.zeros_like(p)
    return p.grad


# --------------------------------------------------------------------------- the stage


def make_grad_hook(model: nn.Module, groups: list[Group], link: RegularizerLink):
    """``hook(step, total_steps)`` for ``Task.train``: the group members' current weights go to
    the regularizer, its validated answer is added to their gradients."""
    keys = param_keys(groups)
    params = all_parameters(model)
    missing = [k for k in keys if k not in params]
    if missing:
        raise MethodFailure(f"internal error: group parameter {missing[0]!r} is not in the model")

    def hook(step: int, total_steps: int) -> None:
        weights = distinct({k: params[k].detach() for k in keys})
        apply_reg_grads(params, link(step, total_steps, weights))

    return hook


def sparsify(task: Task, model: nn.Module, recipe: Recipe, client: Optional[MethodClient], groups: list[Group], seed: int,
             progress: Optional[Progress] = None) -> float:
    """Sparse-train ``model`` in place with ``recipe``, adding the regularizer's gradients after
    every backward pass. Returns the wall time (seconds).

    Under torchrun only rank 0 has a ``client`` (``None`` elsewhere): it asks the regularizer once per
    step and every rank adds the same answer (the ranks hold the same weights)."""
    link = client.regularizer_link(groups) if client is not None else None
    t0 = time.perf_counter()
    try:
        task.train(model, recipe, seed=seed, progress=progress, stage="sparsify",
                   grad_hook=make_grad_hook(model, groups, distributed.shared(link)))
    finally:
        if link is not None:
            link.close()
    return time.perf_counter() - t0
