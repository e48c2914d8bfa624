"""The result record: one JSON file per run, validated when written and when read."""

from __future__ import annotations

import math
from typing import Literal, Optional

from pydantic import Field, field_validator, model_validator

from specs.base import Sha256, Strict, Versioned
from specs.track import Metric, Strategy


class MethodInfo(Strict):
    id: str
    version: str
    runner: Literal["inprocess", "subprocess", "docker"]
    image_digest: Optional[str] = None
    hyperparameters: dict[str, bool | int | float | str] = Field(default_factory=dict)


class TrackInfo(Strict):
    id: str
    hash: Sha256


class Speedup(Strict):
    target: float
    achieved: Optional[float] = None


class BeforeAfter(Strict):
    base: Optional[float] = None
    pruned: Optional[float] = None


class MetricInfo(Strict):
    name: Metric
    base: Optional[float] = None
    pruned: Optional[float] = Field(None, description="after pruning, before retraining")
    pruned_recal: Optional[float] = Field(
        None, description="after pruning, before retraining, with BatchNorm running statistics re-estimated on "
                          "the track's calibration images (no gradient step); null for models without BatchNorm")
    final: Optional[float] = None
    delta: Optional[float] = Field(None, description="final - base")

    @field_validator("base", "pruned", "pruned_recal", "final", "delta")
    @classmethod
    def _finite(cls, v: Optional[float]) -> Optional[float]:
        if v is not None and not math.isfinite(v):
            raise ValueError(f"a metric is a finite number or null, got {v}")
        return v


class Timing(Strict):
    step_s: Optional[float] = Field(None, description="pruning step: observations + scoring + pruning")
    score_s: Optional[float] = Field(None, description="time spent inside the method answering score requests")
    method_start_s: Optional[float] = Field(None, description="the method process's start (launch to handshake), "
                                                              "on a thread beside the prune stage; a process "
                                                              "launched ahead (a spare) shows its handshake only")
    method_start_wait_s: Optional[float] = Field(None, description="the part of method_start_s the prune stage "
                                                                   "waited for (not in step_s)")
    reg_s: Optional[float] = Field(None, description="sparse training time (regularizer runs)")
    retrain_s: Optional[float] = None
    total_s: Optional[float] = None


#: a speedup's 95% confidence interval wider than this (relative, either side) makes the figure uncertain
UNCERTAIN_HALF_WIDTH = 0.10


class RuntimeLatency(Strict):
    """The base and the pruned model timed in one deployment runtime (spec 1.4), the same way as eager
    PyTorch (:class:`Latency`). ``status`` unmeasured: the runtime is not available here (e.g. TensorRT
    without a GPU); failed: the model did not export or run (``reason``, one line)."""

    runtime: str = Field(description="onnxruntime, tensorrt, ...")
    status: Literal["measured", "unmeasured", "failed"]
    reason: Optional[str] = None
    version: Optional[str] = None
    providers: list[str] = Field(default_factory=list, description="execution providers, in order")
    device: str = "cpu"
    threads: Optional[int] = None
    clock: Optional[Literal["thread_cpu", "wall"]] = None
    max_abs_diff: Optional[float] = Field(None, description="max |runtime - PyTorch| over the pruned model's "
                                                            "outputs on a calibration batch")
    base_max_abs_diff: Optional[float] = Field(None, description="the same for the base model's export; either "
                                                                 "beyond 1e-3 x max(1, max |output|): failed")
    batch1_base_ms: Optional[float] = None
    batch1_pruned_ms: Optional[float] = None
    speedup_batch1: Optional[float] = None
    speedup_batch1_ci: Optional[tuple[float, float]] = None
    throughput_batch: Optional[int] = None
    speedup_throughput: Optional[float] = None
    speedup_throughput_ci: Optional[tuple[float, float]] = None
    blocks: Optional[int] = None
    uncertain: bool = Field(False, description="a 95% interval wider than +-10% of its speedup")


class Latency(Strict):
    """Measured inference time of the base and the pruned model in eager PyTorch. Spec 1.4: timed in
    interleaved blocks for at least a fixed wall time per model and batch size; the speedups are
    Hodges-Lehmann estimates over paired blocks with a 95% interval (records before 1.4: medians over
    ``repeats``, no interval); ``runtimes``: the same in deployment runtimes."""

    device: str
    batch1_base_ms: float
    batch1_pruned_ms: float
    speedup_batch1: float
    throughput_batch: int
    throughput_base: float = Field(description="samples/s")
    throughput_pruned: float = Field(description="samples/s")
    speedup_throughput: float
    repeats: int = Field(description="forward passes per model and batch size")
    threads: Optional[int] = Field(None, description="intra-op threads (torch.set_num_threads), fixed while timing")
    clock: Optional[Literal["thread_cpu", "wall"]] = Field(
        None, description="thread_cpu: the timing thread's CPU time (CPU, one thread: time given to other processes "
                          "is not counted); wall: wall time (GPU, several threads; records before 1.4)")
    blocks: Optional[int] = Field(None, description="paired blocks per batch size (each: base then pruned, or "
                                                    "pruned then base, alternating)")
    speedup_batch1_ci: Optional[tuple[float, float]] = Field(None, description="95% interval (Hodges-Lehmann)")
    speedup_throughput_ci: Optional[tuple[float, float]] = None
    uncertain: bool = Field(False, description="a 95% interval wider than +-10% of its speedup")
    seconds: Optional[float] = Field(None, description="wall time of the whole latency stage (all runtimes, exports)")
    runtimes: dict[str, RuntimeLatency] = Field(default_factory=dict, description="deployment runtimes (spec 1.4)")

    def deployed(self) -> Optional[RuntimeLatency]:
        """The first deployment runtime that was measured (the Pareto plot's default), if any."""
        return next((r for r in self.runtimes.values() if r.status == "measured"), None)


