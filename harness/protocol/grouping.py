"""Dependency groups (Torch-Pruning's DepGraph) and their description for methods.

The harness owns the graph: it builds it, describes each prunable group in the
spec's terms (:class:`specs.messages.Group`), and physically removes the root
channels a plan selects (``DG.get_pruning_group(root, prune_out, idxs).prune()``).
Group ids are root layer names, so a plan computed on one model applies to a
deep copy of it.
"""

from __future__ import annotations

import contextlib
import contextvars
import copy
import math
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Callable, Optional

import torch
import torch.nn as nn
# timm before Torch-Pruning, which imports it under a bare ``except:``: a signal arriving then (a stop, say) would
# be swallowed, and Torch-Pruning's MACs counter would leave out timm's attention for the rest of the process
import timm  # noqa: F401
import torch_pruning as tp

from harness.errors import HarnessError
from specs.messages import Group, Member
from specs.base import one_line

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
    ``graph_fixup(graph)`` mends Torch-Pruning's graph right after it is traced (e.g. :func:`chunk_order`).
    """

    ignored_layers: list[nn.Module] = field(default_factory=list)
    unwrapped_parameters: Optional[list] = None  # [(nn.Parameter, pruning dim)]
    customized_pruners: Optional[dict] = None
    out_channel_groups: dict[nn.Module, int] = field(default_factory=dict)  # heads / group convs
    forward_fn: Optional[Callable] = None
    fixup: Optional[Callable[[nn.Module], None]] = None
    ignored_params: list = field(default_factory=list)  # bare parameters never pruned (a per-head bias table)
    graph_fixup: Optional[Callable[[tp.DependencyGraph], None]] = None  # mends the graph once it is traced

    def merged(self, other: "PruneConfig") -> "PruneConfig":
        """This config plus ``other``'s ignored layers, parameters, pruners and groups (other's fixup and
        forward_fn win when set)."""
        params = (self.unwrapped_parameters or []) + (other.unwrapped_parameters or [])
        pruners = {**(self.customized_pruners or {}), **(other.customized_pruners or {})}
        return PruneConfig(ignored_layers=[*self.ignored_layers, *other.ignored_layers],
                           unwrapped_parameters=params or None, customized_pruners=pruners or None,
                           out_channel_groups={**self.out_channel_groups, **other.out_channel_groups},
                           forward_fn=other.forward_fn or self.forward_fn, fixup=other.fixup or self.fixup,
                           ignored_params=[*self.ignored_params, *other.ignored_params],
                           graph_fixup=other.graph_fixup or self.graph_fixup)


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


class Untraceable(HarnessError):
    """Torch-Pruning cannot build the model's dependency graph; ``str()`` names the layer when known."""


def build_graph(model: nn.Module, example_inputs, config: PruneConfig) -> tp.DependencyGraph:
    """Torch-Pruning's dependency graph of ``model``, traced on ``example_inputs``.

    Raises :class:`Untraceable` (one line) when the forward pass or the graph analysis fails, naming
    the innermost layer that was running (the forward pass is watched with hooks).
    """
    running: list[nn.Module] = []  # the modules whose forward has begun and not ended

    def began(module, args) -> None:
        if module is model:  # a new forward pass (Torch-Pruning aborts a first probing one on purpose)
            running.clear()
        running.append(module)

    def ended(module, args, out) -> None:  # returns None: the output is left alone
        if running:
            running.pop()

    handles = []
    for m in model.modules():
        handles.append(m.register_forward_pre_hook(began))
        handles.append(m.register_forward_hook(ended))
    try:
        with shape_pass():
            DG = tp.DependencyGraph().build_dependency(
                model, example_inputs=example_inputs, forward_fn=config.forward_fn,
                unwrapped_parameters=config.unwrapped_parameters, customized_pruners=config.customized_pruners,
                ignored_params=config.ignored_params or None)
            if config.graph_fixup is not None:
                config.graph_fixup(DG)
            return _bounded(DG, model)
    except Exception as e:
        names = {m: n for n, m in model.named_modules()}
        if running:
            layer = running[-1]
            where = f"at layer {names.get(layer) or '(model)'!r} ({type(layer).__name__})"
        else:
            where = _graph_failure_site(e, names)
        raise Untraceable(f"Torch-Pruning cannot trace {type(model).__name__} {where}: {one_line(e)}; give the "
                          f"architecture a prune adapter (harness.models.PRUNE_ADAPTERS) or list the layer in "
                          f"the track's pruning.ignored_layers") from None
    finally:
        for h in handles:
            h.remove()


