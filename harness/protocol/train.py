"""Training and evaluation loops for classification tracks (pretrain, sparsify, retrain).

One recipe (:class:`specs.track.Recipe`) drives every stage, so every method in a
track is retrained identically. Deterministic for a given seed on CPU.

How data reaches the model:

- **in-memory datasets** (``TensorDataset``: digits, CIFAR) are moved to the training device once;
  batches are indexed there, and crop/flip/random erasing/mixup run there on whole batches;
- **image-file datasets** (ImageFolder: ImageNet) are decoded and augmented by DataLoader workers
  (:func:`loader_workers` per process), with pinned memory, persistent workers and prefetching,
  and copied to the device without blocking.

Under torchrun (:mod:`harness.protocol.distributed`) the recipe's ``batch_size`` is the global batch:
each of N processes trains on its 1/N share of every batch (in-memory: the same samples, with the
same crops, as the single-process batch) and DDP averages the gradients.
"""

from __future__ import annotations

import math
import os
import random
from contextlib import nullcontext
from typing import Callable, Iterator, Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, Subset, TensorDataset

from harness import stopping
from harness.errors import HarnessError
from harness.models.base import logits_of
from harness.protocol import distributed
from specs.result import TrainingSettings
from specs.track import Recipe

#: called after loss.backward() and before optimizer.step(): (step, total_steps) -> None
GradHook = Callable[[int, int], None]
#: ``progress(stage, done, total, **info)``; stages: pretrain, sparsify, prune, retrain, evaluate. ``info``
#: carries what the stage knows at that point (training: ``loss``, the epoch's mean training loss, and ``lr``;
#: prune: ``macs``, ``speedup``; evaluate: ``metric`` (its name) and one of ``base``, ``pruned``, ``final``);
#: every consumer must accept (and may ignore) any keyword.
Progress = Callable[..., None]

#: DataLoader batches each worker keeps ready
PREFETCH_FACTOR = 4
MAX_WORKERS = 16


def loader_workers() -> int:
    """DataLoader workers per training process: the CPUs this process may use (its affinity, which
    Slurm sets) shared by the run's processes on this node (``LOCAL_WORLD_SIZE``), at most 16.
    ``PBENCH_LOADER_WORKERS`` overrides (0 = decode in the training process)."""
    if os.environ.get("PBENCH_LOADER_WORKERS"):
        return max(0, int(os.environ["PBENCH_LOADER_WORKERS"]))
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    per_process = cpus // max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    return max(1, min(MAX_WORKERS, per_process))


def make_loader(ds: Dataset, batch_size: int, shuffle: bool = False, generator: Optional[torch.Generator] = None,
                drop_last: bool = False, device: str = "cpu", sampler=None, workers: Optional[int] = None,
                persistent: bool = False) -> DataLoader:
    """A DataLoader for an image-file dataset: ``workers`` (default :func:`loader_workers`) processes,
    pinned memory for CUDA, prefetching, workers kept across epochs when ``persistent``."""
    workers = loader_workers() if workers is None else workers
    extra = dict(prefetch_factor=PREFETCH_FACTOR, persistent_workers=persistent) if workers > 0 else {}
    return DataLoader(ds, batch_size=batch_size, shuffle=shuffle if sampler is None else False, sampler=sampler,
                      generator=generator, drop_last=drop_last, num_workers=workers,
                      pin_memory=device.startswith("cuda"), **extra)


