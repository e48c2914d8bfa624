"""BatchNorm re-estimation after pruning (harness-owned, identical for every method).

Removing channels changes what every later layer receives, so a pruned model's BatchNorm running
statistics no longer describe its activations and its accuracy before retraining collapses to chance
for every method alike (the ``pruned`` metric then carries no information). Re-estimating the
statistics on the track's calibration images - forward passes only, no gradient step - gives a
before-retraining metric (``pruned_recal``) that separates methods.

:func:`recalibrate` sets each BatchNorm layer's ``running_mean`` / ``running_var`` to the exact mean and
unbiased variance of that layer's inputs over all calibration images (every sample and position), not to
an exponential moving average (momentum-free) and not to an average of per-batch variances. During the
pass BatchNorm layers normalize with their batch statistics (train mode) while everything else (dropout,
…) stays in eval mode; no parameter changes.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable

import torch
import torch.nn as nn
from torch.nn.modules.batchnorm import _BatchNorm


def batchnorms(model: nn.Module) -> list[_BatchNorm]:
    """The BatchNorm layers (1d/2d/3d, SyncBatchNorm) that track running statistics."""
    return [m for m in model.modules() if isinstance(m, _BatchNorm) and m.track_running_stats]


@torch.no_grad()
def recalibrate(model: nn.Module, batches: Iterable[Any], forward: Callable[[nn.Module, Any], Any]) -> int:
    """Re-estimate the running statistics of every BatchNorm layer of ``model`` in place from
    ``forward(model, batch)`` over ``batches``; returns the number of layers re-estimated (0: the model
    has no BatchNorm and is left untouched). ``model`` is left in eval mode."""
    layers = batchnorms(model)
    if not layers:
        return 0
    sums: dict[nn.Module, list] = {}

    def accumulate(module: _BatchNorm, inputs: tuple) -> None:
        x = inputs[0].detach().to(torch.float64)
        dims = [d for d in range(x.dim()) if d != 1]  # every dimension but the channels
        acc = sums.setdefault(module, [0, 0.0, 0.0])
        acc[0] += x.numel() // x.shape[1]
        acc[1] = acc[1] + x.sum(dims)
        acc[2] = acc[2] + (x * x).sum(dims)

    model.eval()
    hooks = [m.register_forward_pre_hook(accumulate) for m in layers]
    try:
        for m in layers:
            m.train()  # normalize with batch statistics during the pass, as training would
        n_batches = 0
        for batch in batches:
            forward(model, batch)
            n_batches += 1
    finally:
        for h in hooks:
            h.remove()
        model.eval()
    for m in layers:
        if m not in sums:  # a branch the calibration batches never reach: keep what it had
            continue
        count, s, ss = sums[m]
        mean = s / count
        var = (ss - count * mean * mean) / max(1, count - 1)  # unbiased, as BatchNorm's running_var
        m.running_mean.copy_(mean.to(m.running_mean.dtype))
        m.running_var.copy_(var.clamp_min(0).to(m.running_var.dtype))
        if m.num_batches_tracked is not None:
            m.num_batches_tracked.fill_(n_batches)
    return len(layers)
