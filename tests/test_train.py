"""The training stack: in-memory crops against torchvision's RandomCrop(padding), the DataLoader path
(workers, persistent across epochs, pinned for CUDA), recipe flags (nesterov, decay on biases/norms,
step milestones, clipping, mixup/cutmix, random erasing, repeated augmentation, bf16 autocast,
channels_last, torch.compile) against torch/timm references, what the record says was applied, and
hashes that new recipe fields leave unchanged."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn as nn
from torch.utils.data import TensorDataset

from harness.data import load_dataset
from harness.errors import HarnessError
from harness.protocol import train as T
from specs.track import Recipe


def recipe(**kw) -> Recipe:
    return Recipe(**{"epochs": 1, "batch_size": 16, "lr": 0.05, "schedule": "constant", **kw})


class Net(nn.Module):
    def __init__(self, c: int = 1):
        super().__init__()
        self.conv = nn.Conv2d(c, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.fc = nn.Linear(8, 10)

    def forward(self, x):
        return self.fc(torch.relu(self.bn(self.conv(x))).mean((2, 3)))


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


def small(ds: TensorDataset, n: int = 128) -> TensorDataset:
    return TensorDataset(*(t[:n] for t in ds.tensors))


def test_in_memory_crop_flip_is_torchvisions_random_crop_with_padding():
    """Reference: torchvision's pad (raw zero) + crop + hflip on raw images, normalized afterwards."""
    import torchvision.transforms.functional as TF
    g = torch.Generator().manual_seed(0)
    raw = torch.rand(6, 3, 32, 32, generator=g)
    mean, std = torch.tensor([0.5, 0.4, 0.3]), torch.tensor([0.2, 0.25, 0.3])
    norm = lambda t: (t - mean.view(-1, 1, 1)) / std.view(-1, 1, 1)  # noqa: E731
    params = T.crop_flip_params(6, 32, "crop_flip", g)
    pad, dx, dy, flip = params
    assert pad == 4
    got = T.crop_flip(norm(raw), params, fill=[-m / s for m, s in zip(mean.tolist(), std.tolist())])
    for i in range(6):
        ref = TF.crop(TF.pad(raw[i], [pad], fill=0), int(dy[i]), int(dx[i]), 32, 32)
        ref = TF.hflip(ref) if flip[i] else ref
        assert torch.allclose(got[i], norm(ref), atol=1e-6)


def test_image_files_go_through_persistent_workers(tmp_path, monkeypatch):
    from harness.data.fixtures import write_tiny_imagefolder
    from harness.data.imagenet import imagenet
    write_tiny_imagefolder(tmp_path, num_classes=4, n_train=40, n_val=8, size=36)
    monkeypatch.setenv("PBENCH_LOADER_WORKERS", "2")
    ds = imagenet(tmp_path, 32).train
    feed = T._LoaderFeed(ds, recipe(epochs=2, batch_size=8), "cpu", torch.Generator().manual_seed(0), seed=0)
    assert (feed.loader.num_workers, feed.loader.persistent_workers, feed.loader.prefetch_factor) == (2, True, 4)
    assert feed.steps_per_epoch == 5
    epochs = [[y for _, y in feed.epoch(e)] for e in range(2)]
    for ys in epochs:
        assert len(ys) == 5 and sorted(torch.cat(ys).tolist()) == sorted(ds.targets)
    assert not torch.equal(torch.cat(epochs[0]), torch.cat(epochs[1]))  # reshuffled each epoch
    assert T.make_loader(ds, 8, device="cuda:0", workers=0).pin_memory
    assert not T.make_loader(ds, 8, device="cpu", workers=0).pin_memory


def test_loader_workers_follow_the_cpus_per_process(monkeypatch):
    import os
    monkeypatch.delenv("PBENCH_LOADER_WORKERS", raising=False)
    cpus = len(os.sched_getaffinity(0))
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "1")
    assert T.loader_workers() == max(1, min(16, cpus))
    monkeypatch.setenv("LOCAL_WORLD_SIZE", str(cpus * 2))
    assert T.loader_workers() == 1
    monkeypatch.setenv("PBENCH_LOADER_WORKERS", "0")
    assert T.loader_workers() == 0


