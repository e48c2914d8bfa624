"""Detection: the YOLOv8 family through the harness's pruning, the COCO loader, the pycocotools score,
base checkpoints, Ultralytics' trainer run offline, and `pbench-harness evaluate --model yolov8n
--dataset coco` end to end on a tiny COCO made of the two photos that ship inside Ultralytics.

The pruning matrix reuses tests/test_models_zoo.py's helpers (same checks as for classifiers).
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import re
import shutil
from pathlib import Path

import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from harness.cli import app
from harness.data import DatasetError, load_dataset
from harness.models import create_model, prune_config_of
from test_models_zoo import ENTRIES, case_for, outputs, prune_to_targets

SIZE = 64
DETECTORS = [e for e in ENTRIES if case_for(e).detection]
#: both criteria on n and s; m and l (the same module types, more and wider blocks) with the weight
#: criterion; `yolov8` is yolov8m under the paper's name (test_yolov8_is_the_papers_m)
MATRIX = [(e, c) for e in DETECTORS if e != "yolov8"
          for c in (("magnitude_l2", "taylor") if e in ("yolov8n", "yolov8s") else ("magnitude_l2",))]

TRACK = """
id: tiny-coco
description: test track - YOLOv8n at 64 px on a tiny COCO (Ultralytics' bus.jpg and zidane.jpg)
model: {name: yolov8n}
dataset: {name: coco, image_size: 64}
checkpoint:
  pretrain: {epochs: 1, batch_size: 4, lr: 0.01, schedule: constant}
pruning: {strategy: protected_global, speedups: [2, 4]}
calibration: {num_samples: 8, batch_size: 4}
sparsify: {epochs: 1, batch_size: 4, lr: 0.01, schedule: constant}
retrain: {epochs: 1, batch_size: 4, lr: 0.01, schedule: cosine}
metric: map50_95
seeds: [0]
"""


def invoke(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def listing(root: Path) -> dict:
    return {str(p.relative_to(root)): p.stat().st_mtime_ns for p in sorted(root.rglob("*"))}


@pytest.fixture(autouse=True)
def _threads():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def coco_root(tmp_path_factory) -> Path:
    from harness.data.fixtures import write_tiny_coco
    return write_tiny_coco(tmp_path_factory.mktemp("coco"), n_train=12, n_val=6, size=160)


@pytest.fixture(scope="module")
def track_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("tracks") / "tiny-coco.yaml"
    path.write_text(TRACK)
    return path


@pytest.fixture(scope="module")
def task(coco_root, track_file, pbench_cache):
    from harness.tasks import task_for
    from harness.tracks import load_track
    return task_for(load_track(str(track_file)), data_root=coco_root, cache_dir=pbench_cache)


def lively(model: nn.Module) -> nn.Module:
    """An untrained detector scores nothing above 0.001; raise its class biases so it predicts boxes."""
    head = model.model[-1]
    with torch.no_grad():
        for seq in head.cv3:
            seq[-1].bias.add_(8.0)
    return model


# --- the YOLOv8 family: prune to 2x and 4x ------------------------------------------------------------------


@pytest.mark.parametrize("entry, criterion", MATRIX)
def test_prunes_to_2x_and_4x(entry, criterion, tmp_path):
    pruned = prune_to_targets(entry, criterion, tmp_path)
    for model in pruned.values():  # the head's own layers keep their outputs
        head = model.model[-1]
        assert [s[-1].out_channels for s in head.cv3] == [80] * 3 and [s[-1].out_channels for s in head.cv2] == [64] * 3


def test_yolov8_is_the_papers_m():
    a, b = create_model("yolov8", num_classes=80), create_model("yolov8m", num_classes=80)
    assert [(k, v.shape) for k, v in a.state_dict().items()] == [(k, v.shape) for k, v in b.state_dict().items()]
    assert sum(p.numel() for p in a.parameters()) == 25_902_640  # PruningBench's YOLOv8: 15.08 M = 58.24 %


def test_sizes_match_ultralytics():
    for name, params in {"yolov8n": 3_157_200, "yolov8s": 11_166_560, "yolov8l": 43_691_520}.items():
        assert sum(p.numel() for p in create_model(name, num_classes=80).parameters()) == params, name


def test_c2f_split_is_exact():
    from ultralytics.nn.modules import C2f
    from ultralytics.nn.tasks import DetectionModel

    from harness.models.yolo import C2f_v2, load_state, replace_c2f

    torch.manual_seed(0)
    original = DetectionModel("yolov8n.yaml", nc=80, verbose=False).eval()
    with torch.no_grad():  # non-trivial BN statistics, so the split must carry them over
        for m in original.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
    x = torch.rand(2, 3, SIZE, SIZE)
    ours = replace_c2f(copy.deepcopy(original))
    assert not any(isinstance(m, C2f) for m in ours.modules()) and any(isinstance(m, C2f_v2) for m in ours.modules())
    assert torch.allclose(outputs(ours, x), outputs(original, x), atol=1e-4)
    # a state dict of the original architecture (an Ultralytics checkpoint's) loads, converted exactly
    fresh = create_model("yolov8n", num_classes=80).eval()
    load_state(fresh, original.state_dict())
    assert torch.allclose(outputs(fresh, x), outputs(original, x), atol=1e-4)


def test_detect_head_is_never_a_root_and_grads_are_on():
    from ultralytics.nn.modules import Detect
    from ultralytics.nn.tasks import DetectionModel

    from harness.protocol.grouping import apply_plan, describe_groups

    model = create_model("yolov8n", num_classes=80).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    cfg = prune_config_of(model)
    head = model.model[-1]
    assert isinstance(head, Detect) and cfg.ignored_layers == [head]
    assert all(p.requires_grad for p in model.parameters())  # the DFL conv included: tracing needs them
    example = torch.rand(1, 3, SIZE, SIZE)
    groups = describe_groups(model, example, cfg)
    assert not {g.id for g in groups} & {n for n, _ in model.named_modules() if n.startswith("model.22")}
    before = {n: m.out_channels for n, m in head.named_modules() if isinstance(m, nn.Conv2d)}
    apply_plan(model, example, cfg, {g.id: list(range(g.n_channels // 2)) for g in groups})
    assert {n: m.out_channels for n, m in head.named_modules() if isinstance(m, nn.Conv2d)} == before
    assert outputs(model, torch.rand(2, 3, SIZE, SIZE)).shape == (2, 84, 84)
    with pytest.raises(ValueError, match="replace C2f"):
        prune_config_of(DetectionModel("yolov8n.yaml", nc=80, verbose=False))


def test_ultralytics_is_offline_and_writes_only_to_the_cache():
    from ultralytics.utils import SETTINGS

    from harness.models.yolo import ensure_offline

    home = ensure_offline()
    assert os.environ["YOLO_OFFLINE"] == "1" and os.environ["YOLO_AUTOINSTALL"] == "0"
    assert (home / "Ultralytics" / "Arial.ttf").stat().st_size > 100_000  # matplotlib's DejaVuSans
    assert SETTINGS["sync"] is False


# --- COCO data ---------------------------------------------------------------------------------------------------


def test_coco_loader(coco_root):
    b = load_dataset("coco", coco_root, image_size=SIZE)
    assert (b.task, b.num_classes, b.image_size, len(b.train), len(b.test)) == ("detection", 80, SIZE, 12, 6)
    assert b.category_ids[:6] == (1, 2, 3, 4, 5, 6) and b.category_ids[-1] == 90 and b.names[0] == "person"
    x, y = b.test[0]
    assert x.shape == (3, SIZE, SIZE) and 0 <= x.min() and x.max() <= 1
    assert y.shape[1] == 5 and len(y) > 0 and (y[:, 1:] > 0).all() and (y[:, 1:] <= 1).all()
    assert set(y[:, 0].long().tolist()) <= {0, 5, 27}  # person, bus, tie: COCO ids 1, 6, 32
    # Ultralytics' own layout (images/train2017) works too
    alt = coco_root.parent / "coco-alt"
    if not alt.exists():
        shutil.copytree(coco_root / "annotations", alt / "annotations")
        for split in ("train2017", "val2017"):
            shutil.copytree(coco_root / split, alt / "images" / split)
    assert len(load_dataset("coco", alt, image_size=SIZE).test) == 6


@pytest.mark.parametrize("breakage, message", [
    ("missing", "coco: data root {root} does not exist"),
    ("annotations", "coco: expected {root}/annotations/instances_val2017.json"),
    ("images", "coco: expected the image folder {root}/train2017"),
    ("json", "coco: {root}/annotations/instances_val2017.json is not a readable COCO json"),
])
def test_coco_layout_errors(breakage, message, coco_root, tmp_path):
    root = tmp_path / "data"
    if breakage != "missing":
        shutil.copytree(coco_root, root)
        if breakage == "annotations":
            (root / "annotations" / "instances_val2017.json").unlink()
        elif breakage == "images":
            shutil.rmtree(root / "train2017")
        else:
            (root / "annotations" / "instances_val2017.json").write_text("{not json")
    with pytest.raises(DatasetError) as e:
        load_dataset("coco", root)
    assert str(e.value).startswith(message.format(root=root)) and "\n" not in str(e.value)


def test_yolo_labels_go_to_the_cache_only(coco_root, tmp_path):
    before = listing(coco_root)
    b = load_dataset("coco", coco_root, image_size=SIZE)
    data_yaml = b.yolo_data(tmp_path)
    assert data_yaml.is_relative_to(tmp_path) and listing(coco_root) == before
    assert b.yolo_data(tmp_path) == data_yaml  # converted once
    labels = data_yaml.parent / "labels" / "train2017"
    ann = json.loads((coco_root / "annotations" / "instances_train2017.json").read_text())
    image = ann["images"][0]
    rows = [[float(v) for v in line.split()] for line in (labels / f"{image['id']:012d}.txt").read_text().splitlines()]
    boxes = [a for a in ann["annotations"] if a["image_id"] == image["id"]]
    assert len(rows) == len(boxes)
    x, y, w, h = boxes[0]["bbox"]
    cls = b.category_ids.index(boxes[0]["category_id"])
    assert rows[0] == pytest.approx([cls, (x + w / 2) / image["width"], (y + h / 2) / image["height"],
                                     w / image["width"], h / image["height"]], abs=1e-5)
    # Ultralytics reads our labels back (its label cache lands in the cache too)
    from ultralytics.data.dataset import YOLODataset
    from ultralytics.data.utils import check_det_dataset

    data = check_det_dataset(str(data_yaml))
    ds = YOLODataset(img_path=data["train"], imgsz=SIZE, data=data, augment=False)
    assert len(ds.labels) == 12 and sum(len(lb["cls"]) for lb in ds.labels) == len(ann["annotations"])
    assert listing(coco_root) == before


# --- the score: pycocotools on predictions vs the COCO json -------------------------------------------------------


def pycocotools_map(gt_json: Path, predictions_json: Path) -> float:
    """pycocotools run directly on the files, as anyone would."""
    import contextlib
    import io

    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(gt_json))
        ev = COCOeval(gt, gt.loadRes(str(predictions_json)), "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return 100 * ev.stats[0]


def test_score_equals_pycocotools(coco_root, tmp_path):
    from harness.tasks.detection import score_predictions

    gt = coco_root / "annotations" / "instances_val2017.json"
    anns = json.loads(gt.read_text())["annotations"]
    perfect = [{"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"], "score": 1.0}
               for a in anns]
    assert score_predictions(gt, perfect) == pytest.approx(100.0)
    g = torch.Generator().manual_seed(0)
    noisy = []
    for a in anns:
        for k in range(3):
            jitter = (torch.randn(4, generator=g) * 0.08 * torch.tensor(a["bbox"][2:] * 2)).tolist()
            box = [a["bbox"][0] + jitter[0], a["bbox"][1] + jitter[1], a["bbox"][2] * (1 + jitter[2] / 100),
                   a["bbox"][3] + jitter[3]]
            noisy.append({"image_id": a["image_id"], "category_id": a["category_id"] if k < 2 else 3,
                          "bbox": [round(v, 2) for v in box], "score": round(torch.rand(1, generator=g).item(), 4)})
    path = tmp_path / "predictions.json"
    path.write_text(json.dumps(noisy))
    ours = score_predictions(gt, noisy)
    assert 5 < ours < 95 and ours == pytest.approx(pycocotools_map(gt, path), abs=1e-9)
    assert score_predictions(gt, []) == 0.0


def test_task_evaluate_equals_pycocotools_on_its_predictions(task, coco_root, tmp_path):
    model = lively(create_model("yolov8n", num_classes=80)).eval()
    predictions = task.predictions(model)
    assert predictions and {p["image_id"] for p in predictions} <= {im["id"] for im in task.data.test._index[0]}
    assert all(p["bbox"][2] >= 0 and p["bbox"][3] >= 0 for p in predictions)
    path = tmp_path / "predictions.json"
    path.write_text(json.dumps(predictions))
    assert task.evaluate(model) == pytest.approx(pycocotools_map(coco_root / "annotations" / "instances_val2017.json",
                                                                  path), abs=1e-9)


# --- calibration, loss, training ----------------------------------------------------------------------------------


def test_calibration_and_loss(task):
    from harness.protocol.observations import split_batch

    a, b = task.calibration_batches(0), task.calibration_batches(0)
    assert len(a) == 2 and all(torch.equal(x[0], y[0]) and torch.equal(x[1], y[1]) for x, y in zip(a, b))
    x, y = a[0]
    assert x.shape == (4, 3, SIZE, SIZE) and y.shape[0] == 4 and y.shape[2] == 5
    model = create_model("yolov8n", num_classes=80).eval()
    prune_config_of(model)  # requires_grad on
    loss = task.loss(model, a[0])
    loss.backward()
    assert torch.isfinite(loss) and loss > 0
    # every backbone/neck conv gets a gradient (the head's box branches only where targets are assigned)
    convs = {n: m for n, m in model.named_modules() if isinstance(m, nn.Conv2d) and not n.startswith("model.22")}
    assert all(m.weight.grad is not None and m.weight.grad.abs().sum() > 0 for m in convs.values())
    # per-image pieces of a batch are batches too (for per-sample squared gradients)
    pieces = list(split_batch(a[0]))
    assert len(pieces) == 4 and torch.isfinite(task.loss(model, pieces[0]))


def test_recipe_mapping():
    from harness.errors import HarnessError
    from harness.tasks.detection import trainer_overrides
    from specs.track import Recipe

    r = Recipe(epochs=3, batch_size=8, lr=0.01, momentum=0.937, warmup_epochs=1, augmentation="none")
    o = trainer_overrides(r, 64, 0, "cpu")
    assert (o["epochs"], o["batch"], o["nbs"], o["lr0"], o["cos_lr"], o["lrf"], o["optimizer"]) == \
           (3, 8, 8, 0.01, True, 0.0, "SGD")
    assert o["mosaic"] == 0 and o["fliplr"] == 0 and o["amp"] is False and o["val"] is False
    flip = trainer_overrides(r.model_copy(update={"augmentation": "crop_flip", "schedule": "constant"}), 64, 0, "cpu")
    assert "mosaic" not in flip and flip["lrf"] == 1.0 and not flip["cos_lr"]
    for bad in ({"schedule": "step"}, {"label_smoothing": 0.1}, {"augmentation": "randaug"}):
        with pytest.raises(HarnessError):
            trainer_overrides(r.model_copy(update=bad), 64, 0, "cpu")


def test_train_in_place_with_grad_hook(task, coco_root):
    from specs.track import Recipe

    model = create_model("yolov8n", num_classes=80).eval()
    before = copy.deepcopy(model.state_dict())
    calls = []
    recipe = Recipe(epochs=1, batch_size=4, lr=0.01, schedule="constant")
    data_before = listing(coco_root)
    out = task.train(model, recipe, seed=0, grad_hook=lambda step, total: calls.append((step, total)))
    assert out is model and not model.training and getattr(model, "criterion", None) is None
    assert calls == [(0, 3), (1, 3), (2, 3)]  # 12 images / batch 4, one optimizer step each
    changed = [k for k, v in model.state_dict().items() if v.is_floating_point() and not torch.equal(v, before[k])]
    assert len(changed) > 100
    assert all(p.requires_grad for p in model.parameters())
    assert listing(coco_root) == data_before


# --- base checkpoints -------------------------------------------------------------------------------------------


def _with_checkpoint(track_file: Path, tmp_path: Path, path: Path, sha256) -> Path:
    import yaml

    data = yaml.safe_load(track_file.read_text())
    data["checkpoint"] = {"path": str(path), "sha256": sha256}
    out = tmp_path / "track.yaml"
    out.write_text(yaml.safe_dump(data))
    return out


def test_checkpoint_files(task, track_file, coco_root, tmp_path):
    """A state dict, and an Ultralytics checkpoint (original C2f architecture, fp16, pickled model)
    loaded weights-only, both give the same base model; the base metric is pycocotools'."""
    from ultralytics.nn.tasks import DetectionModel

    from harness.tasks import task_for
    from harness.tracks import load_track

    torch.manual_seed(3)
    original = lively(DetectionModel("yolov8n.yaml", nc=80, verbose=False)).eval()
    ultra = tmp_path / "yolov8n.pt"
    torch.save({"model": copy.deepcopy(original).half(), "epoch": -1}, ultra)
    state = tmp_path / "state.pt"
    converted = create_model("yolov8n", num_classes=80)
    from harness.models.yolo import load_state
    load_state(converted, {k: v.half().float() if v.is_floating_point() else v for k, v in original.state_dict().items()})
    torch.save(converted.state_dict(), state)
    x = torch.rand(2, 3, SIZE, SIZE)
    results = []
    for path in (ultra, state):
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        t = task_for(load_track(str(_with_checkpoint(track_file, tmp_path, path, digest))), data_root=coco_root,
                     cache_dir=tmp_path)
        base = t.base_model()
        assert base.sha256 == digest and base.path == path
        assert base.metric == pytest.approx(t.evaluate(base.model))
        assert (path.parent / f"{path.name}.metric.json").is_file()
        results.append(outputs(base.model, x))
    assert torch.allclose(results[0], results[1], atol=1e-4)


def test_checkpoint_errors_are_one_line(track_file, coco_root, tmp_path):
    state = tmp_path / "state.pt"
    torch.save(create_model("yolov8n", num_classes=80).state_dict(), state)
    wrong = _with_checkpoint(track_file, tmp_path, state, "b" * 64)
    res = invoke("evaluate", "--method", "magnitude_l2", "--track", wrong, "--data-root", coco_root, "--speedup", 2,
                 "--out", tmp_path / "results")
    assert res.exit_code == 2 and "does not match the track's " + "b" * 64 in " ".join(res.output.split())
    missing = _with_checkpoint(track_file, tmp_path, tmp_path / "nope.pt", None)
    res = invoke("pretrain", missing, "--data-root", coco_root)
    assert res.exit_code == 2 and f"base checkpoint not found: expected {tmp_path / 'nope.pt'}" in \
        " ".join(res.output.split())
    other = tmp_path / "other.pt"
    torch.save(create_model("yolov8s", num_classes=80).state_dict(), other)
    res = invoke("pretrain", _with_checkpoint(track_file, tmp_path, other, None), "--data-root", coco_root)
    assert res.exit_code == 2 and "cannot load as yolov8n with 80 classes" in " ".join(res.output.split())
    res = invoke("pretrain", track_file, "--data-root", tmp_path / "no-such-dir")
    assert res.exit_code == 2 and "coco: data root" in res.output and len(res.output.strip().splitlines()) == 1


# --- end to end -----------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_evaluate_yolov8n_on_tiny_coco_end_to_end(task, track_file, coco_root, tmp_path, pbench_cache):
    """`pbench-harness evaluate --method magnitude_l2 --model yolov8n --dataset coco` on CPU, offline, through
    the subprocess runner; the record's mAP is pycocotools' on the saved final model."""
    before = listing(coco_root)
    res = invoke("pretrain", track_file, "--data-root", coco_root)
    assert res.exit_code == 0, res.output
    # "<track id>: <path>" (Ultralytics' own logging and progress bars may come before it, on any stream)
    path = Path(re.search(r"tiny-coco: (\S+\.pt)", res.output).group(1))
    assert path.is_file() and f"sha256 {hashlib.sha256(path.read_bytes()).hexdigest()}" in res.output
    res = invoke("evaluate", "--method", "magnitude_l2", "--model", "yolov8n", "--dataset", "coco", "--data-root",
                 coco_root, "--track", track_file, "--speedup", 2, "--out", tmp_path / "results")
    assert res.exit_code == 0, res.output
    assert "map50_95 base" in res.output
    run = next((tmp_path / "results" / "tiny-coco").iterdir())
    record = json.loads((run / "result.json").read_text())
    assert record["status"] == "ok" and record["metric"]["name"] == "map50_95"
    assert record["speedup"]["achieved"] >= 2 and record["min_channel_fraction"] >= 0.1
    assert record["provenance"]["checkpoint_sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    final = torch.load(run / "final.pt", weights_only=False).eval()
    assert all(p.dtype == torch.float32 for p in final.parameters())
    assert record["metric"]["final"] == pytest.approx(task.evaluate(final), abs=1e-9)
    pruned = torch.load(run / "pruned.pt", weights_only=False).eval()
    assert outputs(pruned, torch.rand(1, 3, SIZE, SIZE)).shape == (1, 84, 84)
    assert listing(coco_root) == before  # the user's data folder is only read
