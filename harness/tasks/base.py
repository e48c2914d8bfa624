"""The task interface the protocol is written against."""

from __future__ import annotations

import copy
from abc import ABC, abstractmethod
from pathlib import Path
from typing import TYPE_CHECKING, Optional

import torch
import torch.nn as nn

from harness.errors import HarnessError
from harness.protocol.grouping import PruneConfig
from harness.protocol.train import GradHook, Progress
from harness.models import prune_config_of
from specs.track import Recipe, TrackConfig

if TYPE_CHECKING:
    from harness.protocol.checkpoints import BaseCheckpoint
    from specs.result import TrainingSettings



class Task(ABC):
    """One track's model/data/metric. Constructed once per run; may load data lazily."""

    def __init__(self, track: TrackConfig, data_root: Optional[Path] = None, cache_dir: Optional[Path] = None,
                 device: str = "cpu"):
        self.track = track
        self.data_root = data_root
        self.cache_dir = cache_dir
        self.device = device

    @abstractmethod
    def base_model(self, progress: Optional[Progress] = None) -> "BaseCheckpoint":
        """The track's base checkpoint (loaded and hash-checked, or trained once and cached)."""

    @abstractmethod
    def architecture(self) -> nn.Module:
        """The track's model, freshly initialized: its architecture, without the base checkpoint."""

    @abstractmethod
    def example_inputs(self) -> torch.Tensor:
        """One input sample (batch 1) for tracing and for counting MACs."""

    def never_pruned(self, model: nn.Module) -> list[nn.Module]:
        """Layers this task never prunes beyond the track's ``ignored_layers`` (e.g. the classifier)."""
        return []

    def prune_config(self, model: nn.Module) -> PruneConfig:
        """What must never be pruned and how the graph is built, for this very model object: the
        model's own adapter (heads, bare parameters, fix-up) plus the task's and track's ignored layers."""
        modules = dict(model.named_modules())
        missing = [n for n in self.track.pruning.ignored_layers if n not in modules]
        if missing:
            raise HarnessError(f"track {self.track.id}: ignored layer {missing[0]!r} is not in the model")
        own = PruneConfig(ignored_layers=self.never_pruned(model) +
                          [modules[n] for n in self.track.pruning.ignored_layers])
        return prune_config_of(model).merged(own)

    @abstractmethod
    def calibration_batches(self, seed: int) -> list:
        """The track's fixed calibration budget, as batches ``loss`` understands."""

    @abstractmethod
    def loss(self, model: nn.Module, batch) -> torch.Tensor:
        """Scalar training loss of ``model`` on one calibration batch (for gradient observations)."""

    @abstractmethod
    def train(self, model: nn.Module, recipe: Recipe, seed: int, progress: Optional[Progress] = None,
              stage: str = "train", grad_hook: Optional[GradHook] = None) -> nn.Module:
        """Train in place with ``recipe``; ``grad_hook`` runs between backward and step."""

    @abstractmethod
    def evaluate(self, model: nn.Module) -> float:
        """The track's metric on the test split (percent)."""

    def check_recipe(self, recipe: Recipe, what: str) -> None:
        """Raise HarnessError (bad input, before anything runs) if this task cannot train with ``recipe``
        here (e.g. its batch does not split over the run's processes). ``what`` names it in the message."""

    def training_settings(self, recipe: Recipe) -> Optional["TrainingSettings"]:
        """What training with ``recipe`` applies on this device (recorded in the provenance), if known."""
        return None

    def after_prune(self, model: nn.Module) -> None:
        """Fix attributes Torch-Pruning cannot update (e.g. attention heads): the model adapter's fix-up."""
        fixup = prune_config_of(model).fixup
        if fixup is not None:
            fixup(model)

    def save(self, model: nn.Module, path: Path) -> None:
        """Save a whole (pruned) model, fp32 on CPU."""
        torch.save(copy.deepcopy(model).cpu().float(), path)