class Diagnostics(Strict):
    """How degenerate the method's scores were, as the planner ranked them (all groups together for the
    global strategies, each group alone for ``local``; summed over pruning rounds). Equal scores are ordered
    by a permutation seeded with the run seed, so a method whose scores are constant everywhere prunes at
    random."""

    tied_fraction: float = Field(ge=0, le=1, description="fraction of channels whose score equals another "
                                                         "channel's score")
    constant_groups: list[str] = Field(default_factory=list, description="groups (of two or more channels) whose "
                                                                         "scores are all equal")
    groups: int = Field(ge=0, description="groups of two or more channels that were scored")

    @property
    def all_constant(self) -> bool:
        """Every scored group had constant scores: the channels were chosen by the tie-break alone."""
        return self.groups > 0 and len(self.constant_groups) >= self.groups


class JobInfo(Strict):
    """The cluster job a run ran in (``sweep --executor slurm``)."""

    scheduler: Literal["slurm"] = "slurm"
    job_id: str = Field(description="Slurm job id; array tasks as <array job>_<task>")
    node: Optional[str] = None
    state: Optional[str] = Field(None, description="final scheduler state when the job ended without a result "
                                                   "(CANCELLED, TIMEOUT, PREEMPTED, NODE_FAIL, OUT_OF_MEMORY, ...)")


class TrainingSettings(Strict):
    """What one training stage applied on its device: the recipe's efficiency flags as the device allowed
    them (e.g. fp16 autocast only on CUDA) and how its data was fed."""

    amp: Optional[Literal["fp16", "bf16"]] = None
    channels_last: bool = False
    compiled: bool = False
    cudnn_benchmark: bool = False
    data: Literal["in_memory", "loader"] = Field(
        "in_memory", description="in_memory: tensors (and crop/flip/erasing/mixup) on the training device; "
                                 "loader: decoded by DataLoader workers")
    loader_workers: int = Field(0, ge=0, description="DataLoader worker processes per training process")
    world_size: int = Field(1, ge=1)


class Provenance(Strict):
    harness_version: str
    spec_version: str
    git_commit: Optional[str] = None
    packages: dict[str, str] = Field(default_factory=dict)
    checkpoint_sha256: Optional[Sha256] = None
    host: str = ""
    device: str = "cpu"
    torch_threads: Optional[int] = None
    world_size: int = Field(1, ge=1, description="processes the run was data-parallel over (torchrun)")
    backend: Optional[str] = Field(None, description="torch.distributed backend (gloo, nccl) when world_size > 1")
    training: dict[str, TrainingSettings] = Field(
        default_factory=dict, description="per training stage of this run (pretrain, sparsify, retrain)")


class ResultRecord(Versioned):
    status: Literal["ok", "failed", "cancelled"] = Field(
        description="ok; failed (the method or the run failed: see error); cancelled (a user stopped the run: "
                    "error says who and when). Only ok records are ranked; the others are shown, never dropped")
    error: Optional[str] = None
    run_key: str
    method: MethodInfo
    regularizer: Optional[MethodInfo] = None
    track: TrackInfo
    model: str
    dataset: str
    seed: int
    strategy: Strategy
    speedup: Speedup
    recipe: Optional[str] = Field(None, description="recipe-swap mode: the track recipe used for retraining "
                                                    "(null = the track's own `retrain`)")
    macs: BeforeAfter = BeforeAfter()
    params: BeforeAfter = BeforeAfter()
    metric: MetricInfo
    min_channel_fraction: Optional[float] = None
    round_to: int = Field(1, ge=1, description="the track's pruning.round_to as run (records before 1.4: 1)")
    layer_channels: dict[str, tuple[int, int]] = Field(default_factory=dict)
    timing: Timing = Timing()
    latency: Optional[Latency] = None
    diagnostics: Optional[Diagnostics] = Field(None, description="ties among the method's scores (null when the "
                                                                 "run failed before scoring)")
    provenance: Provenance
    job: Optional[JobInfo] = None
    files: dict[str, str] = Field(default_factory=dict, description="artifact name -> file name beside the record")
    started_at: str
    finished_at: str

    @model_validator(mode="after")
    def _consistent(self) -> "ResultRecord":
        if self.status != "ok" and not self.error:
            raise ValueError(f"a {self.status} record needs an error (the reason)")
        if self.status == "ok":
            if self.error:
                raise ValueError("an ok record has no error")
            missing = [n for n, v in (("speedup.achieved", self.speedup.achieved),
                                      ("metric.final", self.metric.final),
                                      ("macs.pruned", self.macs.pruned)) if v is None]
            if missing:
                raise ValueError(f"an ok record needs {', '.join(missing)}")
        return self
