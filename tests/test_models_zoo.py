"""The model zoo behind the paper's tracks, generated from the registry: every registered classifier
and variant is grouped, scored (magnitude_l2 through the in-process runner, and a gradient criterion
from the harness's own observations), pruned to 2x and 4x by the harness's speedup search, run, and
saved and reloaded whole (the YOLOv8 detectors get the same in tests/test_detection.py, with these
helpers). Plus what is specific to each family: torchvision parity of the ImageNet variants, ViT
attention bookkeeping, the ImageFolder loader, the paper's tracks, and `pbench-harness evaluate` on
ViT-Small end to end.

Tiny inputs keep this fast (32 px classifiers, 64 px detectors, CIFAR nets at 1/8 width); the
structure that pruning sees is the same as at full size.
"""

from __future__ import annotations

import copy
import inspect
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from harness.protocol.grouping import PruneConfig, apply_plan, count_macs_params, describe_groups
from harness.models import MODELS, VARIANTS, classifier_of, create_model, prune_config_of
from harness.protocol.observations import collect
from harness.protocol.pruning import make_planner, search_speedup
from harness.registry import UnknownName
from specs.sdk import PARAM_KINDS, member_rows, reduce_to_root

TARGETS = (2.0, 4.0)


@dataclass
class Case:
    """How one registry entry is exercised: factory arguments, input side, task."""

    entry: str                       # "resnet18", "resnet18/imagenet", "yolov8n", ...
    size: int = 32
    classes: int = 10
    kwargs: dict = field(default_factory=dict)
    detection: bool = False

    @property
    def name(self) -> str:
        return self.entry.partition("/")[0]

    @property
    def variant(self):
        return self.entry.partition("/")[2] or None


def case_for(entry: str) -> Case:
    name, _, variant = entry.partition("/")
    if name.startswith("yolo"):
        return Case(entry, size=64, classes=80, detection=True)
    factory = MODELS.get(name) if not variant else VARIANTS.get(entry)
    # eager (CIFAR-family) factories take a width multiplier; lazy heavy families are built at full width
    width = not isinstance(factory, str) and "width" in inspect.signature(factory).parameters
    return Case(entry, kwargs={"width": 0.125} if width else {})


ENTRIES = MODELS.names() + VARIANTS.names()
#: classifiers are searched here; detectors (the YOLOv8 family) in tests/test_detection.py, which
#: reuses these helpers. The ImageNet VGG-19 is in no PruningBench setting, and its 102 M-parameter
#: classifier makes every probe of a speedup search a 0.5 GB copy: it gets test_imagenet_vgg19.
SEARCHED = [e for e in ENTRIES if not case_for(e).detection and e != "vgg19/imagenet"]


def build(case: Case) -> nn.Module:
    torch.manual_seed(0)
    kwargs = dict(case.kwargs, **({"variant": case.variant} if case.variant else {}))
    return create_model(case.name, num_classes=case.classes, in_chans=3, image_size=case.size, **kwargs).eval()


def config_for(case: Case):
    """What the tasks do: the architecture's adapter, plus the classifier's outputs for classification."""
    def config(model: nn.Module) -> PruneConfig:
        own = PruneConfig() if case.detection else PruneConfig(ignored_layers=[classifier_of(model)])
        return prune_config_of(model).merged(own)
    return config


def calibration(case: Case, n: int = 4) -> list:
    g = torch.Generator().manual_seed(1)
    x = torch.rand(n, 3, case.size, case.size, generator=g)
    if not case.detection:
        return [(x, torch.randint(0, case.classes, (n,), generator=g))]
    y = torch.full((n, 3, 5), -1.0)  # two boxes per image, padded to three
    for i in range(n):
        for k in range(2):
            cx, cy = (0.3 + 0.4 * torch.rand(2, generator=g)).tolist()
            w, h = (0.1 + 0.3 * torch.rand(2, generator=g)).tolist()
            y[i, k] = torch.tensor([float((i + k) % case.classes), cx, cy, w, h])
    return [(x, y)]


