"""Object detection, scored as COCO mAP@[.5:.95] by pycocotools: the YOLOv8 tracks.

- **Model**: an Ultralytics detector from the zoo (``yolov8*``, C2f already replaced); its prune
  adapter keeps the Detect head out of pruning.
- **Base checkpoint**: a local file with sha256 (an Ultralytics ``.pt``, loaded with Ultralytics'
  weights-only loader so no code runs, or a state dict), or trained once with the track's
  ``pretrain`` recipe and cached by hash, like classification.
- **Calibration**: a seeded subset of train images, letterboxed, as ``(images, targets)`` batches
  whose targets are ``[B, M, 5]`` rows ``(class, cx, cy, w, h)`` padded with -1, so a batch splits
  into single images by slicing; :meth:`DetectionTask.loss` is Ultralytics' ``v8DetectionLoss``
  (box + cls + DFL, default gains) per image.
- **Training** runs Ultralytics' own ``DetectionTrainer`` on the model object (pruned or not; it is
  never rebuilt from YAML), offline (see :func:`harness.models.yolo.ensure_offline`), with the
  track's recipe mapped as documented in :func:`trainer_overrides`. It never validates, never
  writes checkpoints, and ends with the model holding the EMA weights (Ultralytics' practice).
- **Evaluation**: the model predicts on the val images (letterboxed square, NMS with Ultralytics'
  validation settings: conf 0.001, IoU 0.7, 300 boxes, multi-label), boxes go back to original
  pixels, and pycocotools' ``COCOeval(..., "bbox")`` scores them against the val json
  (:func:`score_predictions`); Ultralytics' own mAP interpolation is never used.
"""

from __future__ import annotations

import contextlib
import copy
import fcntl
import functools
import hashlib
import io
import json
import os
import tempfile
import types
from pathlib import Path
from typing import Optional

import torch
import torch.nn as nn

import harness.models.yolo as yolo  # sets Ultralytics' offline environment before anything imports it
from harness.protocol.checkpoints import BaseCheckpoint, check_pin, default_cache_dir, pretrain_key, verified_file
from harness.data.coco import CocoBundle, CocoImages, collate, letterbox_geometry
from harness.errors import HarnessError
from harness.models import build_model
from harness.files import atomic_write_text, sha256_file
from harness.protocol.train import GradHook, Progress
from harness.tasks.base import Task
from harness.tasks.classification import load_track_dataset
from specs.track import Recipe

from ultralytics.engine import trainer as ultralytics_trainer  # noqa: E402,I001  (after harness.models.yolo)
from ultralytics.models.yolo.detect import DetectionTrainer  # noqa: E402

#: bump when training or checkpoint conversion changes in a way that changes trained weights
DETECTION_TRAINER_VERSION = 1
#: Ultralytics' validation settings (DetectionValidator defaults)
CONF, IOU, MAX_DET = 0.001, 0.7, 300
#: Ultralytics' default loss gains (box, cls, dfl)
LOSS_GAINS = dict(box=7.5, cls=0.5, dfl=1.5)
#: everything augmentation: "none" switches off (Ultralytics' defaults otherwise)
AUGMENT_OFF = dict(mosaic=0.0, mixup=0.0, cutmix=0.0, copy_paste=0.0, hsv_h=0.0, hsv_s=0.0, hsv_v=0.0,
                   degrees=0.0, translate=0.0, scale=0.0, shear=0.0, perspective=0.0, flipud=0.0, fliplr=0.0,
                   close_mosaic=0)


