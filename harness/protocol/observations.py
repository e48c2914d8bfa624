"""Observations the harness collects for a method, on the track's fixed calibration budget.

Methods never see data: only what their manifest declares, computed here the
same way for every method (see :data:`specs.manifest.ObservationKind`, which
documents shapes and units). All tensors are float32 on CPU and deterministic
for a given (model, calibration batches, seed, calibration settings).

Activation observations (``inputs``, ``outputs``, ``output_gradients``) run the
model in eval mode (BatchNorm uses its running statistics) on the calibration
batches' inputs (``batch[0]``) and are keyed by layer name. Sampling is fixed by
the track (``Calibration.positions_per_sample``, ``activation_samples``,
``output_samples``, ``output_budget_mb``) and seeded by the run seed: the
positions of layer ``L`` come from :func:`position_generator` ``(seed, L)``
through :func:`sample_positions`, one draw per batch in batch order; the sampled
labels of ``output_gradients`` from :func:`label_generator` ``(seed)``, one
``torch.multinomial`` per batch.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field
from typing import Callable, Iterable, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from harness.errors import HarnessError
from harness.models.base import logits_of
from specs.messages import Group
from specs.tensors import Tensors
from specs.track import Calibration

#: the task's loss on one calibration batch
LossFn = Callable[[nn.Module, object], torch.Tensor]


def param_keys(groups: Iterable[Group]) -> list[str]:
    """Keys of every weight/bias a group member references."""
    keys = set()
    for g in groups:
        for m in g.members:
            keys.update(k for k in (m.weight, m.bias) if k)
    return sorted(keys)


def all_parameters(model: nn.Module) -> dict[str, nn.Parameter]:
    """Every parameter under every name it has: a tied weight (``fc2.weight = fc.weight``) answers to both
    names, as the group members name it."""
    return dict(model.named_parameters(remove_duplicate=False))


def distinct(tensors: Tensors) -> Tensors:
    """``tensors`` with a copy of each one another key already holds (a tied weight under its two names):
    tensors that share memory cannot be written side by side (safetensors refuses them)."""
    seen: set[int] = set()
    out = {}
    for k, t in tensors.items():
        where = t.untyped_storage().data_ptr()
        out[k] = t.clone() if where in seen and t.numel() else t
        seen.add(where)
    return out


def _weights(model: nn.Module, keys: list[str]) -> Tensors:
    state = all_parameters(model)
    # no copy: the tensors are sent (written out, or copied by the in-process runner) before the model changes
    return distinct({k: state[k].detach().to("cpu", torch.float32) for k in keys})


def _gradients(model: nn.Module, keys: list[str], batches: list, loss_fn: LossFn, squared: bool) -> Tensors:
    """Mean-loss gradients (summed over batches / number of batches), or per-sample squared
    gradients summed over samples. Eval mode: BatchNorm uses its running statistics."""
    params = all_parameters(model)
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


# --------------------------------------------------------------------------- activations


def _default(name: str) -> int:
    return Calibration.model_fields[name].default


def _derived_seed(seed: int, *parts: str) -> int:
    """A 63-bit seed from the run seed and a purpose; stable across processes and platforms."""
    digest = hashlib.sha256(":".join([str(int(seed)), *parts]).encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def position_generator(seed: int, layer: str) -> torch.Generator:
    """The generator the positions of ``layer`` are drawn from (one per layer and run seed)."""
    return torch.Generator().manual_seed(_derived_seed(seed, "positions", layer))


def label_generator(seed: int) -> torch.Generator:
    """The generator the labels of ``output_gradients`` are sampled from."""
    return torch.Generator().manual_seed(_derived_seed(seed, "labels"))


def sample_positions(generator: torch.Generator, batch: int, total: int, per_sample: int) -> torch.Tensor:
    """``[batch, min(per_sample, total)]`` distinct positions in ``[0, total)`` per image, ascending.

    All positions (and no draw) when ``per_sample >= total``; otherwise one ``torch.rand(batch, total)``
    from ``generator``, whose ``argsort`` gives a uniform sample without replacement per image.
    """
    if per_sample >= total:
        return torch.arange(total).expand(batch, total)
    return torch.rand(batch, total, generator=generator).argsort(1)[:, :per_sample].sort(1).values


def _sampled_layers(model: nn.Module, groups: list[Group]) -> dict[str, nn.Module]:
    """Member conv/linear layers whose inputs can be laid out as patches (Conv1d/2d, Linear)."""
    modules = dict(model.named_modules())
    out = {}
    for g in groups:
        for m in g.members:
            mod = modules.get(m.layer)
            if isinstance(mod, (nn.Conv1d, nn.Conv2d, nn.Linear)) and not getattr(mod, "transposed", False):
                out[m.layer] = mod
    return dict(sorted(out.items()))


def _output_layers(model: nn.Module, groups: list[Group]) -> dict[str, nn.Module]:
    modules = dict(model.named_modules())
    out = {}
    for g in groups:
        for m in g.members:
            if m.dim == "out" and m.kind in ("conv", "linear", "bn") and isinstance(modules.get(m.layer), nn.Module):
                out[m.layer] = modules[m.layer]
    return dict(sorted(out.items()))


def _positions(mod: nn.Module, out: torch.Tensor) -> int:
    """T: the number of output positions of one image (conv: H_out * W_out; linear: tokens, or 1)."""
    if isinstance(mod, nn.Linear):
        return out[:1].numel() // out.shape[-1]
    return out[:1, :1].numel()


def _patches(mod: nn.Module, x: torch.Tensor, out: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """What the layer multiplies to produce its output at positions ``idx`` (``[B, P]``):
    conv ``[B, P, C_in, kh*kw]`` (the columns ``F.unfold`` would give, gathered without unfolding
    the whole input), linear ``[B, P, C_in]``."""
    b = x.shape[0]
    if isinstance(mod, nn.Linear):
        x = x.reshape(b, -1, x.shape[-1])
        return x.gather(1, idx.unsqueeze(2).expand(-1, -1, x.shape[2]))
    mode = "constant" if mod.padding_mode == "zeros" else mod.padding_mode
    x = F.pad(x, mod._reversed_padding_repeated_twice, mode=mode)  # also 'same' and asymmetric padding
    if isinstance(mod, nn.Conv1d):
        x, w_out = x.unsqueeze(2), out.shape[2]
        (kh, kw), (sh, sw), (dh, dw) = (1, *mod.kernel_size), (1, *mod.stride), (1, *mod.dilation)
    else:
        w_out = out.shape[3]
        (kh, kw), (sh, sw), (dh, dw) = mod.kernel_size, mod.stride, mod.dilation
    c, width = x.shape[1], x.shape[3]
    k_row = (torch.arange(kh) * dh).repeat_interleave(kw).to(idx.device)  # kernel offsets, row-major like W
    k_col = (torch.arange(kw) * dw).repeat(kh).to(idx.device)
    rows = (idx // w_out * sh).unsqueeze(2) + k_row  # [B, P, K] input coordinates of each tap
    cols = (idx % w_out * sw).unsqueeze(2) + k_col
    p, k = idx.shape[1], kh * kw
    pixels = (rows * width + cols).reshape(b, 1, p * k).expand(-1, c, -1)
    return x.flatten(2).gather(2, pixels).reshape(b, c, p, k).transpose(1, 2)


def _output_positions(mod: nn.Module, out: torch.Tensor) -> torch.Tensor:
    """``[B, T, C_out]``: the layer's output, one row per output position."""
    if isinstance(mod, nn.Linear):
        return out.reshape(out.shape[0], -1, out.shape[-1])
    return out.reshape(out.shape[0], out.shape[1], -1).transpose(1, 2)