def loss_fn(case: Case):
    if case.detection:
        from harness.tasks.detection import detection_loss
        return lambda model, batch: detection_loss(model, *batch)
    return lambda model, batch: F.cross_entropy(model(batch[0]), batch[1])


def magnitude_scores(model, groups) -> dict:
    from harness.methods import find_method
    from harness.runners import client_class

    with client_class("inprocess")(find_method("magnitude_l2"), {}, 0, "cpu") as client:
        return client.score(0, groups, collect(["weights"], model, groups, []))


def taylor_scores(model, groups, case: Case) -> dict:
    """First-order Taylor |sum w * dL/dw| per channel, from the harness's gradient observations."""
    obs = collect(["weights", "gradients"], model, groups, calibration(case), loss_fn(case))
    scores = {}
    for g in groups:
        parts = [(m, (member_rows(m, obs["weights"][m.weight]) * member_rows(m, obs["gradients"][m.weight]))
                  .sum(1).abs()) for m in g.members if m.kind in PARAM_KINDS and m.weight]
        scores[g.id] = reduce_to_root(g, parts, "sum")
    return scores


def outputs(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        out = model(x)
    return out[0] if isinstance(out, (tuple, list)) else out


@pytest.fixture(autouse=True)
def _threads():
    n = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models: threads only add contention on a shared machine
    yield
    torch.set_num_threads(n)


# --- every registered model and variant: group, score, prune to 2x and 4x, run, save/reload ----------


def prune_to_targets(entry: str, criterion: str, tmp_path: Path) -> dict:
    """Group, score, search each of TARGETS, run and save/reload; returns the pruned models by target."""
    case = case_for(entry)
    model, config = build(case), config_for(case)
    example = torch.rand(1, 3, case.size, case.size)
    groups = describe_groups(model, example, config(model))
    assert groups, "no prunable group"
    scores = magnitude_scores(model, groups) if criterion == "magnitude_l2" else taylor_scores(model, groups, case)
    assert set(scores) == {g.id for g in groups}
    base_macs, base_params = count_macs_params(model, example)
    base_channels = {g.id: g.n_channels for g in groups}
    x = torch.rand(2, 3, case.size, case.size)
    reference = outputs(model, x)
    pruned_by_target = {}
    for target in TARGETS:
        planner = make_planner(groups, scores, base_channels, "protected_global", 0.1, seed=0)
        found = search_speedup(model, example, config, planner, base_macs, base_macs, target)
        pruned = found.model
        assert base_macs / found.macs >= target * (1 - 1e-9), f"{entry} reached only {base_macs / found.macs:.3f}x"
        assert found.params < base_params
        out = outputs(pruned, x)
        assert out.shape == reference.shape and torch.isfinite(out).all()
        # the floor holds: every group keeps >= 10% of its root channels
        after = dict(pruned.named_modules())
        for g in groups:
            kept = getattr(after[g.id], "out_channels", None) or after[g.id].out_features
            assert kept >= max(1, math.ceil(0.1 * (g.n_channels // g.ch_groups))) * g.ch_groups
        # saved whole (fp32) and reloaded: same function, same measured MACs
        path = tmp_path / f"{target:g}x.pt"
        torch.save(copy.deepcopy(pruned).cpu().float(), path)
        reloaded = torch.load(path, weights_only=False).eval()
        assert torch.allclose(outputs(reloaded, x), out, atol=1e-5)
        assert count_macs_params(reloaded, example)[0] == found.macs
        pruned_by_target[target] = pruned
    return pruned_by_target


@pytest.mark.parametrize("criterion", ["magnitude_l2", "taylor"])
@pytest.mark.parametrize("entry", SEARCHED)
def test_prunes_to_2x_and_4x(entry, criterion, tmp_path):
    pruned = prune_to_targets(entry, criterion, tmp_path)
    if entry == "vit_small":  # attention stays consistent: heads kept, common head dim, fused == eager
        x = torch.rand(2, 3, 32, 32)
        for model in pruned.values():
            assert {(b.attn.num_heads, b.attn.qkv.out_features % 18) for b in model.blocks} == {(6, 0)}
            fused = outputs(model, x)
            for b in model.blocks:
                b.attn.fused_attn = False
            assert torch.allclose(outputs(model, x), fused, atol=1e-5)
        assert len({b.attn.head_dim for b in pruned[4.0].blocks}) > 1  # global ranking: blocks differ


def test_the_zoo_is_registered():
    assert {"resnet18", "resnet50", "vgg19", "vit_small", "yolov8", "yolov8n", "yolov8s", "yolov8m",
            "yolov8l"} <= set(MODELS.names())
    assert {"resnet18/imagenet", "resnet50/imagenet", "vgg19/imagenet"} <= set(VARIANTS.names())
    with pytest.raises(UnknownName, match="did you mean 'resnet18/imagenet'"):
        create_model("resnet18", num_classes=10, variant="imagenet1k")


# --- ImageNet variants: exactly torchvision's architectures ---------------------------------------------


@pytest.mark.parametrize("name, reference, params", [
    ("resnet18", "resnet18", 11_689_512), ("resnet50", "resnet50", 25_557_032), ("vgg19", "vgg19_bn", 143_678_248)])
def test_imagenet_variants_are_torchvision(name, reference, params):
    import torchvision

    ours = create_model(name, num_classes=1000, image_size=224, variant="imagenet")
    ref = getattr(torchvision.models, reference)(weights=None)
    assert type(ours) is type(ref)
    assert [(k, tuple(v.shape)) for k, v in ours.state_dict().items()] == \
           [(k, tuple(v.shape)) for k, v in ref.state_dict().items()]
    assert sum(p.numel() for p in ours.parameters()) == params
    # `variant: cifar` names the default entry explicitly
    cifar = create_model(name, num_classes=10, variant="cifar", width=0.125)
    assert type(cifar).__module__.startswith("harness.models.cifar")


def test_imagenet_vgg19():
    """The lighter checks for the ImageNet VGG-19 (see SEARCHED): group, prune one plan, run, save."""
    case = case_for("vgg19/imagenet")
    model, config = build(case), config_for(case)
    example = torch.rand(1, 3, 32, 32)
    groups = describe_groups(model, example, config(model))
    macs0, _ = count_macs_params(model, example)
    plan = {g.id: list(range(g.n_channels // 2)) for g in groups}
    apply_plan(model, example, config(model), plan)
    assert count_macs_params(model, example)[0] < macs0 / 2
    assert classifier_of(model).out_features == case.classes
    assert outputs(model, torch.rand(2, 3, 32, 32)).shape == (2, case.classes)


def test_imagenet_variant_single_channel():
    model = create_model("resnet18", num_classes=10, in_chans=1, variant="imagenet").eval()
    assert outputs(model, torch.rand(2, 1, 32, 32)).shape == (2, 10)


# --- ViT-Small: head dims, bare parameters, attention attributes -------------------------------------


def _vit(size: int = 32) -> nn.Module:
    torch.manual_seed(0)
    return create_model("vit_small", num_classes=10, image_size=size).eval()


def test_vit_prune_config():
    model = _vit()
    cfg = prune_config_of(model)
    assert {id(p) for p, _ in cfg.unwrapped_parameters} == {id(model.pos_embed), id(model.cls_token)}
    assert all(dim == 2 for _, dim in cfg.unwrapped_parameters)
    assert {id(k): v for k, v in cfg.out_channel_groups.items()} == {id(b.attn.qkv): 18 for b in model.blocks}
    groups = {g.id: g for g in describe_groups(model, torch.rand(1, 3, 32, 32), config_for(Case("vit_small"))(model))}
    qkv = groups["blocks.0.attn.qkv"]
    assert (qkv.n_channels, qkv.ch_groups) == (1152, 18)
    # the embedding dim is one group: patch embedding, every norm and residual, pos_embed, cls_token
    embed = next(g for g in groups.values() if any(m.layer == "pos_embed" for m in g.members))
    assert embed.n_channels == 384 and {"patch_embed.proj", "cls_token", "norm", "head"} <= {m.layer for m in embed.members}
    assert "head" not in groups  # the classifier keeps its outputs


def test_vit_pruned_heads_equal_the_masked_model():
    """Removing head dims D from every head equals zeroing them in the unpruned model, when both score
    with the same scale: Torch-Pruning's qkv -> proj index mapping and our head bookkeeping agree."""
    model = _vit()
    example, x = torch.rand(1, 3, 32, 32), torch.rand(2, 3, 32, 32)
    dims = [1, 5, 17, 40, 63]
    plan = {"blocks.3.attn.qkv": sorted(d + 64 * k for d in dims for k in range(18))}
    pruned = copy.deepcopy(model)
    cfg = config_for(Case("vit_small"))
    apply_plan(pruned, example, cfg(pruned), plan)
    a = pruned.blocks[3].attn
    assert (a.num_heads, a.head_dim, a.attn_dim, a.qkv.out_features, a.proj.in_features) == (6, 59, 354, 1062, 354)
    assert a.scale == pytest.approx(59 ** -0.5)
    assert all(b.attn.head_dim == 64 for i, b in enumerate(pruned.blocks) if i != 3)
    masked = copy.deepcopy(model)
    rows = torch.tensor(plan["blocks.3.attn.qkv"])
    with torch.no_grad():
        masked.blocks[3].attn.qkv.weight[rows] = 0
        masked.blocks[3].attn.qkv.bias[rows] = 0
    for m in (masked, pruned):
        for b in m.blocks:
            b.attn.fused_attn = False
        m.blocks[3].attn.scale = 64 ** -0.5
    assert torch.allclose(outputs(pruned, x), outputs(masked, x), atol=1e-5)


def test_vit_prunes_in_two_rounds():
    """Head groups are re-derived from the current shapes, so a second round works too (on a 2-block
    ViT-Small: the adapter is found by class, whatever the depth)."""
    import timm

    torch.manual_seed(0)
    model = timm.create_model("vit_small_patch16_224", pretrained=False, num_classes=10, img_size=32, depth=2).eval()
    example = torch.rand(1, 3, 32, 32)
    cfg = config_for(Case("vit_small"))
    base, _ = count_macs_params(model, example)
    macs, channels = base, None
    for target in (1.5, 3.0):
        groups = describe_groups(model, example, cfg(model))
        channels = channels or {g.id: g.n_channels for g in groups}
        planner = make_planner(groups, magnitude_scores(model, groups), channels, "protected_global", 0.1, seed=0)
        found = search_speedup(model, example, cfg, planner, base, macs, target)
        model, macs = found.model, found.macs
    assert base / macs >= 3.0 * (1 - 1e-9)
    assert outputs(model, torch.rand(2, 3, 32, 32)).shape == (2, 10)


def test_vit_image_size_must_fit_the_patches():
    with pytest.raises(ValueError, match="multiple of 16"):
        create_model("vit_small", num_classes=10, image_size=40)


# --- ImageNet data (ImageFolder layout) -------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_imagenet(tmp_path_factory) -> Path:
    from harness.data.fixtures import write_tiny_imagefolder
    return write_tiny_imagefolder(tmp_path_factory.mktemp("imagenet"), num_classes=4, n_train=32, n_val=16)


def test_imagefolder_loader(tiny_imagenet):
    from harness.data import load_dataset

    b = load_dataset("imagenet", tiny_imagenet, image_size=32)
    assert (b.num_classes, b.in_chans, b.image_size, len(b.train), len(b.test)) == (4, 3, 32, 32, 16)
    assert b.classes == tuple(f"n{i:08d}" for i in range(4)) and b.model_variant == "imagenet"
    x, y = b.test[0]
    assert x.shape == (3, 32, 32) and x.dtype == torch.float32 and 0 <= y < 4
    # calibration images are deterministic (test transform); train ones are augmented on the fly
    assert torch.equal(b.train_eval[3][0], b.train_eval[3][0])
    # ImageNet statistics by default, the track's when given (timm ViTs use 0.5/0.5)
    assert b.mean == (0.485, 0.456, 0.406)
    from harness.data.imagenet import imagenet
    half = imagenet(tiny_imagenet, 32, mean=(0.5,) * 3, std=(0.5,) * 3)
    assert half.mean == (0.5, 0.5, 0.5) and not torch.allclose(half.test[0][0], x)


@pytest.mark.parametrize("layout, message", [
    ("missing", "imagenet: data root {root} does not exist"),
    ("no-val", "imagenet: expected {root}/val/<class>/<image>"),
    ("flat-val", "imagenet: {root}/val has no class folders; sort the images into class folders first"),
    ("classes", "imagenet: {root}/val and {root}/train must hold the same class folders"),
])
def test_imagefolder_layout_errors(layout, message, tiny_imagenet, tmp_path):
    import shutil

    from harness.data import DatasetError, load_dataset

    root = tmp_path / "data"
    if layout != "missing":
        shutil.copytree(tiny_imagenet / "train", root / "train")
        if layout == "flat-val":
            (root / "val").mkdir()
            shutil.copy(next((tiny_imagenet / "val").rglob("*.JPEG")), root / "val" / "x.JPEG")
        elif layout == "classes":
            shutil.copytree(tiny_imagenet / "val", root / "val")
            shutil.rmtree(next((root / "val").iterdir()))
    with pytest.raises(DatasetError) as e:
        load_dataset("imagenet", root)
    assert str(e.value).startswith(message.format(root=root)) and "\n" not in str(e.value)


def test_imagenet_track_must_name_its_variant(tiny_imagenet, tmp_path):
    from harness.errors import HarnessError
    from harness.tasks import task_for
    from harness.tracks import load_track

    track = load_track("imagenet-resnet18")
    ref = track.model.model_copy(update={"kwargs": {}})
    task = task_for(track.model_copy(update={"model": ref}), data_root=tiny_imagenet, cache_dir=tmp_path)
    with pytest.raises(HarnessError, match="needs model kwargs `variant: imagenet`"):
        task.base_model()


# --- the registered tracks of the paper ----------------------------------------------------------------------


PAPER = {  # PruningBench's leaderboard settings (see /work/shared/reference)
    "cifar100-resnet18": ("resnet18", "cifar100", [2, 4, 8]), "cifar100-resnet50": ("resnet50", "cifar100", [2, 4, 8]),
    "cifar100-vgg19": ("vgg19", "cifar100", [2, 4, 8]),
    "imagenet-resnet18": ("resnet18", "imagenet", [2, 3, 4]), "imagenet-resnet50": ("resnet50", "imagenet", [2, 3, 4]),
    "imagenet-vit_small": ("vit_small", "imagenet", [2, 3, 4]), "coco-yolov8": ("yolov8", "coco", [2, 3, 4]),
}


@pytest.mark.parametrize("track_id", sorted(PAPER))
def test_paper_tracks(track_id):
    from harness.tracks import registry, resolve_track

    t = registry().get(track_id)
    model, dataset, speedups = PAPER[track_id]
    assert (t.model.name, t.dataset.name, t.pruning.speedups) == (model, dataset, speedups)
    # progressive like PruningBench's --iterative-steps (each track's header explains its rounds); ViT and
    # YOLOv8 one-shot (Torch-Pruning's progressive head pruning crashes; YOLO's interleaves fine-tuning)
    rounds = 100 if dataset == "cifar100" else 1 if model in ("vit_small", "yolov8") else 30
    assert (t.pruning.strategy, t.pruning.min_channel_fraction, t.pruning.rounds) == ("protected_global", 0.1, rounds)
    assert resolve_track(None, model, dataset) == (t, None)  # what `--model M --dataset D` selects
    assert t.metric == ("map50_95" if dataset == "coco" else "top1")
    if dataset == "cifar100":
        assert t.checkpoint.pretrain is not None  # the harness trains the CIFAR bases
    else:
        assert t.checkpoint.path and t.checkpoint.pretrain is None  # published bases are local files
    if dataset == "imagenet" and model != "vit_small":
        assert t.model.kwargs == {"variant": "imagenet"}


def test_published_checkpoint_error_names_the_path(tiny_imagenet, tmp_path, monkeypatch):
    from harness.errors import HarnessError
    from harness.tasks import task_for
    from harness.tracks import load_track

    monkeypatch.setenv("HOME", str(tmp_path))  # the track's ~/... path, wherever a developer keeps theirs
    track = load_track("imagenet-resnet18")
    task = task_for(track, data_root=tiny_imagenet, cache_dir=tmp_path)
    with pytest.raises(HarnessError) as e:
        task.base_model()
    assert str(e.value) == f"base checkpoint not found: expected {Path(track.checkpoint.path).expanduser()}"


# --- end to end: pbench-harness evaluate on ViT-Small, tiny ImageFolder, CPU, offline -------------------------


VIT_TRACK = """
id: tiny-imagenet-vit
description: test track - ViT-Small/16 at 32 px on a tiny ImageFolder
model: {name: vit_small}
dataset: {name: imagenet, image_size: 32, mean: [0.5, 0.5, 0.5], std: [0.5, 0.5, 0.5]}
checkpoint:
  pretrain: {epochs: 1, batch_size: 16, optimizer: adamw, lr: 1.0e-3, weight_decay: 0.05}
  chance_margin: null  # one epoch on 16 images: a smoke test of the protocol, not of the base
pruning: {strategy: protected_global, speedups: [2, 4]}
calibration: {num_samples: 16, batch_size: 8}
sparsify: {epochs: 1, batch_size: 16, lr: 0.01, schedule: constant}
retrain: {epochs: 1, batch_size: 16, optimizer: adamw, lr: 1.0e-4, weight_decay: 0.05}
seeds: [0]
"""


@pytest.mark.slow
def test_evaluate_vit_small_end_to_end(tiny_imagenet, tmp_path):
    from typer.testing import CliRunner

    from harness.cli import app

    track = tmp_path / "tiny-imagenet-vit.yaml"
    track.write_text(VIT_TRACK)
    res = CliRunner().invoke(app, ["evaluate", "--method", "magnitude_l2", "--model", "vit_small", "--dataset",
                                   "imagenet", "--data-root", str(tiny_imagenet), "--track", str(track), "--speedup",
                                   "4", "--runner", "inprocess", "--out", str(tmp_path / "results")])
    assert res.exit_code == 0, res.output
    run = next((tmp_path / "results" / "tiny-imagenet-vit").iterdir())
    record = json.loads((run / "result.json").read_text())
    assert record["status"] == "ok" and record["metric"]["name"] == "top1"
    assert record["speedup"]["achieved"] >= 4 and record["min_channel_fraction"] >= 0.1
    final = torch.load(run / "final.pt", weights_only=False).eval()
    assert all(b.attn.head_dim * 3 * b.attn.num_heads == b.attn.qkv.out_features for b in final.blocks)
    assert outputs(final, torch.rand(2, 3, 32, 32)).shape == (2, 4)