def trainer_overrides(recipe: Recipe, image_size: int, seed: int, device: str) -> dict:
    """Ultralytics training arguments for a harness recipe.

    ``epochs``, ``batch_size`` (also Ultralytics' nominal batch ``nbs``, so there is no gradient
    accumulation and ``weight_decay`` is not rescaled), ``optimizer`` (sgd -> SGD with Nesterov
    momentum, adamw -> AdamW), ``lr``, ``momentum``, ``weight_decay`` and ``warmup_epochs`` map
    one to one; ``schedule: cosine`` is a per-epoch cosine from ``lr`` to 0 (``cos_lr``, ``lrf=0``)
    and ``constant`` keeps ``lr``; ``amp`` applies on CUDA. ``augmentation: none`` turns every
    Ultralytics augmentation off; ``crop_flip`` means Ultralytics' default YOLOv8 train augmentation
    (mosaic, HSV, translate/scale, horizontal flip; mosaic off for the last 10 epochs); ``crop`` the
    same without flips. Step schedules, label smoothing and ``randaug`` have no detection meaning.
    """
    if recipe.schedule == "step":
        raise HarnessError("detection recipes support schedule cosine or constant, not step")
    if recipe.label_smoothing:
        raise HarnessError("detection recipes do not support label_smoothing")
    if recipe.augmentation == "randaug":
        raise HarnessError("detection recipes support augmentation none, crop or crop_flip, not randaug")
    unsupported = [f for f in ("mixup_alpha", "cutmix_alpha", "auto_augment", "random_erase", "ra_repeats",
                               "clip_grad_norm", "channels_last", "compile") if getattr(recipe, f)]
    if unsupported or recipe.amp == "bf16" or not recipe.nesterov or recipe.bias_norm_decay:
        what = unsupported[0] if unsupported else "amp: bf16" if recipe.amp == "bf16" else \
            "nesterov: false" if not recipe.nesterov else "bias_norm_decay"
        raise HarnessError(f"detection recipes do not support {what} (Ultralytics' trainer has its own "
                           f"augmentation and optimizer set-up)")
    args = dict(
        epochs=recipe.epochs, batch=recipe.batch_size, nbs=recipe.batch_size, imgsz=image_size,
        optimizer="AdamW" if recipe.optimizer == "adamw" else "SGD", lr0=recipe.lr, momentum=recipe.momentum,
        weight_decay=recipe.weight_decay, warmup_epochs=float(recipe.warmup_epochs),
        cos_lr=recipe.schedule == "cosine", lrf=0.0 if recipe.schedule == "cosine" else 1.0,
        amp=bool(recipe.amp and device.startswith("cuda")), seed=seed, deterministic=True,
        device="cpu" if device == "cpu" else device.replace("cuda:", "").replace("cuda", "0"),
        val=False, plots=False, save=False, verbose=False, cache=False, rect=False, exist_ok=True,
        pretrained=False, workers=0 if device == "cpu" else min(8, os.cpu_count() or 1))
    if recipe.augmentation == "none":
        args.update(AUGMENT_OFF)
    elif recipe.augmentation == "crop":
        args.update(fliplr=0.0)
    return args


def score_predictions(annotations: Path, predictions: list[dict], image_ids: Optional[list[int]] = None) -> float:
    """COCO mAP@[.5:.95] in percent, by pycocotools, of ``predictions`` (COCO result dicts:
    ``image_id``, ``category_id``, ``bbox`` [x, y, w, h] in original pixels, ``score``) against the
    ground-truth json, over ``image_ids`` (default: every image of the json)."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints; library code does not
        gt = COCO(str(annotations))
        if not gt.getAnnIds(imgIds=image_ids or []):
            raise HarnessError(f"{annotations}: no ground-truth boxes to score against")
        if not predictions:
            return 0.0
        dt = gt.loadRes(copy.deepcopy(predictions))  # loadRes annotates the dicts it is given
        ev = COCOeval(gt, dt, "bbox")
        ev.params.imgIds = sorted(image_ids) if image_ids else sorted(gt.getImgIds())
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return 100.0 * max(0.0, float(ev.stats[0]))


def detection_loss(model: nn.Module, images: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Ultralytics' YOLOv8 training loss (box + cls + DFL, default gains), averaged over the images.

    ``targets`` is ``[B, M, 5]``: rows ``(class, cx, cy, w, h)`` normalized to the image, padded with -1.
    Works in train and eval mode (BatchNorm then uses its running statistics).
    """
    from ultralytics.utils.loss import v8DetectionLoss

    keep = targets[..., 0] >= 0
    batch = {"batch_idx": keep.nonzero()[:, 0].float(), "cls": targets[keep][:, :1], "bboxes": targets[keep][:, 1:5]}
    # the criterion reads `args`, `model[-1]`, `parameters()` and `class_weights` of what it is given;
    # a view leaves the model itself untouched (no `args`, no cached criterion)
    view = types.SimpleNamespace(args=types.SimpleNamespace(**LOSS_GAINS), model=model.model,
                                 parameters=model.parameters, class_weights=None)
    total, _ = v8DetectionLoss(view)(model(images), batch)
    return total.sum() / len(images)


