"""Image classification (top-1): digits, CIFAR, ImageNet tracks."""

from __future__ import annotations

import functools
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from harness.checkpoints import BaseCheckpoint, load_base
from harness.data import DatasetBundle, load_dataset
from harness.errors import HarnessError
from harness.grouping import PruneConfig
from harness.models import classifier_of
from harness.tasks.base import GradHook, Progress, Task
from harness.train import calibration_batches, evaluate_top1, train
from specs.track import Recipe


class ClassificationTask(Task):
    @functools.cached_property
    def data(self) -> DatasetBundle:
        return load_dataset(self.track.dataset.name, self.data_root, self.track.dataset.image_size)

    def base_model(self, progress: Optional[Progress] = None) -> BaseCheckpoint:
        return load_base(self.track, self.data, self.cache_dir, self.device, progress)

    def example_inputs(self) -> torch.Tensor:
        return torch.randn(1, self.data.in_chans, self.data.image_size, self.data.image_size, device=self.device)

    def prune_config(self, model: nn.Module) -> PruneConfig:
        modules = dict(model.named_modules())
        missing = [n for n in self.track.pruning.ignored_layers if n not in modules]
        if missing:
            raise HarnessError(f"track {self.track.id}: ignored layer {missing[0]!r} is not in the model")
        return PruneConfig(ignored_layers=[classifier_of(model)] +
                           [modules[n] for n in self.track.pruning.ignored_layers])

    def calibration_batches(self, seed: int) -> list:
        cal = self.track.calibration
        return calibration_batches(self.data.train, cal.num_samples, cal.batch_size, seed)

    def loss(self, model: nn.Module, batch) -> torch.Tensor:
        x, y = batch
        return F.cross_entropy(model(x.to(self.device)), y.to(self.device))

    def train(self, model: nn.Module, recipe: Recipe, seed: int, progress: Optional[Progress] = None,
              stage: str = "train", grad_hook: Optional[GradHook] = None) -> nn.Module:
        return train(model, self.data.train, recipe, seed=seed, device=self.device, grad_hook=grad_hook,
                     progress=progress, stage=stage)

    def evaluate(self, model: nn.Module) -> float:
        return evaluate_top1(model, self.data.test, device=self.device)