#: how many (layer, channels) steps Torch-Pruning's walk may take to collect one group, per dependency of the
#: graph. The longest walk measured on the zoo (ResNet, DenseNet, GoogLeNet, EfficientNet, ConvNeXt, ViT, Swin,
#: YOLOv8) takes 0.49 per dependency (timm's ConvNeXt-S 0.52, torchvision's ViT-B/16 0.86); a walk whose index
#: mappings send channels to ever new positions (a channel slice it reads at the wrong width, as in timm's
#: ReXNet) grows exponentially with depth and never ends.
WALK_STEPS_PER_DEPENDENCY = 4

#: ``[steps left]`` of the group walk running in this context (None: not counted)
_walk_steps: contextvars.ContextVar[Optional[list]] = contextvars.ContextVar("walk_steps", default=None)


class _WalkTooLong(Exception):
    pass


class _CountedGroup(tp.dependency.group.Group):
    """Torch-Pruning's group, counting the steps of a walk that :func:`_bounded` watches (others: as it is)."""

    def add_dep(self, dep, idxs):
        left = _walk_steps.get()
        if left is not None:
            left[0] -= 1
            if left[0] < 0:
                raise _WalkTooLong()
        super().add_dep(dep, idxs)


# get_pruning_group builds its groups with the Group of its own module: the counted one (no budget: the same)
tp.dependency.graph.Group = _CountedGroup


def _bounded(DG: tp.DependencyGraph, model: nn.Module) -> tp.DependencyGraph:
    """``DG`` whose group walks (``get_pruning_group``, also inside ``get_all_groups`` and ``Group.prune``)
    stop after :data:`WALK_STEPS_PER_DEPENDENCY` steps per dependency with :class:`Unprunable` naming the root
    layer, instead of running for hours."""
    steps = WALK_STEPS_PER_DEPENDENCY * sum(len(n.dependencies) for n in DG.module2node.values())
    walk = DG.get_pruning_group

    def get_pruning_group(module, pruning_fn, idxs):
        token = _walk_steps.set([steps])
        try:
            return walk(module, pruning_fn, idxs)
        except _WalkTooLong:
            layer = DG._module2name.get(module, type(module).__name__)
            raise _refuse(model, layer, f"Torch-Pruning's walk to collect the layers pruned with it took more than "
                                        f"{steps} steps ({WALK_STEPS_PER_DEPENDENCY} per dependency of the graph): "
                                        f"its index mappings send channels to ever new positions (a channel slice "
                                        f"or concatenation it reads at the wrong width)") from None
        finally:
            _walk_steps.reset(token)

    DG.get_pruning_group = get_pruning_group
    return DG


def chunk_order(DG: tp.DependencyGraph) -> None:
    """Every split's outputs in the order of its chunks. Torch-Pruning reads a split's ``i``-th output as its
    ``i``-th chunk (its sizes, offsets and index mappings), but lists the outputs in the order its trace reached
    them, backwards from the model's output: a chunk that feeds a concatenation directly comes before one that
    feeds it through an addition. Each output's grad_fn names the chunk it consumes. The concatenations' sizes,
    which the trace inferred from the misordered outputs, are then inferred again."""
    moved = False
    for node in DG.module2node.values():
        if node.type != tp.ops.OPTYPE.SPLIT:
            continue

        def chunk(out):
            return next((k for f, k in getattr(out.grad_fn, "next_functions", ()) if f is node.grad_fn), None)

        chunks = [chunk(o) for o in node.outputs]
        known = sorted(c for c in chunks if c is not None)
        if known == list(range(len(chunks))) and chunks != known:  # every output names its chunk, out of order
            node.outputs.sort(key=chunk)
            moved = True
    if moved:
        for node in DG.module2node.values():
            if node.type == tp.ops.OPTYPE.CONCAT:
                node.module.concat_sizes = None
        tp.dependency.index_mapping.update_index_mapping(DG)


