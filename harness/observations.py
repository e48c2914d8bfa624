"""Observations the harness collects for a method, on the track's fixed calibration budget.

Methods never see data: only what their manifest declares, computed here the
same way for every method (see :data:`specs.manifest.ObservationKind`).
"""

from __future__ import annotations

from typing import Callable, Iterable, Optional

import torch
import torch.nn as nn

from harness.errors import HarnessError
from specs.messages import Group

Tensors = dict[str, torch.Tensor]
#: the task's loss on one calibration batch
LossFn = Callable[[nn.Module, object], torch.Tensor]


def param_keys(groups: Iterable[Group]) -> list[str]:
    """Keys of every weight/bias a group member references."""
    keys = set()
    for g in groups:
        for m in g.members:
            keys.update(k for k in (m.weight, m.bias) if k)
    return sorted(keys)


def _weights(model: nn.Module, keys: list[str]) -> Tensors:
    state = dict(model.named_parameters())
    return {k: state[k].detach().to("cpu", torch.float32).clone() for k in keys}


def _gradients(model: nn.Module, keys: list[str], batches: list, loss_fn: LossFn, squared: bool) -> Tensors:
    """Mean-loss gradients (summed over batches / number of batches), or per-sample squared
    gradients summed over samples. Eval mode: BatchNorm uses its running statistics."""
    params = dict(model.named_parameters())
    wanted = {k: params[k] for k in keys}
    acc = {k: torch.zeros_like(p, device="cpu", dtype=torch.float32) for k, p in wanted.items()}

    def accumulate(batch, power: int) -> None:
        model.zero_grad(set_to_none=True)
        loss_fn(model, batch).backward()
        for k, p in wanted.items():
            if p.grad is not None:
                acc[k] += p.grad.detach().float().cpu().pow(power)

    was_training = model.training
    model.eval()
    try:
        for batch in batches:
            if squared:  # per sample: exact, independent of the batch size
                for sample in split_batch(batch):
                    accumulate(sample, 2)
            else:
                accumulate(batch, 1)
    finally:
        model.zero_grad(set_to_none=True)
        model.train(was_training)
    if not squared:
        acc = {k: v / max(1, len(batches)) for k, v in acc.items()}
    return acc


def split_batch(batch) -> Iterable:
    """Single-sample batches of an ``(inputs, targets)`` batch of tensors."""
    x, y = batch
    return ((x[i:i + 1], y[i:i + 1]) for i in range(len(x)))


def collect(kinds: Iterable[str], model: nn.Module, groups: list[Group], batches: list,
            loss_fn: Optional[LossFn] = None) -> dict[str, Tensors]:
    """The observations ``kinds`` for ``groups`` of ``model``; ``loss_fn(model, batch)`` is the
    task's training loss on one calibration batch."""
    keys = param_keys(groups)
    out: dict[str, Tensors] = {}
    for kind in kinds:
        if kind == "weights":
            out[kind] = _weights(model, keys)
        elif kind == "gradients":
            out[kind] = _gradients(model, keys, batches, loss_fn, squared=False)
        elif kind == "sq_gradients":
            out[kind] = _gradients(model, keys, batches, loss_fn, squared=True)
        else:
            raise HarnessError(f"observation {kind!r} is not provided by this harness version")
    return out
