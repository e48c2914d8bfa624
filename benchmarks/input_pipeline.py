"""Input pipeline: images/s of the harness's training loader on an ImageFolder of real-size JPEGs vs
torchvision's reference ImageNet loader (references/classification/train.py: ImageFolder +
RandomSampler + DataLoader(num_workers=W, pin_memory=True)) with the same transforms and the same W
workers, and vs the loader the harness had before (DataLoader with num_workers=0).

The images are crops of the two real photos that ship inside the Ultralytics package, resized to
ImageNet's typical 500x375 and saved as JPEG (quality 90): real decode work. Each loader reads
--epochs epochs (the harness keeps its workers across epochs, as in training); side by side,
interleaved, in one run; prints medians and ratios (targets: >= 0.95x torchvision; > 1x workers=0).

    python benchmarks/input_pipeline.py [--images 256] [--batch 32] [--epochs 2] [--repeats 3]
"""

from __future__ import annotations

import argparse
import random
import statistics
import tempfile
import time
from pathlib import Path

import torch
from PIL import Image
from torch.utils.data import DataLoader, RandomSampler

from harness.data.fixtures import ultralytics_assets
from harness.data.imagenet import imagenet
from harness.protocol.train import _LoaderFeed, loader_workers
from specs.track import Recipe


def write_jpegs(root: Path, n: int, classes: int = 4, seed: int = 0) -> None:
    rng = random.Random(seed)
    photos = [Image.open(ultralytics_assets() / name).convert("RGB") for name in ("bus.jpg", "zidane.jpg")]
    for split, count in (("train", n), ("val", classes)):
        for i in range(count):
            photo = rng.choice(photos)
            w, h = photo.size
            cw, ch = rng.randint(w // 3, w), rng.randint(h // 3, h)
            x, y = rng.randint(0, w - cw), rng.randint(0, h - ch)
            img = photo.crop((x, y, x + cw, y + ch)).resize((500, 375), Image.BILINEAR)
            folder = root / split / f"n{i % classes:08d}"
            folder.mkdir(parents=True, exist_ok=True)
            img.save(folder / f"{split}_{i:06d}.JPEG", quality=90)


def rate(batches, n_images: int) -> float:
    t0 = time.perf_counter()
    seen = 0
    for x, _ in batches:
        seen += len(x)
    assert seen == n_images, (seen, n_images)
    return seen / (time.perf_counter() - t0)


def harness_loader(ds, recipe: Recipe, epochs: int):
    feed = _LoaderFeed(ds, recipe, "cpu", torch.Generator().manual_seed(0), seed=0)  # what train() builds
    for epoch in range(epochs):
        yield from feed.epoch(epoch)


def torchvision_reference(ds, batch: int, workers: int, epochs: int):
    loader = DataLoader(ds, batch_size=batch, sampler=RandomSampler(ds), num_workers=workers, pin_memory=True,
                        drop_last=True)
    for _ in range(epochs):
        yield from loader


def single_process(ds, batch: int, epochs: int):
    loader = DataLoader(ds, batch_size=batch, shuffle=True, num_workers=0, drop_last=True)
    for _ in range(epochs):
        yield from loader


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    workers = loader_workers()
    recipe = Recipe(epochs=args.epochs, batch_size=args.batch, lr=0.1)
    with tempfile.TemporaryDirectory() as tmp:
        write_jpegs(Path(tmp), args.images)
        ds = imagenet(Path(tmp), 224).train  # RandomResizedCrop(224) + flip + to tensor + normalize
        n = args.images // args.batch * args.batch * args.epochs
        ours, ref, zero = [], [], []
        for _ in range(args.repeats):  # interleaved, so machine noise hits all alike
            ours.append(rate(harness_loader(ds, recipe, args.epochs), n))
            ref.append(rate(torchvision_reference(ds, args.batch, workers, args.epochs), n))
            zero.append(rate(single_process(ds, args.batch, args.epochs), n))
    a, b, c = statistics.median(ours), statistics.median(ref), statistics.median(zero)
    print(f"{args.images} JPEGs of 500x375, batch {args.batch}, {args.epochs} epochs, {workers} workers, "
          f"median of {args.repeats}:")
    print(f"  harness training loader:          {a:7.1f} images/s")
    print(f"  torchvision reference loader:     {b:7.1f} images/s")
    print(f"  DataLoader(num_workers=0):        {c:7.1f} images/s")
    print(f"  ratio harness / torchvision: {a / b:.3f}x (target >= 0.95x)")
    print(f"  speedup over num_workers=0:  {a / c:.2f}x")


if __name__ == "__main__":
    main()