class DetectionTask(Task):
    @functools.cached_property
    def data(self) -> CocoBundle:
        data = load_track_dataset(self.track.dataset, self.data_root)
        if not isinstance(data, CocoBundle):
            raise HarnessError(f"track {self.track.id}: metric map50_95 needs a detection dataset (coco), "
                               f"got {self.track.dataset.name}")
        return data

    @property
    def cache(self) -> Path:
        return Path(self.cache_dir or default_cache_dir())

    def architecture(self) -> nn.Module:
        return self.build()

    def build(self) -> nn.Module:
        return build_model(self.track.model, num_classes=self.data.num_classes, in_chans=3,
                           image_size=self.data.image_size)

    # --- base checkpoint ----------------------------------------------------------------

    def base_model(self, progress: Optional[Progress] = None) -> BaseCheckpoint:
        ck, model = self.track.checkpoint, self.build()
        if ck.path is not None:
            path, digest = verified_file(ck)
            self._load(model, path)
        else:
            folder = self.cache / "checkpoints"
            folder.mkdir(parents=True, exist_ok=True)
            ident = {"pretrain": pretrain_key(self.track), "trainer": DETECTION_TRAINER_VERSION,
                     "ultralytics": _ultralytics_version()}
            key = hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()
            path = folder / f"{self.track.model.slug()}-{self.track.dataset.name}-{key[:16]}.pt"
            with open(folder / f".{path.name}.lock", "w") as lock:
                fcntl.flock(lock, fcntl.LOCK_EX)  # concurrent runs train a missing checkpoint once
                if not path.exists():
                    self.train(model, ck.pretrain, seed=ck.pretrain_seed, progress=progress, stage="pretrain")
                    tmp = path.with_suffix(".tmp")
                    torch.save({k: v.detach().cpu() for k, v in model.state_dict().items()}, tmp)
                    os.replace(tmp, path)
                else:
                    self._load(model, path)
            digest = sha256_file(path)
            check_pin(self.track, path, digest)
        model.eval()
        return BaseCheckpoint(model, path, digest, self._base_metric(model, path, digest))

    def _load(self, model: nn.Module, path: Path) -> None:
        what = f"{self.track.model.name} with {self.data.num_classes} classes"
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception:  # an Ultralytics checkpoint pickles its model object
            state = None
        if not (isinstance(state, dict) and state and all(isinstance(v, torch.Tensor) for v in state.values())):
            state = _ultralytics_state(path, what)
        try:
            yolo.load_state(model, state)
        except Exception as e:  # wrong architecture or number of classes
            raise HarnessError(f"{path}: cannot load as {what} ({type(e).__name__})") from None

    def _base_metric(self, model: nn.Module, path: Path, digest: str) -> float:
        """mAP of the base model, cached beside the checkpoint (keyed by its sha256 and the evaluation)."""
        sidecar = path.with_name(path.name + ".metric.json")
        ident = {"sha256": digest, "dataset": self.data.name, "image_size": self.data.image_size,
                 "metric": self.track.metric}
        try:
            cached = json.loads(sidecar.read_text())
            if {k: cached.get(k) for k in ident} == ident:
                return float(cached["value"])
        except (OSError, ValueError, KeyError, TypeError):
            pass
        value = self.evaluate(model)
        try:
            atomic_write_text(sidecar, json.dumps({**ident, "value": value}))
        except OSError:
            pass  # read-only checkpoint folder: recompute next time
        return value

    # --- pruning --------------------------------------------------------------------------

    def example_inputs(self) -> torch.Tensor:
        s = self.data.image_size
        return torch.randn(1, 3, s, s, device=self.device)

    def calibration_batches(self, seed: int) -> list:
        cal, ds = self.track.calibration, self.data.train
        g = torch.Generator().manual_seed(10_000 + seed)  # as classification: same images for every method
        idx = torch.randperm(len(ds), generator=g)[:cal.num_samples].tolist()
        return [collate([ds[i] for i in idx[k:k + cal.batch_size]]) for k in range(0, len(idx), cal.batch_size)]

    def loss(self, model: nn.Module, batch) -> torch.Tensor:
        x, y = batch
        return detection_loss(model, x.to(self.device), y.to(self.device))

    # --- training ---------------------------------------------------------------------------

    def check_recipe(self, recipe: Recipe, what: str) -> None:
        from harness.protocol import distributed
        if distributed.world().distributed:
            raise HarnessError("detection tracks run in one process (Ultralytics' trainer launches its own DDP); "
                               "run without torchrun")
        try:
            trainer_overrides(recipe, 640, 0, self.device)  # validation only: the size does not matter
        except HarnessError as e:
            raise HarnessError(f"{what}: {e}") from None

    def train(self, model: nn.Module, recipe: Recipe, seed: int, progress: Optional[Progress] = None,
              stage: str = "train", grad_hook: Optional[GradHook] = None) -> nn.Module:
        """Train in place with Ultralytics' trainer; the model ends with the EMA weights, in eval mode."""
        if recipe.epochs == 0:
            return model.eval()
        data_yaml = self.data.yolo_data(self.cache)
        args = trainer_overrides(recipe, self.data.image_size, seed, self.device)
        with tempfile.TemporaryDirectory(prefix="pbench-yolo-") as run:
            cfg = getattr(model, "yaml", {}).get("yaml_file", "yolov8.yaml")  # a name only: the model is given
            trainer = _Trainer(overrides={**args, "model": cfg, "data": str(data_yaml), "project": run,
                                          "name": "train"}, model=model, grad_hook=grad_hook)
            if progress:
                trainer.add_callback("on_train_epoch_end", lambda t: progress(
                    stage, t.epoch + 1, t.epochs, **_epoch_loss(t)))
            trainer.train()
            ema = trainer.ema.ema if trainer.ema is not None else model
            model.load_state_dict(ema.state_dict())
        model.criterion = None  # Ultralytics caches its loss on the model; it holds training-time state
        for p in model.parameters():
            p.requires_grad_(True)  # the trainer freezes the DFL conv; pruning and observations need grads
        return model.eval()

    # --- evaluation -----------------------------------------------------------------------------

    @torch.no_grad()
    def predictions(self, model: nn.Module, split: Optional[CocoImages] = None, batch_size: int = 16) -> list[dict]:
        """COCO result dicts of ``model`` on the val images (``image_id`` and ``category_id`` as in the json)."""
        from ultralytics.utils.nms import non_max_suppression

        ds = split or self.data.test
        model.to(self.device).eval()
        workers = 0 if self.device == "cpu" else min(8, os.cpu_count() or 1)
        loader = torch.utils.data.DataLoader(ds, batch_size=batch_size, shuffle=False, num_workers=workers,
                                             collate_fn=collate)
        out, start = [], 0
        for x, _ in loader:
            raw = model(x.to(self.device))
            dets = non_max_suppression(raw[0] if isinstance(raw, (tuple, list)) else raw, CONF, IOU,
                                       multi_label=True, max_det=MAX_DET)
            for k, d in enumerate(dets):
                out.extend(self._to_coco(ds.info(start + k), d.cpu()))
            start += len(x)
        return out

    def _to_coco(self, image: dict, dets: torch.Tensor) -> list[dict]:
        h, w = image["height"], image["width"]
        r, _, _, left, top = letterbox_geometry(h, w, self.data.image_size)
        boxes = dets[:, :4].clone()
        boxes[:, [0, 2]] = ((boxes[:, [0, 2]] - left) / r).clamp(0, w)
        boxes[:, [1, 3]] = ((boxes[:, [1, 3]] - top) / r).clamp(0, h)
        ids = self.data.category_ids
        return [{"image_id": int(image["id"]), "category_id": int(ids[int(c)]),
                 "bbox": [round(x0, 3), round(y0, 3), round(x1 - x0, 3), round(y1 - y0, 3)], "score": round(s, 5)}
                for (x0, y0, x1, y1), s, c in zip(boxes.tolist(), dets[:, 4].tolist(), dets[:, 5].tolist())]

    def evaluate(self, model: nn.Module) -> float:
        return score_predictions(self.data.annotations["val"], self.predictions(model))

    def save(self, model: nn.Module, path: Path) -> None:
        m = copy.deepcopy(model).cpu().float()
        m.criterion = None
        torch.save(m, path)


