"""Track config: one leaderboard setting, identical for every method.

A track fixes model, dataset, base checkpoint, pruning strategy and speedup
targets, calibration budget, sparsify budget, retrain recipe, metric and seeds.
Methods cannot override any of it. Its canonical hash goes into every result.
"""

from __future__ import annotations

import re
from typing import Annotated, ClassVar, Literal, Optional, Union

from pydantic import ConfigDict, Field, StrictInt, StringConstraints, model_serializer, model_validator

from specs.base import Identifier, PositiveFloat, Scalar, Sha256, Strict, Versioned, canonical, sha256_json
from specs.manifest import SandboxLimits

Strategy = Literal["local", "global", "protected_global"]
Metric = Literal["top1", "map50_95"]


#: ``model.name``: a registered name (``resnet18``), ``torchvision:<name>``, ``timm:<name>``, ``hf:<model_type>``
#: (transformers, built from a config), a factory on
#: PYTHONPATH ``<module>:<function>``, or ``file:<path>`` (a whole pickled model, with ``sha256``)
ModelName = Annotated[str, StringConstraints(
    pattern=r"^([a-z][a-z0-9_\-]{0,63}|(torchvision|timm|hf):[A-Za-z0-9_.\-]{1,128}"
            r"|[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*:[A-Za-z_][A-Za-z0-9_]*|file:[^\x00]{1,1024})$")]
#: a model keyword argument: a JSON scalar, or a list of scalars or of lists of them (timm's
#: ``depths: [1, 1, 2, 1]``, torchvision's ``inverted_residual_setting: [[1, 16, 1, 1], ...]``)
ModelArg = Union[Scalar, list[Union[Scalar, list[Scalar]]]]


class _Finite(Strict):
    """Numbers in a recipe, checkpoint, pruning or calibration setting are finite: an infinite learning rate
    or margin is a typo, never a setting."""

    model_config = ConfigDict(**Strict.model_config, allow_inf_nan=False)


class ModelRef(Strict):
    """Which architecture a track prunes; everything here is part of the track hash.

    ``kwargs`` go to the factory (never pretrained weights: the base checkpoint belongs to the track).
    ``file:<path>`` loads a whole pickled ``nn.Module`` with ``torch.load(weights_only=False)``, which
    runs code from the file: only name files you trust; ``sha256`` pins the file and is required.
    """

    name: ModelName
    kwargs: dict[str, ModelArg] = Field(default_factory=dict)
    sha256: Optional[Sha256] = Field(None, description="file: models: sha256 of the file (required for them)")

    @model_validator(mode="after")
    def _file_digest(self) -> "ModelRef":
        if self.name.startswith("file:"):
            if self.sha256 is None:
                raise ValueError("a file: model needs its sha256 (sha256sum FILE)")
            if self.kwargs:
                raise ValueError("a file: model is already built: it takes no kwargs")
        elif self.sha256 is not None:
            raise ValueError("sha256 pins a file: model; this model is built from code")
        return self

    @model_serializer(mode="wrap")
    def _omit_unset_digest(self, handler):
        # a model built from code has no sha256: leaving the key out keeps the hashes of tracks (and the
        # cache keys of their base checkpoints) what they were before file: models existed
        data = handler(self)
        if self.sha256 is None:
            data.pop("sha256", None)
        return data

    def slug(self) -> str:
        """The name as a file-name-safe identifier (``timm:vit_tiny`` -> ``timm-vit_tiny``): for
        derived track ids and cache file names."""
        if self.name.startswith("file:"):
            stem = self.name[5:].rstrip("/").rsplit("/", 1)[-1].rsplit(".", 1)[0]
            raw = f"file-{stem}"
        else:
            raw = self.name
        slug = re.sub(r"[^a-z0-9_]+", "-", raw.lower()).strip("-")
        if not slug or not slug[0].isalpha():
            slug = f"m-{slug}"
        return slug[:48]


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


