"""YOLOv8 detectors (Ultralytics), built from their YAML configs - never from downloaded weights.

``yolov8n/s/m/l`` are Ultralytics' ``yolov8{n,s,m,l}.yaml`` (3.16 / 11.17 / 25.90 / 43.69 M
parameters at 80 classes); ``yolov8`` is PruningBench's YOLOv8, the ``m`` size (its leaderboard's
base has 25.9 M parameters and 49.99 mAP, i.e. ``yolov8m``).

Pruning, following Torch-Pruning's ``examples/yolov8/yolov8_pruning.py``:

- every ``C2f`` is replaced by :class:`C2f_v2` when the model is built (:func:`replace_c2f`):
  the same block with its first conv split in two (``cv0``/``cv1``) instead of one conv whose
  output is ``chunk``-ed, which Torch-Pruning cannot group. The replacement transfers weights
  exactly; a checkpoint of the original architecture loads through :func:`load_state`;
- the ``Detect`` head is never a group root (its inputs follow the backbone/neck it reads);
- every parameter gets ``requires_grad=True`` before tracing (the DFL conv is frozen; a frozen
  layer leaves no autograd node for Torch-Pruning to trace);
- a pruned model is saved whole, in fp32 (Ultralytics' own checkpoints are fp16); reloading it
  needs this module importable (it holds ``C2f_v2``).

:func:`ensure_offline` sets Ultralytics' environment (no network, no installs, no telemetry, its
config and fonts in the harness cache, never in the user's home) before Ultralytics is imported.
"""

from __future__ import annotations

import copy
import os
import shutil
from pathlib import Path

import torch
from torch import nn

from harness.protocol.grouping import PruneConfig

#: PruningBench's "YOLOv8" (see the module docstring)
PAPER_SIZE = "m"
#: a font Ultralytics would otherwise fetch from GitHub on every train/val (plots, labels)
FONTS = ("Arial.ttf", "Arial.Unicode.ttf")


def ultralytics_home() -> Path:
    """Where Ultralytics keeps its settings, fonts and (never used) downloads: ``$YOLO_CONFIG_DIR`` when
    set, else ``<harness cache>/ultralytics``."""
    from harness.protocol.checkpoints import default_cache_dir

    return Path(os.environ.get("YOLO_CONFIG_DIR") or default_cache_dir() / "ultralytics").expanduser()


def ensure_offline() -> Path:
    """Configure Ultralytics for offline, side-effect-free use; idempotent. Call before importing it.

    Forces ``YOLO_OFFLINE=1`` (no DNS probe, no downloads) and ``YOLO_AUTOINSTALL=0`` (no ``pip
    install`` at run time); defaults ``YOLO_CONFIG_DIR``/``MPLCONFIGDIR`` to the harness cache and
    ``YOLO_VERBOSE`` to false (library code does not print); copies matplotlib's DejaVuSans as
    ``Arial.ttf``; turns telemetry (``sync``) off. Returns the config dir.
    """
    home = ultralytics_home()
    os.environ["YOLO_OFFLINE"] = "1"
    os.environ["YOLO_AUTOINSTALL"] = "0"
    os.environ.setdefault("YOLO_CONFIG_DIR", str(home))
    os.environ.setdefault("MPLCONFIGDIR", str(home / "matplotlib"))
    os.environ.setdefault("YOLO_VERBOSE", "False")
    fonts = home / "Ultralytics"
    fonts.mkdir(parents=True, exist_ok=True)
    missing = [f for f in FONTS if not (fonts / f).is_file()]
    if missing:
        import matplotlib

        source = Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSans.ttf"
        for name in missing:
            tmp = fonts / f".{name}.{os.getpid()}"
            shutil.copyfile(source, tmp)
            os.replace(tmp, fonts / name)
    from ultralytics.utils import SETTINGS

    wanted = {"sync": False}
    if Path(SETTINGS.file).parent == fonts:  # our own settings file: pin its folders into the cache too
        wanted.update(datasets_dir=str(home / "datasets"), runs_dir=str(home / "runs"),
                      weights_dir=str(home / "weights"))
    if any(SETTINGS.get(k) != v for k, v in wanted.items()):
        SETTINGS.update(wanted)
    return home


ensure_offline()

from ultralytics.nn.modules import C2f, Conv, Detect  # noqa: E402  (after the environment is set)
from ultralytics.nn.modules.block import Bottleneck  # noqa: E402
from ultralytics.nn.tasks import DetectionModel  # noqa: E402


class C2f_v2(nn.Module):  # noqa: N801 - Torch-Pruning's name for it
    """``C2f`` with two parallel 1x1 convs (``cv0``, ``cv1``) instead of one conv split by ``chunk``."""

    def __init__(self, c1: int, c2: int, n: int = 1, shortcut: bool = False, g: int = 1, e: float = 0.5):
        super().__init__()
        self.c = int(c2 * e)
        self.cv0 = Conv(c1, self.c, 1, 1)
        self.cv1 = Conv(c1, self.c, 1, 1)
        self.cv2 = Conv((2 + n) * self.c, c2, 1)
        self.m = nn.ModuleList(Bottleneck(self.c, self.c, shortcut, g, k=((3, 3), (3, 3)), e=1.0) for _ in range(n))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = [self.cv0(x), self.cv1(x)]
        y.extend(m(y[-1]) for m in self.m)
        return self.cv2(torch.cat(y, 1))