@dataclass
class _Call:
    """One forward call of a sampled layer: its output (for gradients) and the positions drawn."""

    out: torch.Tensor
    idx: torch.Tensor  # [B, P]
    total: int


@dataclass
class _Sampler:
    name: str
    module: nn.Module
    generator: torch.Generator
    per_sample: int
    keep_outputs: bool
    rows: list = field(default_factory=list)
    calls: list = field(default_factory=list)

    def hook(self, module, args, out):
        x = args[0].detach()
        total = _positions(module, out)
        idx = sample_positions(self.generator, x.shape[0], total, self.per_sample).to(x.device)
        patches = _patches(module, x, out, idx)  # [B, P, C_in(, K)]
        self.rows.append(patches.reshape(-1, *patches.shape[2:]).to("cpu", torch.float32))
        if not self.keep_outputs:
            return None
        self.calls.append(_Call(out, idx, total))
        return out.clone()  # later in-place ops (ReLU(inplace=True)) then never touch the captured output


def _limit(batches: list, max_images: int) -> list:
    """The batches' inputs (``batch[0]``), truncated to the first ``max_images`` images."""
    xs, left = [], max_images
    for batch in batches:
        if left <= 0:
            break
        x = batch[0] if isinstance(batch, (tuple, list)) else batch
        xs.append(x[:left])
        left -= len(xs[-1])
    return xs


def _device(model: nn.Module) -> torch.device:
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