def _graph_failure_site(error: Exception, names: dict) -> str:
    """Where Torch-Pruning's analysis of a traced graph failed: the innermost graph node its frames were
    working on, named by the nearest layer that feeds it."""
    node, tb = None, error.__traceback__
    while tb is not None:
        candidate = tb.tb_frame.f_locals.get("node")
        if isinstance(candidate, tp.dependency.Node):
            node = candidate
        tb = tb.tb_next
    if node is None:
        return "after the forward pass"
    op = type(node.module).__name__.strip("_")
    seen, queue = set(), [node]
    while queue:
        n = queue.pop(0)
        if n.module in names and isinstance(n.module, nn.Module):
            where = "at" if n is node else f"in a {op} after"
            return f"{where} layer {names[n.module]!r} ({type(n.module).__name__})"
        seen.add(id(n))
        queue.extend(i for i in n.inputs if id(i) not in seen)
    return f"in a {op} of its graph"


def channel_groups(DG: tp.DependencyGraph, tp_group, config: PruneConfig) -> int:
    """How many interleaved slices a group's channels come in (``Group.ch_groups``): the least common
    multiple of what its members impose, as Torch-Pruning's pruners detect it (a grouped conv's
    ``groups``, a GroupNorm's ``num_groups``; depthwise convs impose nothing, their channels are
    independent) and what the model's adapter sets for the root (attention heads)."""
    root = tp_group[0].dep.target.module
    n = int(config.out_channel_groups.get(root, 1))
    for dep, _ in tp_group:
        module = dep.target.module
        if not isinstance(module, nn.Module) or _depthwise(module):
            continue
        pruner = DG.get_pruner_of_module(module)
        if pruner is None:
            continue
        out = DG.is_out_channel_pruning_fn(dep.handler)
        n = math.lcm(n, int(pruner.get_out_channel_groups(module) if out else pruner.get_in_channel_groups(module)))
    return n


def _depthwise(module: nn.Module) -> bool:
    return (isinstance(module, nn.modules.conv._ConvNd) and module.groups > 1
            and module.groups == module.in_channels == module.out_channels)




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
                depthwise=kind == "conv" and _depthwise(module),
                idxs=[int(i) for i in idxs], root_idxs=[int(r) for r in root_idxs]))
        if not members:
            continue
        root_name = names[root]
        groups.append(Group(id=root_name, root=root_name, n_channels=len(tp_group[0].idxs),
                            ch_groups=channel_groups(DG, tp_group, config), members=members))
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
def count_macs_params(model: nn.Module, example_inputs, meta: bool = False) -> tuple[float, int]:
    """MACs and parameters of ``model`` as Torch-Pruning counts them (one sample; ``meta``: see
    :func:`count_layer_macs`)."""
    macs, params, _ = count_layer_macs(model, example_inputs, meta)
    return macs, params


@torch.no_grad()
def count_layer_macs(model: nn.Module, example_inputs, meta: bool = False) -> tuple[float, int, dict[str, float]]:
    """MACs and parameters of ``model`` plus each module's own MACs (by module name), as
    ``tp.utils.count_ops_and_params(model, example_inputs, layer_wise=True)`` counts them.

    By default that counter itself: a deep copy of the model and a real forward pass with its hooks. In
    progressive pruning that is a full copy and a full forward every round and every search probe, and its
    counts depend on shapes only. ``meta=True`` runs the same hooks (Torch-Pruning's own ``op_counter``
    machinery) on a weightless copy (:func:`meta_copy`), in a forward pass whose parameters, buffers and
    inputs are ``meta`` tensors (shapes, no data, no arithmetic); ``model`` is not touched. That count is
    exact only where the forward takes the same path on meta tensors as on real ones (a forward may branch
    on ``x.device`` or catch what fails on meta tensors): use it where :func:`meta_count_exact` said so for
    the model. A forward that fails on meta tensors (``.item()``, data-dependent shapes, tensors it makes on
    the CPU itself), and a model with forward hooks (they would see meta tensors), get the real counter."""
    counted = _count_on_meta(model, example_inputs) if meta and not has_forward_hooks(model) else None
    if counted is None:
        with shape_pass():
            counted = tp.utils.count_ops_and_params(model, example_inputs, layer_wise=True)
    macs, params, per_module, _ = counted
    names = {m: n for n, m in model.named_modules()}
    layers = {names[m]: float(v) for m, v in per_module.items() if v and m in names}
    return float(macs), int(params), layers


