"""Dependency groups (Torch-Pruning's DepGraph) and their description for methods.

The harness owns the graph: it builds it, describes each prunable group in the
spec's terms (:class:`specs.messages.Group`), and physically removes the root
channels a plan selects (``DG.get_pruning_group(root, prune_out, idxs).prune()``).
Group ids are root layer names, so a plan computed on one model applies to a
deep copy of it.
"""

from __future__ import annotations

import contextlib
import warnings
from dataclasses import dataclass, field
from typing import Callable, Optional

import torch
import torch.nn as nn
import torch_pruning as tp

from specs.messages import Group, Member

ROOT_TYPES = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose2d, nn.Linear)


@dataclass
class PruneConfig:
    """What a model adapter tells the graph builder (everything optional).

    ``ignored_layers`` are never group roots; a container (e.g. a detection head) stands for every
    layer inside it. Their input channels still follow the layers that feed them. ``out_channel_groups``
    maps a root layer to the number of interleaved slices whose matching channels are removed together
    (the planner averages their scores): group convs, or ``3 * num_heads`` for a fused qkv projection
    so every head of q, k and v keeps the same head dim. ``fixup(model)`` runs after channels are
    removed, before anything else touches the model (e.g. it updates attention head sizes, which
    Torch-Pruning cannot), so a pruned copy is forward-consistent when its MACs are measured.
    """

    ignored_layers: list[nn.Module] = field(default_factory=list)
    unwrapped_parameters: Optional[list] = None  # [(nn.Parameter, pruning dim)]
    customized_pruners: Optional[dict] = None
    out_channel_groups: dict[nn.Module, int] = field(default_factory=dict)  # heads / group convs
    forward_fn: Optional[Callable] = None
    fixup: Optional[Callable[[nn.Module], None]] = None

    def merged(self, other: "PruneConfig") -> "PruneConfig":
        """This config plus ``other``'s ignored layers, parameters, pruners and groups (other's fixup and
        forward_fn win when set)."""
        params = (self.unwrapped_parameters or []) + (other.unwrapped_parameters or [])
        pruners = {**(self.customized_pruners or {}), **(other.customized_pruners or {})}
        return PruneConfig(ignored_layers=[*self.ignored_layers, *other.ignored_layers],
                           unwrapped_parameters=params or None, customized_pruners=pruners or None,
                           out_channel_groups={**self.out_channel_groups, **other.out_channel_groups},
                           forward_fn=other.forward_fn or self.forward_fn, fixup=other.fixup or self.fixup)


def ignored_modules(config: PruneConfig) -> list[nn.Module]:
    """``config.ignored_layers`` with every container expanded to the modules inside it."""
    seen: dict[int, nn.Module] = {}
    for layer in config.ignored_layers:
        for m in layer.modules():
            seen.setdefault(id(m), m)
    return list(seen.values())


def _kind(module) -> tuple[str, bool]:
    if isinstance(module, nn.Parameter):
        return "parameter", False
    if isinstance(module, nn.modules.conv._ConvNd):
        return "conv", bool(getattr(module, "transposed", False))
    if isinstance(module, nn.Linear):
        return "linear", False
    if isinstance(module, nn.modules.batchnorm._BatchNorm):
        return "bn", False
    if isinstance(module, nn.LayerNorm):
        return "layernorm", False
    if isinstance(module, nn.GroupNorm):
        return "groupnorm", False
    if isinstance(module, nn.Embedding):
        return "embedding", False
    return "other", False