def _activations(model: nn.Module, groups: list[Group], batches: list, seed: int, per_sample: int,
                 max_images: int, gradients: bool) -> tuple[Tensors, Tensors]:
    """``inputs`` and (when ``gradients``) ``output_gradients`` in one pass over the batches."""
    layers = _sampled_layers(model, groups)
    samplers = [_Sampler(n, m, position_generator(seed, n), per_sample, gradients) for n, m in layers.items()]
    handles = [s.module.register_forward_hook(s.hook) for s in samplers]
    labels = label_generator(seed)
    grads: dict[str, list] = {s.name: [] for s in samplers}
    device = _device(model)
    try:
        for x in _limit(batches, max_images):
            x = x.to(device)
            if not gradients:
                with torch.no_grad():
                    model(x)
                continue
            for s in samplers:
                s.calls.clear()
            if not any(p.requires_grad for p in model.parameters()):
                x = x.detach().requires_grad_(True)  # so that layer outputs are part of a graph
            with torch.enable_grad():
                logits = logits_of(model(x))
            if not isinstance(logits, torch.Tensor) or logits.dim() != 2:
                raise HarnessError("observation 'output_gradients' needs a model that returns [batch, classes] "
                                   f"logits; this one returns {getattr(logits, 'shape', type(logits).__name__)}")
            probs = torch.softmax(logits.detach().to("cpu", torch.float64), dim=1)
            y = torch.multinomial(probs, 1, generator=labels).squeeze(1).to(logits.device)
            # sum, not mean: each sample's output gradient is its own d(-log p(y_n|x_n))/ds (BN in eval mode)
            calls = [(s, c) for s in samplers for c in s.calls]
            with torch.enable_grad():
                loss = F.cross_entropy(logits, y, reduction="sum")
                got = torch.autograd.grad(loss, [c.out for _, c in calls], allow_unused=True)
            for (s, c), g in zip(calls, got):
                g = torch.zeros_like(c.out) if g is None else g
                g = _output_positions(s.module, g.detach())  # [B, T, C_out]
                g = g.gather(1, c.idx.unsqueeze(2).expand(-1, -1, g.shape[2]))
                grads[s.name].append((g.reshape(-1, g.shape[2]) * math.sqrt(c.total)).to("cpu", torch.float32))
            for s in samplers:
                s.calls.clear()
    finally:
        for h in handles:
            h.remove()
    inputs = {s.name: torch.cat(s.rows) for s in samplers if s.rows}
    return inputs, {n: torch.cat(v) for n, v in grads.items() if v}


def _outputs(model: nn.Module, groups: list[Group], batches: list, max_images: int, budget_mb: int) -> Tensors:
    """Full outputs of the member layers pruned along their outputs, for the first images: at most
    ``max_images``, and fewer (at least one) when their float32 size would exceed ``budget_mb``."""
    layers = _output_layers(model, groups)
    store: dict[str, list] = {n: [] for n in layers}
    sizes: dict[str, int] = {}

    def hook(name):
        def fn(module, args, out):
            if not isinstance(out, torch.Tensor):
                return
            if measuring:
                sizes[name] = sizes.get(name, 0) + out[:1].numel()
            else:  # cloned now: a following ReLU(inplace=True) would change it
                store[name].append(out.detach().to("cpu", torch.float32).clone())
        return fn

    handles = [m.register_forward_hook(hook(n)) for n, m in layers.items()]
    device = _device(model)
    xs = _limit(batches, 1)
    try:
        with torch.no_grad():
            measuring = True  # one image first: the bytes per image decide how many images fit
            for x in xs:
                model(x.to(device))
            per_image = 4 * sum(sizes.values())
            n_images = min(max_images, max(1, (budget_mb << 20) // max(1, per_image)))
            measuring = False
            for x in _limit(batches, n_images):
                model(x.to(device))
    finally:
        for h in handles:
            h.remove()
    return {n: torch.cat(v) for n, v in store.items() if v}


def collect(kinds: Iterable[str], model: nn.Module, groups: list[Group], batches: list,
            loss_fn: Optional[LossFn] = None, *, seed: int = 0,
            calibration: Optional[Calibration] = None) -> dict[str, Tensors]:
    """The observations ``kinds`` for ``groups`` of ``model``.

    ``batches`` are the track's calibration batches; ``loss_fn(model, batch)`` is the task's training
    loss on one of them (``gradients``, ``sq_gradients``). ``seed`` (the run seed) seeds the sampled
    positions and labels; ``calibration`` supplies ``positions_per_sample``, ``activation_samples``,
    ``output_samples`` and ``output_budget_mb`` (defaults: those of :class:`specs.track.Calibration`).
    Shapes and units: :data:`specs.manifest.ObservationKind`.
    """
    kinds = list(kinds)
    keys = param_keys(groups)
    per_sample = calibration.positions_per_sample if calibration else _default("positions_per_sample")
    act_images = calibration.activation_samples if calibration else _default("activation_samples")
    out_images = calibration.output_samples if calibration else _default("output_samples")
    out_budget = calibration.output_budget_mb if calibration else _default("output_budget_mb")
    out: dict[str, Tensors] = {}
    was_training = model.training
    model.eval()
    try:
        if "inputs" in kinds or "output_gradients" in kinds:
            inputs, grads = _activations(model, groups, batches, seed, per_sample, act_images,
                                         gradients="output_gradients" in kinds)
        for kind in kinds:
            if kind == "weights":
                out[kind] = _weights(model, keys)
            elif kind == "gradients":
                out[kind] = _gradients(model, keys, batches, loss_fn, squared=False)
            elif kind == "sq_gradients":
                out[kind] = _gradients(model, keys, batches, loss_fn, squared=True)
            elif kind == "inputs":
                out[kind] = inputs
            elif kind == "output_gradients":
                out[kind] = grads
            elif kind == "outputs":
                out[kind] = _outputs(model, groups, batches, out_images, out_budget)
            else:
                raise HarnessError(f"observation {kind!r} is not provided by this harness version")
    finally:
        model.train(was_training)
    return out