def c2f_v2_from(c2f: C2f) -> C2f_v2:
    """An exact :class:`C2f_v2` copy of ``c2f`` (weights, BN statistics and settings, train/eval mode)."""
    first = c2f.m[0]
    new = C2f_v2(c2f.cv1.conv.in_channels, c2f.cv2.conv.out_channels, n=len(c2f.m),
                 shortcut=bool(getattr(first, "add", False)), g=first.cv2.conv.groups,
                 e=c2f.c / c2f.cv2.conv.out_channels)
    new.cv2, new.m = c2f.cv2, c2f.m  # same modules: nothing to copy
    half = c2f.c
    for target, rows in ((new.cv0, slice(0, half)), (new.cv1, slice(half, 2 * half))):
        target.conv.weight.data.copy_(c2f.cv1.conv.weight.data[rows])
        bn, src = target.bn, c2f.cv1.bn
        bn.weight.data.copy_(src.weight.data[rows])
        bn.bias.data.copy_(src.bias.data[rows])
        bn.running_mean.copy_(src.running_mean[rows])
        bn.running_var.copy_(src.running_var[rows])
        bn.num_batches_tracked.copy_(src.num_batches_tracked)
        bn.eps, bn.momentum = src.eps, src.momentum  # Ultralytics sets 1e-3 / 0.03 on every BN
        target.act = c2f.cv1.act
    for attr in ("i", "f", "type", "np"):  # Ultralytics' graph bookkeeping (layer index, inputs, ...)
        if hasattr(c2f, attr):
            setattr(new, attr, getattr(c2f, attr))
    new.train(c2f.training)
    return new.to(c2f.cv1.conv.weight.device)


def replace_c2f(module: nn.Module) -> nn.Module:
    """Replace every ``C2f`` inside ``module`` by its :class:`C2f_v2` copy, in place; returns ``module``."""
    for name, child in module.named_children():
        if isinstance(child, C2f):
            setattr(module, name, c2f_v2_from(child))
        else:
            replace_c2f(child)
    return module


def build(size: str, num_classes: int, in_chans: int = 3) -> DetectionModel:
    """``yolov8{size}.yaml`` with ``num_classes`` classes, C2f already replaced, freshly initialized."""
    model = DetectionModel(f"yolov8{size}.yaml", ch=in_chans, nc=num_classes, verbose=False)
    return replace_c2f(model)


def load_state(model: DetectionModel, state: dict) -> None:
    """Load ``state`` into ``model`` (built by :func:`build`): a state dict of this architecture, or of
    the original one with ``C2f`` blocks (an Ultralytics checkpoint's), converted exactly."""
    if any(k.endswith(".cv0.conv.weight") for k in state) or not any(isinstance(m, C2f_v2) for m in model.modules()):
        model.load_state_dict(state)
        return
    original = DetectionModel(copy.deepcopy(model.yaml), ch=model.yaml.get("channels", 3), nc=model.model[-1].nc,
                              verbose=False)
    original.load_state_dict(state)
    model.load_state_dict(replace_c2f(original).state_dict())


def prune_config(model: nn.Module) -> PruneConfig:
    """The Detect head is never pruned; every parameter must require grad for tracing."""
    if any(isinstance(m, C2f) for m in model.modules()):
        raise ValueError("replace C2f blocks first (harness.models.yolo.replace_c2f): Torch-Pruning cannot "
                         "group their chunked conv")
    for p in model.parameters():
        p.requires_grad_(True)
    return PruneConfig(ignored_layers=[m for m in model.modules() if isinstance(m, Detect)])


def yolov8n(num_classes: int, in_chans: int = 3, image_size: int = 640) -> DetectionModel:
    """YOLOv8n: 3.16 M parameters, 8.7 GFLOPs at 640 px (80 classes)."""
    return build("n", num_classes, in_chans)


def yolov8s(num_classes: int, in_chans: int = 3, image_size: int = 640) -> DetectionModel:
    """YOLOv8s: 11.17 M parameters (80 classes)."""
    return build("s", num_classes, in_chans)


def yolov8m(num_classes: int, in_chans: int = 3, image_size: int = 640) -> DetectionModel:
    """YOLOv8m: 25.90 M parameters (80 classes)."""
    return build("m", num_classes, in_chans)


def yolov8l(num_classes: int, in_chans: int = 3, image_size: int = 640) -> DetectionModel:
    """YOLOv8l: 43.69 M parameters (80 classes)."""
    return build("l", num_classes, in_chans)


def yolov8(num_classes: int, in_chans: int = 3, image_size: int = 640) -> DetectionModel:
    """PruningBench's YOLOv8: the ``m`` size."""
    return build(PAPER_SIZE, num_classes, in_chans)
