"""Training and evaluation loops for classification tracks (pretrain, sparsify, retrain).

One recipe (:class:`specs.track.Recipe`) drives every stage, so every method in a
track is retrained identically. Deterministic for a given seed on CPU.
"""

from __future__ import annotations

import math
from contextlib import nullcontext
from typing import Callable, Iterator, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, TensorDataset

from specs.track import Recipe

#: called after loss.backward() and before optimizer.step(): (step, total_steps) -> None
GradHook = Callable[[int, int], None]
#: ``progress(stage, done, total, **info)``; stages: pretrain, sparsify, prune, retrain, evaluate. ``info``
#: carries what the stage knows at that point (training: ``loss``, the epoch's mean training loss, and ``lr``;
#: prune: ``macs``, ``speedup``; evaluate: ``metric`` (its name) and one of ``base``, ``pruned``, ``final``);
#: every consumer must accept (and may ignore) any keyword.
Progress = Callable[..., None]


def batches(ds: Dataset, batch_size: int, shuffle: bool, generator: Optional[torch.Generator] = None,
            drop_last: bool = False) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Mini-batches; a fast path for in-memory TensorDatasets, a DataLoader otherwise."""
    if isinstance(ds, TensorDataset):
        x, y = ds.tensors
        n = len(x)
        order = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
        stop = n - n % batch_size if drop_last and n >= batch_size else n
        for i in range(0, stop, batch_size):
            idx = order[i:i + batch_size]
            yield x[idx], y[idx]
        return
    yield from DataLoader(ds, batch_size=batch_size, shuffle=shuffle, generator=generator, drop_last=drop_last,
                          num_workers=0)


def augment(x: torch.Tensor, kind: str, generator: torch.Generator) -> torch.Tensor:
    """Batch augmentation on normalized tensors: random crop (pad 4 / 1/8 of the side) and h-flip."""
    if kind == "none":
        return x
    n, _, h, w = x.shape
    pad = max(1, h // 8)
    padded = F.pad(x, (pad, pad, pad, pad), mode="reflect" if h > pad else "constant")
    dx = torch.randint(0, 2 * pad + 1, (n,), generator=generator)
    dy = torch.randint(0, 2 * pad + 1, (n,), generator=generator)
    out = torch.stack([padded[i, :, dy[i]:dy[i] + h, dx[i]:dx[i] + w] for i in range(n)])
    if kind in ("crop_flip", "randaug"):
        flip = torch.rand(n, generator=generator) < 0.5
        out[flip] = out[flip].flip(-1)
    return out


def make_optimizer(model: nn.Module, recipe: Recipe) -> torch.optim.Optimizer:
    # no weight decay on norm layers and biases, as in the standard CIFAR/ImageNet recipes
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (no_decay if p.dim() <= 1 else decay).append(p)
    groups = [{"params": decay, "weight_decay": recipe.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if recipe.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=recipe.lr)
    return torch.optim.SGD(groups, lr=recipe.lr, momentum=recipe.momentum, nesterov=recipe.momentum > 0)


def lr_factor(recipe: Recipe, step: int, total: int, steps_per_epoch: int) -> float:
    warm = recipe.warmup_epochs * steps_per_epoch
    if step < warm:
        return (step + 1) / warm
    if recipe.schedule == "constant":
        return 1.0
    progress = (step - warm) / max(1, total - warm)
    if recipe.schedule == "cosine":
        return 0.5 * (1 + math.cos(math.pi * progress))
    return recipe.gamma ** sum(progress >= m for m in recipe.milestones)


def train(model: nn.Module, ds: Dataset, recipe: Recipe, seed: int, device: str = "cpu",
          grad_hook: Optional[GradHook] = None, progress: Optional[Progress] = None, stage: str = "train") -> nn.Module:
    """Train ``model`` in place with ``recipe``; returns it."""
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model.to(device).train()
    for p in model.parameters():
        p.requires_grad_(True)
    opt = make_optimizer(model, recipe)
    n = len(ds)
    steps_per_epoch = max(1, n // recipe.batch_size if n >= recipe.batch_size else 1)
    total = steps_per_epoch * recipe.epochs
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(recipe, s, total, steps_per_epoch))
    use_amp = recipe.amp and device.startswith("cuda")
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
    step = 0
    for epoch in range(recipe.epochs):
        loss_sum, n_batches = torch.zeros((), device=device), 0
        for x, y in batches(ds, recipe.batch_size, shuffle=True, generator=g, drop_last=True):
            x = augment(x, recipe.augmentation, g).to(device, non_blocking=True)
            y = y.to(device, non_blocking=True)
            with torch.autocast("cuda", enabled=True) if use_amp else nullcontext():
                loss = F.cross_entropy(model(x), y, label_smoothing=recipe.label_smoothing)
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            if grad_hook is not None:
                scaler.unscale_(opt)
                grad_hook(step, total)
            scaler.step(opt)
            scaler.update()
            sched.step()
            step += 1
            loss_sum += loss.detach()
            n_batches += 1
        if progress:
            progress(stage, epoch + 1, recipe.epochs, loss=float(loss_sum) / max(1, n_batches),
                     lr=opt.param_groups[0]["lr"])
    model.eval()
    return model


@torch.no_grad()
def evaluate_top1(model: nn.Module, ds: Dataset, batch_size: int = 256, device: str = "cpu") -> float:
    """Top-1 accuracy in percent."""
    model.to(device).eval()
    correct = total = 0
    for x, y in batches(ds, batch_size, shuffle=False):
        pred = model(x.to(device)).argmax(1).cpu()
        correct += int((pred == y).sum())
        total += len(y)
    return 100.0 * correct / max(1, total)


def calibration_batches(ds: Dataset, num_samples: int, batch_size: int, seed: int) -> list:
    """The track's calibration set: the first ``num_samples`` of a seeded permutation of train."""
    g = torch.Generator().manual_seed(10_000 + seed)
    idx = torch.randperm(len(ds), generator=g)[:num_samples]
    sub = TensorDataset(*(t[idx] for t in ds.tensors)) if isinstance(ds, TensorDataset) else \
        torch.utils.data.Subset(ds, idx.tolist())
    return list(batches(sub, batch_size, shuffle=False))
