"""Track config: one leaderboard setting, identical for every method.

A track fixes model, dataset, base checkpoint, pruning strategy and speedup
targets, calibration budget, sparsify budget, retrain recipe, metric and seeds.
Methods cannot override any of it. Its canonical hash goes into every result.
"""

from __future__ import annotations

from typing import Literal, Optional

from pydantic import Field, model_validator

from specs.base import Identifier, PositiveFloat, Scalar, Sha256, Strict, Versioned, sha256_json

Strategy = Literal["local", "global", "protected_global"]
Metric = Literal["top1", "map50_95"]


class ModelRef(Strict):
    name: Identifier
    kwargs: dict[str, Scalar] = Field(default_factory=dict)


class DatasetRef(Strict):
    name: Identifier
    image_size: Optional[int] = Field(None, ge=8, description="resize/crop side; null = native size")
    mean: Optional[list[float]] = Field(
        None, min_length=1, description="per-channel normalization mean, raw pixels in [0, 1]; null = the "
                                        "dataset's own (must match the base checkpoint, e.g. 0.5 for timm's ViTs)")
    std: Optional[list[float]] = Field(None, min_length=1, description="per-channel normalization std; with mean")

    @model_validator(mode="after")
    def _normalization(self) -> "DatasetRef":
        if (self.mean is None) != (self.std is None):
            raise ValueError("give both mean and std, or neither")
        if self.std is not None and (len(self.std) != len(self.mean) or any(s <= 0 for s in self.std)):
            raise ValueError("std must be positive and as long as mean")
        return self


class Recipe(Strict):
    """A training recipe (pretraining, sparse training or retraining)."""

    epochs: int = Field(ge=0)
    batch_size: int = Field(ge=1)
    optimizer: Literal["sgd", "adamw"] = "sgd"
    lr: PositiveFloat
    momentum: float = Field(0.9, ge=0, lt=1)
    weight_decay: float = Field(5e-4, ge=0)
    schedule: Literal["cosine", "step", "constant"] = "cosine"
    milestones: list[float] = Field(default_factory=list, description="step schedule: fractions of training")
    gamma: float = Field(0.1, gt=0, le=1)
    warmup_epochs: int = Field(0, ge=0)
    label_smoothing: float = Field(0.0, ge=0, lt=1)
    augmentation: Literal["none", "crop_flip", "crop", "randaug"] = "none"
    amp: bool = False

    def hash(self) -> str:
        return sha256_json(self.model_dump(mode="json"))


class Checkpoint(Strict):
    """The base model. ``path`` + ``sha256`` for published checkpoints; when ``path``
    is null the harness trains one with ``pretrain`` and caches it by hash. ``sha256``
    pins the expected digest either way: a published file, or the checkpoint the
    pretrain recipe gives (a cached or freshly trained file that differs is an error
    naming both digests)."""

    path: Optional[str] = None
    sha256: Optional[Sha256] = Field(None, description="expected sha256 of the base checkpoint file: the published "
                                                       "file's, or (with `pretrain`) the trained one's")
    pretrain: Optional[Recipe] = None
    pretrain_seed: int = 0

    @model_validator(mode="after")
    def _source(self) -> "Checkpoint":
        if self.path is None and self.pretrain is None:
            raise ValueError("checkpoint needs a path or a pretrain recipe")
        return self


class Pruning(Strict):
    strategy: Strategy = "protected_global"
    min_channel_fraction: float = Field(0.1, gt=0, lt=1, description="protected_global: hard floor per group")
    rounds: int = Field(1, ge=1, le=64, description="score/prune rounds; scores are asked for once per round")
    speedups: list[PositiveFloat] = Field(min_length=1)
    ignored_layers: list[str] = Field(default_factory=list, description="never pruned (classifier is always kept)")

    @model_validator(mode="after")
    def _speedups(self) -> "Pruning":
        if any(s < 1 for s in self.speedups):
            raise ValueError("speedups must be >= 1")
        return self


class Calibration(Strict):
    """Data the harness uses to compute observations (same for every method)."""

    num_samples: int = Field(ge=1)
    batch_size: int = Field(ge=1)
    positions_per_sample: int = Field(
        10, ge=1, le=4096,
        description="'inputs'/'output_gradients': output positions sampled per image (without replacement, "
                    "seeded by the run seed) for conv layers and token sequences; all positions when fewer")
    activation_samples: int = Field(
        256, ge=1,
        description="'inputs'/'output_gradients': number of calibration images used (the first ones), "
                    "bounding their memory")
    output_samples: int = Field(
        64, ge=1,
        description="'outputs': number of calibration images whose full feature maps are kept (the first ones)")
    output_budget_mb: int = Field(
        1024, ge=1,
        description="'outputs': fewer images (at least one) when output_samples images of full feature maps "
                    "would exceed this many MB (float32)")


#: the name of a track's own retraining recipe in the recipe-swap mode
TRACK_RECIPE = "track"


class TrackConfig(Versioned):
    id: Identifier
    description: str = ""
    model: ModelRef
    dataset: DatasetRef
    checkpoint: Checkpoint
    pruning: Pruning
    calibration: Calibration
    sparsify: Recipe
    retrain: Recipe
    metric: Metric = "top1"
    seeds: list[int] = Field(default_factory=lambda: [0, 1, 2], min_length=1)
    recipes: dict[Identifier, Recipe] = Field(
        default_factory=dict,
        description="named alternative retraining recipes for the recipe-swap mode (Wang et al. 2023): a run "
                    "may retrain with one of these instead of `retrain`. Not part of the track hash; a run "
                    "that uses one has the recipe's own hash in its run key")

    @model_validator(mode="after")
    def _recipe_names(self) -> "TrackConfig":
        if TRACK_RECIPE in self.recipes:
            raise ValueError(f"recipes: {TRACK_RECIPE!r} is reserved for the track's own `retrain` recipe")
        return self

    def hash(self) -> str:
        """sha256 of the canonical JSON of the (validated) setting: everything but the alternative
        recipes and the spec version (a new spec version does not change what a track measures)."""
        return sha256_json(self.model_dump(mode="json", exclude={"recipes", "spec_version"}))

    def retrain_recipe(self, name: Optional[str]) -> Recipe:
        """The retraining recipe called ``name`` (``None`` or ``"track"``: the track's own)."""
        if name is None or name == TRACK_RECIPE:
            return self.retrain
        if name not in self.recipes:
            known = ", ".join([TRACK_RECIPE, *self.recipes])
            raise ValueError(f"track {self.id} has no retraining recipe {name!r} (it has: {known})")
        return self.recipes[name]