def _ultralytics_version() -> str:
    import ultralytics

    return ultralytics.__version__


def _ultralytics_state(path: Path, what: str) -> dict:
    """The fp32 state dict of an Ultralytics checkpoint (``ema``, else ``model``), loaded weights-only."""
    from ultralytics.nn.tasks import torch_safe_load

    try:
        ckpt, _ = torch_safe_load(str(path), safe_only=True)
        net = ckpt.get("ema") or ckpt.get("model")
        return {k: v.float() if v.is_floating_point() else v for k, v in net.state_dict().items()}
    except Exception as e:
        raise HarnessError(f"{path}: not a state dict or Ultralytics checkpoint of {what} "
                           f"({type(e).__name__})") from None


class _Trainer(DetectionTrainer):
    """Ultralytics' detection trainer on a given model object: no validation, no checkpoint files, no
    AMP probe (it would download weights), and the harness's hook between backward and optimizer step."""

    def __init__(self, overrides: dict, model: nn.Module, grad_hook: Optional[GradHook] = None):
        super().__init__(overrides=overrides)
        self.model = model  # setup_model() keeps a module it is given: a pruned model is never rebuilt
        self._grad_hook, self._step = grad_hook, 0

    def _setup_train(self):
        probe = ultralytics_trainer.check_amp
        ultralytics_trainer.check_amp = lambda model: True  # AMP is the track's choice
        try:
            super()._setup_train()
        finally:
            ultralytics_trainer.check_amp = probe

    def optimizer_step(self):
        self.scaler.unscale_(self.optimizer)
        if self._grad_hook is not None:
            self._grad_hook(self._step, len(self.train_loader) * self.epochs)
        self._step += 1
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), max_norm=10.0)  # as Ultralytics does
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad()
        if self.ema:
            self.ema.update(self.model)

    def validate(self):
        return self.metrics, None  # the harness scores with pycocotools, on its own schedule

    def save_model(self):
        return False

    def final_eval(self):
        pass


def _epoch_loss(trainer) -> dict:
    """``{"loss": the epoch's mean total training loss}`` from an Ultralytics trainer, if it has one
    (``tloss`` is a tensor of the loss items, or a dict of them in recent versions)."""
    items = trainer.tloss
    if items is None:
        return {}
    values = items.values() if isinstance(items, dict) else [items]
    return {"loss": float(sum(float(torch.as_tensor(v).sum()) for v in values))}
