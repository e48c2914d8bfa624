"""Image classification (top-1): digits, CIFAR, ImageNet tracks.

The model's own prune adapter (:func:`harness.models.prune_config_of`: attention heads and bare
parameters of a ViT) is merged with what classification never prunes (the classifier's outputs and
the track's ``ignored_layers``), and its fix-up runs after every pruning step.
"""

from __future__ import annotations

import functools
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from harness.protocol.checkpoints import BaseCheckpoint, build_model, load_base
from harness.data import DatasetBundle, load_track_dataset
from harness.errors import HarnessError
from harness.models import classifier_of, logits_of, variants_of
from harness.protocol.train import GradHook, Progress
from harness.tasks.base import Task
from harness.protocol.train import calibration_batches, check_recipe, evaluate_top1, settings, train_bundle
from specs.result import TrainingSettings
from specs.track import Recipe


class ClassificationTask(Task):
    @functools.cached_property
    def data(self) -> DatasetBundle:
        return load_track_dataset(self.track.dataset, self.data_root)

    def base_model(self, progress: Optional[Progress] = None) -> BaseCheckpoint:
        self._check_variant()
        return load_base(self.track, self.data, self.cache_dir, self.device, progress, data_root=self.data_root)

    def _check_variant(self) -> None:
        """ImageNet data with a model name that has an ImageNet variant must say which one it means:
        silently building the CIFAR-style network at 224 px would be a different benchmark."""
        wanted = getattr(self.data, "model_variant", None)
        ref = self.track.model
        if wanted and "variant" not in ref.kwargs and wanted in variants_of(ref.name):
            raise HarnessError(
                f"track {self.track.id}: {ref.name} on {self.data.name} needs model kwargs `variant: {wanted}` "
                f"(torchvision's architecture); write `variant: cifar` to mean the CIFAR-style {ref.name}")

    def architecture(self) -> nn.Module:
        return build_model(self.track, self.data)

    def example_inputs(self) -> torch.Tensor:
        return torch.randn(1, self.data.in_chans, self.data.image_size, self.data.image_size, device=self.device)

    def never_pruned(self, model: nn.Module) -> list[nn.Module]:
        return [classifier_of(model)]

    def calibration_batches(self, seed: int) -> list:
        cal = self.track.calibration
        # Image-folder datasets augment their train split on the fly; calibration must be the same
        # images, identically preprocessed, for every method: they provide the train images under the
        # evaluation transform as `train_eval`.
        source = getattr(self.data, "train_eval", None)
        return calibration_batches(self.data.train if source is None else source, cal.num_samples,
                                   cal.batch_size, seed)

    def loss(self, model: nn.Module, batch) -> torch.Tensor:
        x, y = batch
        return F.cross_entropy(logits_of(model(x.to(self.device))), y.to(self.device))

    def train(self, model: nn.Module, recipe: Recipe, seed: int, progress: Optional[Progress] = None,
              stage: str = "train", grad_hook: Optional[GradHook] = None) -> nn.Module:
        return train_bundle(model, self.data, recipe, seed=seed, device=self.device, grad_hook=grad_hook,
                            progress=progress, stage=stage)

    def check_recipe(self, recipe: Recipe, what: str) -> None:
        check_recipe(recipe, self.data.training_split(recipe), what)

    def training_settings(self, recipe: Recipe) -> TrainingSettings:
        return settings(recipe, self.data.training_split(recipe), self.device)

    def evaluate(self, model: nn.Module) -> float:
        return evaluate_top1(model, self.data.test, device=self.device)