def test_optimizer_options_are_torchs():
    model = Net()
    default = T.make_optimizer(model, recipe(weight_decay=1e-3))
    assert default.defaults["nesterov"] and [g["weight_decay"] for g in default.param_groups] == [1e-3, 0.0]
    assert sum(len(g["params"]) for g in default.param_groups) == len(list(model.parameters()))
    tp_style = T.make_optimizer(model, recipe(weight_decay=1e-3, nesterov=False, bias_norm_decay=True))
    assert not tp_style.defaults["nesterov"] and len(tp_style.param_groups) == 1
    assert tp_style.param_groups[0]["weight_decay"] == 1e-3


def test_step_milestones_match_multisteplr_at_epoch_boundaries():
    r = recipe(epochs=90, schedule="step", milestones=[0.3333333333333333, 0.6666666666666666])
    spe = 7
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0)
    ref = torch.optim.lr_scheduler.MultiStepLR(opt, [30, 60], gamma=0.1)
    for epoch in range(90):
        for s in range(spe):
            assert T.lr_factor(r, epoch * spe + s, 90 * spe, spe) == pytest.approx(opt.param_groups[0]["lr"])
        opt.step()
        ref.step()


def test_gradient_clipping_bounds_the_first_step(digits):
    torch.manual_seed(0)
    model = Net()
    before = [p.detach().clone() for p in model.parameters()]
    r = recipe(weight_decay=0.0, clip_grad_norm=1e-6, lr=1.0, batch_size=128)
    T.train(model, small(digits.train), r, seed=0)
    step = math.sqrt(sum(float((p.detach() - b).pow(2).sum()) for p, b in zip(model.parameters(), before)))
    assert 0 < step <= 1.0 * (1 + 0.9) * 1e-6 * 1.001  # Nesterov's first step is (1 + momentum) g


def test_mixup_cutmix_and_erasing_are_timms(digits, monkeypatch):
    import timm.data
    from timm.data.random_erasing import RandomErasing
    calls = {"mixup": 0, "erase": 0}
    mixup_call, erase_call = timm.data.Mixup.__call__, RandomErasing.__call__

    def mixup(self, x, y):
        calls["mixup"] += 1
        x2, y2 = mixup_call(self, x, y)
        assert y2.shape == (len(y), 10) and torch.allclose(y2.sum(1), torch.ones(len(y)))  # soft targets
        return x2, y2

    def erase(self, x):
        calls["erase"] += 1
        return erase_call(self, x)

    monkeypatch.setattr(timm.data.Mixup, "__call__", mixup)
    monkeypatch.setattr(RandomErasing, "__call__", erase)
    torch.manual_seed(0)
    plain = T.train(Net(), small(digits.train), recipe(), seed=0)
    torch.manual_seed(0)
    mixed = T.train(Net(), small(digits.train), recipe(mixup_alpha=0.2, cutmix_alpha=1.0, random_erase=0.5,
                                                       label_smoothing=0.1), seed=0, num_classes=10)
    assert calls == {"mixup": 8, "erase": 8}
    assert not torch.equal(plain.fc.weight, mixed.fc.weight)
    with pytest.raises(HarnessError, match="number of classes"):
        T.train(Net(), small(digits.train), recipe(mixup_alpha=0.2), seed=0)


def test_random_erasing_erases_on_the_device(digits):
    feed = T._TensorFeed(small(digits.train), recipe(random_erase=1.0), "cpu", torch.Generator().manual_seed(0),
                         None, seed=0)
    x, _ = next(feed.epoch(0))
    assert all((x[i] == 0).any() for i in range(len(x)))  # const mode: every image has a zeroed box