def meta_count_exact(model: nn.Module, example_inputs,
                     counted: Optional[tuple[float, int, dict[str, float]]] = None) -> tuple[float, int, dict[str, float], bool]:
    """Torch-Pruning's count of ``model`` (:func:`count_layer_macs`) and whether the meta-tensor count
    (``meta=True``) equals it: the same total, parameters and MACs module by module (the same modules
    reached). A model whose forward takes another path on meta tensors must be counted for real.
    ``counted``: Torch-Pruning's count of ``model`` (or of a model of the same shapes) already made, which
    is then not made again."""
    macs, params, layers = counted if counted is not None else count_layer_macs(model, example_inputs)
    if has_forward_hooks(model):
        return macs, params, layers, False
    return macs, params, layers, count_layer_macs(model, example_inputs, meta=True) == (macs, params, layers)


def has_forward_hooks(model: nn.Module) -> bool:
    """Whether a forward pass of ``model`` runs hooks (its modules' or global ones): hooks are the user's,
    and must not see meta tensors."""
    from torch.nn.modules import module as torch_module
    if torch_module._global_forward_hooks or torch_module._global_forward_pre_hooks:
        return True
    return any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())


def _count_on_meta(model: nn.Module, example_inputs, own: bool = False):
    """``count_ops_and_params(layer_wise=True)``'s result (per-module counts keyed by ``model``'s modules),
    from a meta forward pass of a weightless copy of ``model`` (``own``: of ``model`` itself, a throwaway
    weightless copy already); None when the forward fails on meta tensors."""
    from torch_pruning.utils import op_counter
    try:
        counted = model if own else meta_copy(model)
        op_counter.add_flops_counting_methods(counted)
        counted.eval()
        counted.start_flops_count(ost=None, verbose=False, ignore_list=[])
        meta_forward(counted, example_inputs)
        macs, params, per_module, per_module_params = counted.compute_average_flops_cost()
    except Exception:  # a forward that needs data
        return None
    finally:
        op_counter.CUSTOM_MODULES_MAPPING = {}
    if counted is not model:
        originals = dict(zip(counted.modules(), model.modules()))
        per_module = {originals[m]: v for m, v in per_module.items()}
        per_module_params = {originals[m]: v for m, v in per_module_params.items()}
    return macs, params, per_module, per_module_params


def to_meta(x):
    """``x`` with every tensor in it replaced by a ``meta`` tensor of its shape and dtype (no data)."""
    return torch.utils._pytree.tree_map(
        lambda t: torch.empty_like(t, device="meta") if isinstance(t, torch.Tensor) else t, x)


def meta_forward(model: nn.Module, example_inputs):
    """``model(example_inputs)`` with its parameters, buffers and the inputs as ``meta`` tensors: every
    module sees the shapes of a real pass and nothing is computed. ``model``'s tensors are not changed."""
    from torch.func import functional_call
    state = to_meta(dict((*model.named_parameters(remove_duplicate=False),
                          *model.named_buffers(remove_duplicate=False))))
    inputs = to_meta(example_inputs)
    kwargs = inputs if isinstance(inputs, dict) else {}
    args = () if kwargs else tuple(inputs) if isinstance(inputs, (tuple, list)) else (inputs,)
    with _shape_only_norms():
        return functional_call(model, state, args, kwargs, tie_weights=False, strict=False)


#: normalizations whose output has their input's shape; on meta tensors PyTorch runs them through its
#: Python decompositions, which cost more than the rest of a meta pass together
_NORMS = ("batch_norm", "layer_norm", "group_norm", "instance_norm")


@contextlib.contextmanager
def _shape_only_norms():
    """``torch.nn.functional``'s normalizations return an empty tensor of their input's shape when the
    input is a meta tensor (real tensors, e.g. another thread's, get the real function)."""
    import torch.nn.functional as F
    originals = {name: getattr(F, name) for name in _NORMS}

    def shape_only(real):
        def norm(input, *args, **kwargs):
            return torch.empty_like(input) if input.is_meta else real(input, *args, **kwargs)
        return norm

    for name, real in originals.items():
        setattr(F, name, shape_only(real))
    try:
        yield
    finally:
        for name, real in originals.items():
            setattr(F, name, real)


def meta_copy(model: nn.Module) -> nn.Module:
    """A copy of ``model`` whose parameters and buffers are ``meta`` tensors: the same modules and
    shapes (it can be traced, pruned and counted) without copying a byte of weights."""
    memo = {}
    for t in (*model.parameters(), *model.buffers()):
        meta = torch.empty_like(t, device="meta")
        memo[id(t)] = nn.Parameter(meta, t.requires_grad) if isinstance(t, nn.Parameter) else meta
    return copy.deepcopy(model, memo)