def batches(ds: Dataset, batch_size: int, shuffle: bool, generator: Optional[torch.Generator] = None,
            drop_last: bool = False, device: str = "cpu") -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Mini-batches on ``device``: in-memory TensorDatasets indexed there, a DataLoader otherwise."""
    if isinstance(ds, TensorDataset):
        x, y = (t.to(device) for t in ds.tensors)
        n = len(x)
        order = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
        stop = n - n % batch_size if drop_last and n >= batch_size else n
        for i in range(0, stop, batch_size):
            idx = order[i:i + batch_size].to(device)
            yield x[idx], y[idx]
        return
    for x, y in make_loader(ds, batch_size, shuffle, generator, drop_last, device):
        yield x.to(device, non_blocking=True), y.to(device, non_blocking=True)


# --------------------------------------------------------------------------- in-memory augmentation


def crop_flip_params(n: int, side: int, kind: str, generator: torch.Generator) -> tuple:
    """Random crop offsets (padding ``max(1, side // 8)``: 4 for 32 px) and flips for ``n`` samples,
    drawn from ``generator`` in a fixed order: x offsets, y offsets, flips."""
    pad = max(1, side // 8)
    dx = torch.randint(0, 2 * pad + 1, (n,), generator=generator)
    dy = torch.randint(0, 2 * pad + 1, (n,), generator=generator)
    flip = torch.rand(n, generator=generator) < 0.5 if kind in ("crop_flip", "randaug") else None
    return pad, dx, dy, flip


def crop_flip(x: torch.Tensor, params: tuple, fill: Optional[Sequence[float]] = None) -> torch.Tensor:
    """torchvision's ``RandomCrop(side, padding=pad)`` (+ ``RandomHorizontalFlip``) on a normalized batch,
    vectorized on its device: the padding is ``fill`` per channel (the normalized value of a raw zero
    pixel, ``-mean / std``, as padding before normalization gives; 0 if not given)."""
    pad, dx, dy, flip = params
    n, c, h, w = x.shape
    value = torch.as_tensor(fill if fill is not None else [0.0] * c, dtype=x.dtype, device=x.device)
    padded = value.view(1, c, 1, 1).expand(n, c, h + 2 * pad, w + 2 * pad).clone()
    padded[:, :, pad:pad + h, pad:pad + w] = x
    dx, dy = dx.to(x.device), dy.to(x.device)
    rows = (dy[:, None] + torch.arange(h, device=x.device))[:, None, :, None]
    cols = (dx[:, None] + torch.arange(w, device=x.device))[:, None, None, :]
    out = padded[torch.arange(n, device=x.device)[:, None, None, None],
                 torch.arange(c, device=x.device)[None, :, None, None], rows, cols]
    if flip is not None:
        out = torch.where(flip.to(x.device)[:, None, None, None], out.flip(-1), out)
    return out


class _TensorFeed:
    """An in-memory dataset on the training device, one epoch of (augmented) batches at a time."""

    def __init__(self, ds: TensorDataset, recipe: Recipe, device: str, generator: torch.Generator,
                 fill: Optional[Sequence[float]], seed: int):
        w = distributed.world()
        self.x, self.y = (t.to(device) for t in ds.tensors)
        self.recipe, self.device, self.g, self.fill, self.seed, self.w = recipe, device, generator, fill, seed, w
        n, b = len(self.x), recipe.batch_size
        self.sampler = None
        if recipe.ra_repeats:
            from timm.data.distributed_sampler import RepeatAugSampler
            self.sampler = RepeatAugSampler(ds, num_replicas=w.size, rank=w.rank, shuffle=True,
                                            num_repeats=recipe.ra_repeats)
            self.steps_per_epoch = max(1, len(self.sampler) // (b // w.size))
        else:
            self.steps_per_epoch = max(1, n // b if n >= b else 1)
        self.erase = None
        if recipe.random_erase:
            from timm.data.random_erasing import RandomErasing
            self.erase = RandomErasing(recipe.random_erase, mode="const", device=device)

    def epoch(self, epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        n, b, w = len(self.x), self.recipe.batch_size, self.w
        if self.sampler is not None:
            self.sampler.set_epoch(_sampler_epoch(self.seed, epoch))
            order, step, share = torch.tensor(list(self.sampler)), b // w.size, b // w.size
            stop = len(order) - len(order) % step
        else:  # one global permutation; each rank takes its share of every global batch
            order, step, share = torch.randperm(n, generator=self.g), b, b // w.size
            stop = n - n % b if n >= b else n
        for i in range(0, stop, step):
            idx = order[i:i + step]
            mine = slice(w.rank * share, (w.rank + 1) * share) if w.distributed and self.sampler is None else slice(None)
            x = self.x[idx[mine].to(self.device)]
            if self.recipe.augmentation != "none":
                pad, dx, dy, flip = crop_flip_params(len(idx), x.shape[-1], self.recipe.augmentation, self.g)
                x = crop_flip(x, (pad, dx[mine], dy[mine], None if flip is None else flip[mine]), self.fill)
            if self.erase is not None:
                x = self.erase(x)
            yield x, self.y[idx[mine].to(self.device)]


class _LoaderFeed:
    """An image-file dataset through DataLoader workers; each rank its share (distributed sampler)."""

    def __init__(self, ds: Dataset, recipe: Recipe, device: str, generator: torch.Generator, seed: int):
        w = distributed.world()
        self.device, self.seed = device, seed
        self.sampler = None
        if recipe.ra_repeats:
            from timm.data.distributed_sampler import RepeatAugSampler
            self.sampler = RepeatAugSampler(ds, num_replicas=w.size, rank=w.rank, shuffle=True,
                                            num_repeats=recipe.ra_repeats)
        elif w.distributed:
            from torch.utils.data.distributed import DistributedSampler
            self.sampler = DistributedSampler(ds, num_replicas=w.size, rank=w.rank, shuffle=True, seed=seed)
        self.workers = loader_workers()
        self.loader = make_loader(ds, recipe.batch_size // w.size, shuffle=True,
                                  generator=generator if self.sampler is None else None, drop_last=True,
                                  device=device, sampler=self.sampler, workers=self.workers,
                                  persistent=recipe.epochs > 1)
        self.steps_per_epoch = max(1, len(self.loader))

    def epoch(self, epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        if self.sampler is not None:
            self.sampler.set_epoch(_sampler_epoch(self.seed, epoch) if hasattr(self.sampler, "num_repeats")
                                   else epoch)
        for x, y in self.loader:
            yield x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)


def _sampler_epoch(seed: int, epoch: int) -> int:
    # timm's RepeatAugSampler seeds its shuffle with set_epoch's value alone: fold the run seed in
    return seed * 1_000_003 + epoch


# --------------------------------------------------------------------------- recipes and devices


def make_optimizer(model: nn.Module, recipe: Recipe) -> torch.optim.Optimizer:
    # no weight decay on norm layers and biases (unless bias_norm_decay), as in the standard CIFAR/ImageNet recipes
    if recipe.bias_norm_decay:
        groups = [{"params": [p for p in model.parameters() if p.requires_grad], "weight_decay": recipe.weight_decay}]
    else:
        decay, no_decay = [], []
        for p in model.parameters():
            if p.requires_grad:
                (no_decay if p.dim() <= 1 else decay).append(p)
        groups = [{"params": decay, "weight_decay": recipe.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if recipe.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=recipe.lr)
    return torch.optim.SGD(groups, lr=recipe.lr, momentum=recipe.momentum,
                           nesterov=recipe.nesterov and recipe.momentum > 0)


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


def autocast_dtype(recipe: Recipe, device: str) -> Optional[torch.dtype]:
    """The recipe's ``amp`` on ``device``: fp16 on CUDA only (with a gradient scaler), bf16 anywhere."""
    if recipe.amp == "bf16":
        return torch.bfloat16
    if recipe.amp in (True, "fp16") and device.startswith("cuda"):
        return torch.float16
    return None


def settings(recipe: Recipe, ds: Dataset, device: str) -> TrainingSettings:
    """What training with ``recipe`` on ``ds`` applies on ``device`` (for the record's provenance)."""
    dtype = autocast_dtype(recipe, device)
    in_memory = isinstance(ds, TensorDataset)
    return TrainingSettings(
        amp={torch.float16: "fp16", torch.bfloat16: "bf16"}.get(dtype), channels_last=recipe.channels_last,
        compiled=recipe.compile, cudnn_benchmark=device.startswith("cuda"),
        data="in_memory" if in_memory else "loader", loader_workers=0 if in_memory else loader_workers(),
        world_size=distributed.world().size)


def check_recipe(recipe: Recipe, ds: Dataset, what: str = "recipe") -> None:
    """Bad input (HarnessError) a recipe cannot do with this dataset or this many processes."""
    size = distributed.world().size
    if recipe.batch_size % size:
        raise HarnessError(f"{what}: batch_size {recipe.batch_size} does not split over {size} processes "
                           f"(the global batch must be a multiple of the process count)")
    if (recipe.mixup_alpha or recipe.cutmix_alpha) and (recipe.batch_size // size) % 2:
        raise HarnessError(f"{what}: mixup/cutmix need an even batch per process, got {recipe.batch_size // size}")
    if recipe.auto_augment and isinstance(ds, TensorDataset):
        raise HarnessError(f"{what}: auto_augment ({recipe.auto_augment}) needs an image-file dataset: its ops "
                           f"act on PIL images in the loader; in-memory datasets take crop/flip, random_erase, "
                           f"mixup/cutmix")


def train(model: nn.Module, ds: Dataset, recipe: Recipe, seed: int, device: str = "cpu",
          grad_hook: Optional[GradHook] = None, progress: Optional[Progress] = None, stage: str = "train",
          num_classes: Optional[int] = None, fill: Optional[Sequence[float]] = None) -> nn.Module:
    """Train ``model`` in place with ``recipe``; returns it (in eval mode, every rank holding rank 0's
    weights). ``num_classes`` is needed for mixup/cutmix; ``fill`` is the normalized padding value per
    channel for in-memory crops (see :func:`crop_flip`). ``progress`` is called on rank 0 only."""
    check_recipe(recipe, ds)
    w = distributed.world()
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model.to(device).train()
    for p in model.parameters():
        p.requires_grad_(True)
    opt = make_optimizer(model, recipe)
    feed = _TensorFeed(ds, recipe, device, g, fill, seed) if isinstance(ds, TensorDataset) else \
        _LoaderFeed(ds, recipe, device, g, seed)
    steps_per_epoch = feed.steps_per_epoch
    total = steps_per_epoch * recipe.epochs
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(recipe, s, total, steps_per_epoch))
    dtype = autocast_dtype(recipe, device)
    scaler = torch.amp.GradScaler("cuda", enabled=dtype == torch.float16)
    benchmark_was = torch.backends.cudnn.benchmark
    if device.startswith("cuda"):  # fixed shapes while training; pruning (new shapes each probe) keeps it off
        torch.backends.cudnn.benchmark = True
    mixup, criterion = _loss(recipe, num_classes, seed, w)
    if recipe.random_erase:
        random.seed(seed * 7919 + w.rank)  # timm's RandomErasing draws from Python's generator
    if recipe.channels_last:
        model.to(memory_format=torch.channels_last)
    net = distributed.ddp(model, device)
    if recipe.compile:
        net = torch.compile(net)
    autocast = (lambda: torch.autocast(torch.device(device).type, dtype=dtype)) if dtype is not None else nullcontext
    step = 0
    try:
        for epoch in range(recipe.epochs):
            loss_sum, n_batches = torch.zeros((), device=device), 0
            for x, y in feed.epoch(epoch):
                stopping.check()
                if recipe.channels_last and x.dim() == 4:
                    x = x.contiguous(memory_format=torch.channels_last)
                if mixup is not None:
                    x, y = mixup(x, y)
                with autocast():
                    loss = criterion(logits_of(net(x)), y)
                _update(model, loss, opt, scaler, sched, recipe, grad_hook, step, total)
                step += 1
                loss_sum += loss.detach()
                n_batches += 1
            if progress and w.main:
                progress(stage, epoch + 1, recipe.epochs, loss=float(loss_sum) / max(1, n_batches),
                         lr=opt.param_groups[0]["lr"])
    finally:
        torch.backends.cudnn.benchmark = benchmark_was
        if recipe.channels_last:
            model.to(memory_format=torch.contiguous_format)
    distributed.sync_module(model)
    model.eval()
    return model


def _update(model: nn.Module, loss: torch.Tensor, opt, scaler, sched, recipe: Recipe, grad_hook: Optional[GradHook],
            step: int, total: int) -> None:
    """One optimizer step of :func:`train`: the (scaled) backward pass, the regularizer's ``grad_hook`` on
    unscaled gradients, gradient clipping, the step, the scaler's and the schedule's updates."""
    opt.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    unscaled = grad_hook is not None
    if unscaled:
        scaler.unscale_(opt)
        grad_hook(step, total)
    if recipe.clip_grad_norm:
        if not unscaled:
            scaler.unscale_(opt)
        torch.nn.utils.clip_grad_norm_(model.parameters(), recipe.clip_grad_norm)
    scaler.step(opt)
    scaler.update()
    sched.step()


def _loss(recipe: Recipe, num_classes: Optional[int], seed: int, w) -> tuple:
    """(timm Mixup or None, criterion(logits, targets))."""
    if not (recipe.mixup_alpha or recipe.cutmix_alpha):
        return None, lambda logits, y: F.cross_entropy(logits, y, label_smoothing=recipe.label_smoothing)
    if not num_classes:
        raise HarnessError("mixup/cutmix need the number of classes")
    import numpy as np
    from timm.data import Mixup
    from timm.loss import SoftTargetCrossEntropy
    np.random.seed((seed * 7919 + w.rank) % 2**32)  # timm's Mixup draws from numpy's generator
    mixup = Mixup(mixup_alpha=recipe.mixup_alpha, cutmix_alpha=recipe.cutmix_alpha,
                  label_smoothing=recipe.label_smoothing, num_classes=num_classes)
    return mixup, SoftTargetCrossEntropy()


def train_bundle(model: nn.Module, data, recipe: Recipe, seed: int, device: str = "cpu", **kwargs) -> nn.Module:
    """:func:`train` on a :class:`~harness.data.DatasetBundle`'s train split as ``recipe`` wants it
    (image-file datasets build its augmentation into their transforms), with the bundle's classes and
    crop padding."""
    return train(model, data.training_split(recipe), recipe, seed, device, num_classes=data.num_classes,
                 fill=data.crop_fill, **kwargs)


@torch.no_grad()
def evaluate_top1(model: nn.Module, ds: Dataset, batch_size: int = 256, device: str = "cpu") -> float:
    """Top-1 accuracy in percent (under torchrun: each rank a shard of ``ds``, the counts summed)."""
    model.to(device).eval()
    w = distributed.world()
    if w.distributed:
        idx = list(distributed.shard(len(ds), w))
        ds = TensorDataset(*(t[idx] for t in ds.tensors)) if isinstance(ds, TensorDataset) else Subset(ds, idx)
    correct = total = 0
    for x, y in batches(ds, batch_size, shuffle=False, device=device):
        pred = logits_of(model(x)).argmax(1)
        correct += int((pred == y).sum())
        total += len(y)
    correct, total = distributed.all_sum([correct, total], device)
    return 100.0 * correct / max(1, total)


def calibration_batches(ds: Dataset, num_samples: int, batch_size: int, seed: int) -> list:
    """The track's calibration set: the first ``num_samples`` of a seeded permutation of train."""
    g = torch.Generator().manual_seed(10_000 + seed)
    idx = torch.randperm(len(ds), generator=g)[:num_samples]
    sub = TensorDataset(*(t[idx] for t in ds.tensors)) if isinstance(ds, TensorDataset) else \
        torch.utils.data.Subset(ds, idx.tolist())
    return list(batches(sub, batch_size, shuffle=False))