def test_repeated_augmentation_repeats_each_image(digits):
    from collections import Counter
    ds = small(digits.train, 300)
    feed = T._TensorFeed(ds, recipe(ra_repeats=3, batch_size=10), "cpu", torch.Generator().manual_seed(0), None, 0)
    ys = torch.cat([y for _, y in feed.epoch(0)])
    assert len(ys) == feed.steps_per_epoch * 10 == 250  # timm: 256 // 256 * 256 selected, in whole batches
    seen = Counter(tuple(x.flatten().tolist()) for x, _ in feed.epoch(0) for x in x)
    assert max(seen.values()) == 3 and len(seen) == math.ceil(250 / 3)


def test_auto_augment_needs_image_files(digits, tmp_path):
    with pytest.raises(HarnessError, match="image-file dataset"):
        T.check_recipe(recipe(auto_augment="rand-m9-n2-p1.0"), digits.train)
    from harness.data.fixtures import write_tiny_imagefolder
    from harness.data.imagenet import imagenet
    write_tiny_imagefolder(tmp_path, num_classes=2, n_train=4, n_val=2, size=36)
    bundle = imagenet(tmp_path, 32)
    assert bundle.training_split(recipe()) is bundle.train
    ds = bundle.training_split(recipe(auto_augment="rand-m9-n2-p1.0", random_erase=0.25))
    names = [type(t).__name__ for t in ds.transform.transforms]
    assert "RandAugment" in names and "RandomErasing" in names and len(ds) == len(bundle.train)
    assert ds[0][0].shape == (3, 32, 32)


def test_bf16_channels_last_and_what_the_record_says(digits):
    torch.manual_seed(0)
    model = T.train(Net(), small(digits.train), recipe(amp="bf16", channels_last=True), seed=0)
    assert model.conv.weight.is_contiguous()  # back to the default layout for pruning and saving
    s = T.settings(recipe(amp="bf16", channels_last=True), digits.train, "cpu")
    assert (s.amp, s.channels_last, s.data, s.loader_workers, s.world_size) == ("bf16", True, "in_memory", 0, 1)
    assert T.settings(recipe(amp=True), digits.train, "cpu").amp is None  # fp16 autocast needs CUDA
    assert T.settings(recipe(amp=True), digits.train, "cuda").amp == "fp16"
    assert T.settings(recipe(), digits.train, "cuda").cudnn_benchmark


@pytest.mark.slow
def test_torch_compile_trains_like_eager(digits):
    torch.manual_seed(0)
    eager = T.train(Net(), small(digits.train, 64), recipe(), seed=0)
    torch.manual_seed(0)
    compiled = T.train(Net(), small(digits.train, 64), recipe(compile=True), seed=0)
    assert type(compiled) is Net  # the protocol keeps the module, not the compiled wrapper
    for a, b in zip(eager.parameters(), compiled.parameters()):
        assert torch.allclose(a, b, atol=1e-4)


def test_new_recipe_fields_keep_old_hashes_and_count_when_set(tiny_track):
    r = tiny_track.retrain
    dumped = r.model_dump(mode="json")
    assert set(Recipe.added_fields) <= set(dumped)
    from specs.base import canonical, sha256_json
    old = {k: v for k, v in dumped.items() if k not in Recipe.added_fields}
    assert r.hash() == sha256_json(old)  # what a recipe hashed to before these fields existed
    assert r.model_copy(update={"channels_last": True}).hash() != r.hash()
    assert canonical(r.model_copy(update={"compile": True}))["compile"] is True


def test_a_record_says_what_training_applied(tiny_track, tmp_path):
    from harness.methods import find_method
    from harness.protocol.run import RunSpec, evaluate
    record, _ = evaluate(RunSpec(track=tiny_track, method=find_method("magnitude_l1"), speedup=2, seed=0,
                                 runner="inprocess", out=tmp_path, save_models=False, measure_latency=False))
    assert record.status == "ok"
    assert (record.provenance.world_size, record.provenance.backend) == (1, None)
    assert record.provenance.training["retrain"].model_dump() == T.settings(tiny_track.retrain, None, "cpu") \
        .model_copy(update={"data": "in_memory", "loader_workers": 0}).model_dump()