def layer_channels(model: nn.Module) -> dict[str, int]:
    """Output channels/features of every conv and linear layer."""
    out = {}
    for name, m in model.named_modules():
        if isinstance(m, nn.modules.conv._ConvNd):
            out[name] = int(m.out_channels)
        elif isinstance(m, nn.Linear):
            out[name] = int(m.out_features)
    return out


# --------------------------------------------------------------------------- applicability


class NotApplicable(HarnessError):
    """A method's manifest ``requires`` what the model does not offer (one line, names an example group)."""


def root_output_shapes(model: nn.Module, example_inputs, groups: list[Group]) -> dict[str, tuple[int, ...]]:
    """The output shape of every group's root layer on ``example_inputs`` (its first call)."""
    modules = dict(model.named_modules())
    shapes: dict[str, tuple[int, ...]] = {}

    def hook(gid):
        def fn(module, args, out):
            if gid not in shapes and isinstance(out, torch.Tensor):
                shapes[gid] = tuple(out.shape)
        return fn

    handles = [modules[g.root].register_forward_hook(hook(g.id)) for g in groups if g.root in modules]
    try:
        with torch.no_grad():
            model(*example_inputs) if isinstance(example_inputs, (tuple, list)) else model(example_inputs)
    finally:
        for h in handles:
            h.remove()
    return shapes


def channel_map(module: nn.Module, shape: tuple[int, ...]) -> tuple[int, ...]:
    """The per-channel map of one image in an output of ``shape``: conv ``[N, C, *map]``, linear
    ``[N, *map, C]`` (a channels-last map, tokens, or nothing)."""
    return tuple(shape[1:-1]) if isinstance(module, nn.Linear) else tuple(shape[2:])


def _meets(need: str, group: Group, module: nn.Module, shape) -> tuple[bool, str]:
    if need == "batchnorm":
        return any(m.kind == "bn" and m.weight for m in group.members), "has no affine BatchNorm"
    if need == "spatial_maps":
        if shape is None:
            return False, "was not run by the forward pass"
        cmap = channel_map(module, shape)
        ok = len(cmap) == 2
        what = {0: "a single value", 1: f"a sequence of {cmap[0] if cmap else 0}"}.get(
            len(cmap), f"a {'x'.join(map(str, cmap))} map")
        return ok, f"gives each channel {what} per image ({type(module).__name__} output {list(shape)})"
    raise ValueError(f"unknown need {need!r}")


def check_applicable(manifest, model: nn.Module, example_inputs, groups: list[Group]) -> None:
    """Raise :class:`NotApplicable` when ``model``'s ``groups`` do not offer what ``manifest.requires``
    (:class:`specs.manifest.Requirement`): ``groups: all`` - every group must meet the need; ``any`` -
    at least one."""
    if not manifest.requires:
        return
    modules = dict(model.named_modules())
    shapes = root_output_shapes(model, example_inputs, groups) if any(
        r.need == "spatial_maps" for r in manifest.requires) else {}
    for req in manifest.requires:
        results = [(g, *_meets(req.need, g, modules[g.root], shapes.get(g.id))) for g in groups]
        failing = [(g, why) for g, ok, why in results if not ok]
        if not failing or (req.groups == "any" and len(failing) < len(results)):
            continue
        g, why = failing[0]
        count = "no group does" if len(failing) == len(results) else f"{len(failing)} of {len(results)} groups do not"
        because = f" ({req.reason})" if req.reason else ""
        raise NotApplicable(
            f"{manifest.id} cannot score {type(model).__name__} meaningfully: it needs {req.need.replace('_', ' ')}"
            f"{because} and {count} (group {g.id} {why}); pick another method"
            + (", or list such layers in the track's pruning.ignored_layers" if len(failing) < len(results) else ""))


# --------------------------------------------------------------------------- groups the harness can prune


class Unprunable(HarnessError):
    """The harness cannot describe or prune the architecture correctly; ``str()`` names the layer."""