@contextlib.contextmanager
def shape_pass():
    """For forward passes whose outputs only matter through their shapes (tracing the graph, counting
    MACs): oneDNN off. Every pruned model has new layer shapes, and oneDNN compiles kernels for each new
    shape on first use, which costs more than the pass itself (4-5x on a batch-1 CIFAR ResNet-18)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch warns about oneDNN's TF32 flag whenever the flags change
        with torch.backends.mkldnn.flags(enabled=False):
            yield


def build_graph(model: nn.Module, example_inputs, config: PruneConfig) -> tp.DependencyGraph:
    with shape_pass():
        return tp.DependencyGraph().build_dependency(
            model, example_inputs=example_inputs, forward_fn=config.forward_fn,
            unwrapped_parameters=config.unwrapped_parameters, customized_pruners=config.customized_pruners)


def describe_groups(model: nn.Module, example_inputs, config: PruneConfig,
                    graph: Optional[tp.DependencyGraph] = None) -> list[Group]:
    """All prunable groups of ``model``, rooted at conv/linear output channels. ``graph``: the model's
    dependency graph when already built (it stays valid while the model is pruned through it)."""
    DG = graph or build_graph(model, example_inputs, config)
    names = {m: n for n, m in model.named_modules()}
    params = {p: n for n, p in model.named_parameters()}
    groups = []
    for tp_group in DG.get_all_groups(ignored_layers=ignored_modules(config), root_module_types=ROOT_TYPES):
        root = tp_group[0].dep.target.module
        members = []
        for i, (dep, idxs) in enumerate(tp_group):
            module = dep.target.module
            name = params.get(module) if isinstance(module, nn.Parameter) else names.get(module)
            root_idxs = tp_group[i].root_idxs
            if name is None or root_idxs is None or any(r is None for r in root_idxs):
                continue  # functional ops carry no parameters; Torch-Pruning's importances skip them too
            kind, transposed = _kind(module)
            if kind == "parameter":
                weight, bias = name, None
            else:
                w, b = getattr(module, "weight", None), getattr(module, "bias", None)
                weight = f"{name}.weight" if isinstance(w, nn.Parameter) else None
                bias = f"{name}.bias" if isinstance(b, nn.Parameter) else None
            conv_groups = int(getattr(module, "groups", 1)) if kind == "conv" else 1
            members.append(Member(
                layer=name, module_type=type(module).__name__, kind=kind,
                dim="out" if DG.is_out_channel_pruning_fn(dep.handler) else "in",
                weight=weight, bias=bias, transposed=transposed, conv_groups=conv_groups,
                depthwise=kind == "conv" and conv_groups > 1 and conv_groups == module.in_channels,
                idxs=[int(i) for i in idxs], root_idxs=[int(r) for r in root_idxs]))
        if not members:
            continue
        root_name = names[root]
        groups.append(Group(id=root_name, root=root_name, n_channels=len(tp_group[0].idxs),
                            ch_groups=int(config.out_channel_groups.get(root, 1)), members=members))
    return groups


def apply_plan(model: nn.Module, example_inputs, config: PruneConfig, plan: dict[str, list[int]],
               graph: Optional[tp.DependencyGraph] = None) -> None:
    """Remove root channels ``plan[group id]`` from ``model`` in place (through ``graph``, its dependency
    graph, when given)."""
    plan = {gid: idxs for gid, idxs in plan.items() if idxs}
    if not plan:
        return
    DG = graph or build_graph(model, example_inputs, config)
    modules = dict(model.named_modules())
    for gid, idxs in plan.items():
        root = modules[gid]
        handler = DG.get_pruner_of_module(root).prune_out_channels
        group = DG.get_pruning_group(root, handler, sorted(int(i) for i in idxs))
        group.prune()
    if config.fixup is not None:
        config.fixup(model)


@torch.no_grad()
def count_macs_params(model: nn.Module, example_inputs) -> tuple[float, int]:
    """MACs and parameters of ``model`` as Torch-Pruning counts them (one sample)."""
    with shape_pass():
        macs, params = tp.utils.count_ops_and_params(model, example_inputs)  # counts on a deep copy
    return float(macs), int(params)


@torch.no_grad()
def count_layer_macs(model: nn.Module, example_inputs) -> tuple[float, int, dict[str, float]]:
    """:func:`count_macs_params` plus each module's own MACs (by module name; the same count)."""
    with shape_pass():
        macs, params, per_module, _ = tp.utils.count_ops_and_params(model, example_inputs, layer_wise=True)
    names = {m: n for n, m in model.named_modules()}
    layers = {names[m]: float(v) for m, v in per_module.items() if v and m in names}
    return float(macs), int(params), layers


def layer_channels(model: nn.Module) -> dict[str, int]:
    """Output channels/features of every conv and linear layer."""
    out = {}
    for name, m in model.named_modules():
        if isinstance(m, nn.modules.conv._ConvNd):
            out[name] = int(m.out_channels)
        elif isinstance(m, nn.Linear):
            out[name] = int(m.out_features)
    return out