class Recipe(_Finite):
    """A training recipe (pretraining, sparse training or retraining).

    ``batch_size`` is the global batch: a run over N processes (torchrun) gives each N-th of it,
    so the recipe means the same optimization on one GPU or many. Augmentation beyond crop/flip
    (mixup/cutmix, RandAugment, random erasing) and the repeated-augmentation sampler are timm's
    (``timm.data``).
    """

    added_fields: ClassVar[frozenset[str]] = frozenset({
        "nesterov", "bias_norm_decay", "mixup_alpha", "cutmix_alpha", "auto_augment", "random_erase",
        "ra_repeats", "clip_grad_norm", "channels_last", "compile"})

    epochs: int = Field(ge=0)
    batch_size: int = Field(ge=1)
    optimizer: Literal["sgd", "adamw"] = "sgd"
    lr: PositiveFloat
    momentum: float = Field(0.9, ge=0, lt=1)
    nesterov: bool = Field(True, description="sgd: Nesterov momentum (when momentum > 0); Torch-Pruning's and "
                                             "torchvision's scripts use plain momentum (false)")
    weight_decay: float = Field(5e-4, ge=0)
    bias_norm_decay: bool = Field(False, description="apply weight_decay to biases and normalization weights too "
                                                     "(Torch-Pruning's and torchvision's scripts do); default: only "
                                                     "to weights of two or more dimensions")
    schedule: Literal["cosine", "step", "constant"] = "cosine"
    milestones: list[float] = Field(default_factory=list, description="step schedule: fractions of training")
    gamma: float = Field(0.1, gt=0, le=1)
    warmup_epochs: int = Field(0, ge=0)
    label_smoothing: float = Field(0.0, ge=0, lt=1)
    augmentation: Literal["none", "crop_flip", "crop", "randaug"] = "none"
    mixup_alpha: float = Field(0.0, ge=0, description="mixup's Beta(alpha, alpha); 0 = off (timm.data.Mixup: "
                                                      "with cutmix too, one of the two per batch, 50/50)")
    cutmix_alpha: float = Field(0.0, ge=0, description="cutmix's Beta(alpha, alpha); 0 = off")
    auto_augment: Optional[str] = Field(
        None, pattern=r"^(rand|augmix|original|originalr|v0|v0r|3a)(-[a-z]+[0-9.]*)*$",
        description="timm auto-augment config string, e.g. 'rand-m9-n2-p1.0' (RandAugment: 2 ops of magnitude 9, each applied); "
                    "image-file datasets only (its ops act on PIL images in the loader's workers)")
    random_erase: float = Field(0.0, ge=0, le=1, description="random erasing probability (timm.data.RandomErasing)")
    ra_repeats: int = Field(0, ge=0, le=16, description="repeated-augmentation sampler (timm.data.RepeatAugSampler): "
                                                        "every image this many times per epoch, spread over the "
                                                        "processes; 0 = off (DeiT and PruningBench's ViT: 3)")
    clip_grad_norm: Optional[PositiveFloat] = Field(None, description="clip the gradients' total L2 norm to this")
    amp: Union[bool, Literal["fp16", "bf16"]] = Field(
        False, description="autocast: fp16 (or true) with a gradient scaler, on CUDA only; bf16 on any device; "
                           "false = fp32")
    channels_last: bool = Field(False, description="channels-last memory format for 4-D inputs and weights")
    compile: bool = Field(False, description="torch.compile the training step's model (first steps are slower)")

    @model_validator(mode="after")
    def _repeats(self) -> "Recipe":
        if self.ra_repeats == 1:
            raise ValueError("ra_repeats: 0 (off) or at least 2")
        return self

    def hash(self) -> str:
        return sha256_json(canonical(self))


#: the default of ``checkpoint.chance_margin``: top-1 points a base must beat chance by
CHANCE_MARGIN = 5.0


class Checkpoint(_Finite):
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
    chance_margin: Optional[float] = Field(
        CHANCE_MARGIN, ge=0, le=100,
        description="top-1 tracks: the base (trained or published) must beat chance (100 / classes %) by at least "
                    "this many points, else it is a failed base and no run is recorded on it; null: not checked "
                    "(smoke tests of the protocol on bases trained for seconds)")

    @model_validator(mode="after")
    def _source(self) -> "Checkpoint":
        if self.path is None and self.pretrain is None:
            raise ValueError("checkpoint needs a path or a pretrain recipe")
        return self

    @model_serializer(mode="wrap")
    def _omit_default_margin(self, handler):
        # at its default the margin is left out, so the hashes of tracks written before it existed hold
        data = handler(self)
        if self.chance_margin == CHANCE_MARGIN:
            data.pop("chance_margin", None)
        return data


class Pruning(_Finite):
    added_fields: ClassVar[frozenset[str]] = frozenset({"round_to"})

    strategy: Strategy = "protected_global"
    min_channel_fraction: float = Field(0.1, gt=0, lt=1, description="protected_global: hard floor per group")
    rounds: int = Field(1, ge=1, le=1000, description="progressive pruning: score/prune rounds, importance "
                                                      "recomputed on the partly pruned model each round (round r "
                                                      "reaches target^(r/rounds)); scores are asked for once per round")
    speedups: list[PositiveFloat] = Field(min_length=1)
    ignored_layers: list[str] = Field(default_factory=list, description="never pruned (classifier is always kept)")
    round_to: StrictInt = Field(1, ge=1, le=1024, description="every pruned group keeps a multiple of this many channel "
                                                        "slots (Torch-Pruning's round_to; attention: head dims, so "
                                                        "heads x head_dim too; grouped convs: slots per conv group)")

    @model_validator(mode="after")
    def _speedups(self) -> "Pruning":
        if any(s <= 1 for s in self.speedups):
            raise ValueError("speedups must be > 1 (e.g. 2, 4, 8)")
        return self


class Calibration(_Finite):
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
    sandbox: SandboxLimits = Field(
        default_factory=SandboxLimits,
        description="caps on method containers under the docker runner (operational: not part of the track hash)")
    control: Identifier = Field(
        "random", description="the method every other one is compared with in each cell of the leaderboard (Holm "
                              "over the k - 1 comparisons); how results are read, not part of the track hash")

    @model_validator(mode="after")
    def _recipe_names(self) -> "TrackConfig":
        if TRACK_RECIPE in self.recipes:
            raise ValueError(f"recipes: {TRACK_RECIPE!r} is reserved for the track's own `retrain` recipe")
        return self

    def hash(self) -> str:
        """sha256 of the canonical JSON of the (validated) setting: everything but the alternative
        recipes, the sandbox caps, the control of the comparisons and the spec version (none of them changes
        what a track measures)."""
        return sha256_json(canonical(self, exclude={"recipes", "sandbox", "control", "spec_version"}))

    def retrain_recipe(self, name: Optional[str]) -> Recipe:
        """The retraining recipe called ``name`` (``None`` or ``"track"``: the track's own)."""
        if name is None or name == TRACK_RECIPE:
            return self.retrain
        if name not in self.recipes:
            known = ", ".join([TRACK_RECIPE, *self.recipes])
            raise ValueError(f"track {self.id} has no retraining recipe {name!r} (it has: {known})")
        return self.recipes[name]