def _refuse(model: nn.Module, layer: str, what: str, parameter: Optional[str] = None,
            advice: Optional[str] = None) -> Unprunable:
    if advice is not None:
        return Unprunable(f"cannot prune {type(model).__name__} at layer {layer!r}: {what}; {advice}")
    if parameter is not None:  # a bare parameter cannot be listed in ignored_layers: only an adapter can place it
        return Unprunable(f"cannot prune {type(model).__name__} at {'parameter' if layer == parameter else 'layer'} "
                          f"{layer!r}: {what}; declare {parameter} with the dim that holds its channels in the "
                          f"architecture's prune adapter (PruneConfig.unwrapped_parameters, registered in "
                          f"harness.models.PRUNE_ADAPTERS)")
    return Unprunable(f"cannot prune {type(model).__name__} at layer {layer!r}: {what}; give the architecture a "
                      f"prune adapter (harness.models.PRUNE_ADAPTERS) or list the layer in the track's "
                      f"pruning.ignored_layers")


def _extent(member: Member, tensor: torch.Tensor) -> int:
    """How many channels ``member.idxs`` may index in ``tensor`` (its weight or bias)."""
    from specs.tensors import grouped, member_dim

    if grouped(member) and tensor.dim() > 1:  # blocks of a grouped conv: groups x columns
        return int(tensor.shape[1]) * member.conv_groups
    return int(tensor.shape[member_dim(member, tensor)])


def floor_plan(groups: list[Group], fraction: float) -> dict[str, list[int]]:
    """Every group pruned to its floor: each of its ``ch_groups`` slices keeps ``ceil(fraction * n)`` (at
    least one) of its ``n`` channels, the first ones."""
    plan = {}
    for g in groups:
        n = g.n_channels // g.ch_groups
        keep = max(1, math.ceil(fraction * n))
        plan[g.id] = [s * n + j for s in range(g.ch_groups) for j in range(keep, n)]
    return plan


def _check_indices(model: nn.Module, config: PruneConfig, groups: list[Group]) -> None:
    """The part of :func:`check_groups` that reads the groups only: every group splits into its slices,
    and every member's indices fit its root channels and its tensors."""
    tensors = {**dict(model.named_parameters()), **dict(model.named_buffers())}
    declared = {id(p): d for p, d in (config.unwrapped_parameters or [])}  # a bare parameter's pruning dim
    params = dict(model.named_parameters())
    for g in groups:
        if g.n_channels % g.ch_groups:
            raise _refuse(model, g.root, f"{g.n_channels} channels do not split into {g.ch_groups} slices")
        for m in g.members:
            if any(not 0 <= r < g.n_channels for r in m.root_idxs):
                raise _refuse(model, m.layer, f"group {g.id} maps a channel outside its {g.n_channels} root channels")
            # a bias follows the outputs: pruning a layer's inputs leaves it alone
            for key in filter(None, (m.weight, m.bias if m.dim == "out" or m.depthwise else None)):
                if m.kind == "parameter" and key in params and id(params[key]) in declared:
                    extent = int(params[key].shape[declared[id(params[key])]])
                else:
                    extent = _extent(m, tensors[key]) if key in tensors else None
                if extent is not None and any(not 0 <= i < extent for i in m.idxs):
                    raise _refuse(model, m.layer, f"group {g.id} prunes {m.dim} channel {max(m.idxs)} of {key}, "
                                                  f"which has {extent}", key if m.kind == "parameter" else None)


def check_groups(model: nn.Module, example_inputs, config: PruneConfig, groups: list[Group],
                 fraction: float = 0.1) -> None:
    """Raise :class:`Unprunable` (one line naming the layer) unless ``groups`` describe ``model`` correctly
    and can be pruned: every member's indices fit its tensor, and a copy pruned to the floor (every group
    at ``fraction`` of its channels, :func:`floor_plan`) has no empty layer, keeps every per-channel
    parameter at its layer's new width and runs forward. Run before a method sees the groups, so that an
    architecture the harness cannot handle is bad input, never a method's ``IndexError`` or an internal
    error mid-run. ``model`` itself is not changed."""
    import copy

    _check_indices(model, config, groups)
    dry, config = copy.deepcopy((model, config))  # config's layers and parameters, as the copy's
    dry.eval()
    try:
        apply_plan(dry, example_inputs, config, floor_plan(groups, fraction))
    except (Untraceable, Unprunable):  # a walk that never ends (_bounded) says so itself
        raise
    except Exception as e:
        raise _refuse(model, groups[0].root if groups else "(model)",
                      f"pruning its groups to the floor raised {one_line(e)}") from None
    for name, module in dry.named_modules():
        w = getattr(module, "weight", None)
        if isinstance(module, (nn.modules.conv._ConvNd, nn.Linear)) and isinstance(w, torch.Tensor) and w.numel() == 0:
            raise _refuse(model, name, "pruning to the floor leaves it with no channels")
    _check_layer_scales(model, dry)
    _check_runs(model, dry, example_inputs, training=False)
    with torch.random.fork_rng(devices=[]):  # dropout / stochastic depth leave the caller's stream alone
        _check_runs(model, dry.train(), example_inputs, training=True)


def _check_runs(model: nn.Module, dry: nn.Module, example_inputs, training: bool) -> None:
    """``dry`` (``model`` pruned to the floor) runs forward - in training mode on a batch of two (BatchNorm
    needs more than one value per channel) and backward through its outputs too, as pretraining and
    retraining will - or :class:`Unprunable` naming the innermost layer that was running (a layer only
    training mode uses, e.g. an auxiliary head, is not in the graph traced in eval mode)."""
    running: list[nn.Module] = []

    def began(module, args) -> None:
        running.append(module)

    def ended(module, args, out) -> None:  # returns None: the output is left alone
        if running:
            running.pop()

    x = example_inputs
    if training:  # a second sample, different from the first
        x = [torch.cat([t, torch.rand_like(t)]) if isinstance(t, torch.Tensor) and t.is_floating_point() else t
             for t in (x if isinstance(x, (tuple, list)) else [x])]
    handles = [h for m in dry.modules() for h in (m.register_forward_pre_hook(began), m.register_forward_hook(ended))]
    what = "a training-mode forward" if training else "forward"
    try:
        with shape_pass(), torch.set_grad_enabled(training):
            out = dry(*x) if isinstance(x, (tuple, list)) else dry(x)
            if training:
                what = "a training-mode backward"
                running.clear()
                outputs = [t for t in _tensors(out) if t.requires_grad and t.is_floating_point()]
                if outputs:
                    sum(t.float().sum() for t in outputs).backward()
    except Exception as e:
        names = {m: n for n, m in dry.named_modules()}
        layer = names.get(running[-1], "(model)") if running else "(model)"
        why = (" - eval mode runs, so training mode takes a path of its own, which the dependency graph (traced "
               "in eval mode) does not see" if training else "")
        advice = ("make that branch run in eval mode too (its output may be discarded there: the graph then sees "
                  "it), or list the layers that feed it in the track's pruning.ignored_layers (listing the branch "
                  "itself does not help: its inputs are what is pruned)") if training else None
        raise _refuse(model, layer or "(model)", f"pruned to the floor it no longer runs {what} "
                                                 f"({one_line(e)}){why}", advice=advice) from None
    finally:
        for h in handles:
            h.remove()
        dry.zero_grad(set_to_none=True)


def _tensors(out) -> list[torch.Tensor]:
    """Every tensor in a forward's output (a tensor, a mapping or ``transformers`` output, a (named) tuple or
    list, nested): what a backward through all of a task's outputs reaches."""
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, Mapping):
        return [t for v in out.values() for t in _tensors(v)]
    if isinstance(out, (tuple, list)):
        return [t for v in out for t in _tensors(v)]
    return []


def _check_layer_scales(model: nn.Module, pruned: nn.Module) -> None:
    """Every per-channel parameter (``[C]`` or ``[C, 1, 1]`` owned by a block, e.g. a layer scale) is at the
    width of a pruned layer beside it: Torch-Pruning leaves one it was not told about at its old width."""
    from harness.models.heads import layer_scales

    before = {id(p): n for n, p in model.named_parameters()}
    named = dict(pruned.named_parameters())
    widths = {int(getattr(m, "out_channels", getattr(m, "out_features", 0)) or 0)
              for m in pruned.modules() if isinstance(m, (nn.modules.conv._ConvNd, nn.Linear))}
    widths |= {int(m.normalized_shape[0]) for m in pruned.modules() if isinstance(m, nn.LayerNorm)}
    for p, _ in layer_scales(model):
        name = before.get(id(p))
        new = named.get(name)
        if name is None or new is None:
            continue
        if new.shape[0] == p.shape[0] and new.shape[0] not in widths:
            raise _refuse(model, name.rpartition(".")[0] or name,
                          f"per-channel parameter {name} stays at its width {p.shape[0]}, which no pruned layer "
                          f"has any more", name)
