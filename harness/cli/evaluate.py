"""``evaluate`` (one run) and ``sweep`` (methods x speedups x seeds) commands."""

from __future__ import annotations

import enum
from pathlib import Path
from typing import Annotated, Optional

import torch
import typer

from harness.views import leaderboard
from harness.cli.common import ProgressDisplay, console, friendly, out, parse_hp, parse_list
from harness.errors import HarnessError
from harness.methods import find_method, providing
from harness.protocol.run import RunSpec, evaluate as run_protocol
from harness.orchestration.sweep import run_sweep
from harness.runners import RUNNERS
from harness.tracks import load_track, track_for
from specs.result import ResultRecord
from specs.track import TRACK_RECIPE, TrackConfig

app = typer.Typer()

Strategy = enum.Enum("Strategy", {s: s for s in ("local", "global", "protected_global")}, type=str)
Runner = enum.Enum("Runner", {r: r for r in RUNNERS.names()}, type=str)
Device = enum.Enum("Device", {d: d for d in ("cpu", "cuda")}, type=str)

TrackOpt = Annotated[Optional[str], typer.Option(help="track id or track file (default: the track for --model/--dataset)")]
ModelOpt = Annotated[Optional[str], typer.Option(help="model name (with --dataset selects the track)")]
DatasetOpt = Annotated[Optional[str], typer.Option(help="dataset name")]
StrategyOpt = Annotated[Optional[Strategy], typer.Option(help="override the track's pruning strategy")]
RunnerOpt = Annotated[Runner, typer.Option(help="how the method runs", envvar="PBENCH_RUNNER")]
OutDirOpt = Annotated[Path, typer.Option("--out", help="results folder", envvar="PBENCH_RESULTS")]
DataRootOpt = Annotated[Optional[Path], typer.Option(help="dataset root (CIFAR/ImageNet/COCO)", envvar="PBENCH_DATA")]
CacheOpt = Annotated[Optional[Path], typer.Option(help="base checkpoint cache (default ~/.cache/pbench)",
                                                  envvar="PBENCH_CACHE")]
DeviceOpt = Annotated[Device, typer.Option(help="cpu or cuda")]
ThreadsOpt = Annotated[Optional[int], typer.Option(help="torch threads for the harness", min=1)]
RegOpt = Annotated[Optional[str], typer.Option(
    "--regularizer", help="regularizer method id or folder: sparse-train with it first (the track's sparsify "
                          "recipe); '-' = none")]
RegHpOpt = Annotated[Optional[list[str]], typer.Option(
    "--reg-hp", help="regularizer hyperparameter name=value (repeatable)")]
TimeoutOpt = Annotated[Optional[float], typer.Option(help="per-call deadline for the method, seconds (caps the "
                                                          "manifest's)", min=0.1)]


def resolve_track(track: Optional[str], model: Optional[str], dataset: Optional[str],
                  strategy: Optional[Strategy]) -> TrackConfig:
    if track:
        cfg = load_track(track)
        if (model and model != cfg.model.name) or (dataset and dataset != cfg.dataset.name):
            raise HarnessError(f"track {cfg.id} is {cfg.model.name} on {cfg.dataset.name}; "
                               f"drop --model/--dataset or pick another track")
    else:
        if not model or not dataset:
            raise HarnessError("give --track, or both --model and --dataset")
        from harness.data import DATASETS
        from harness.models import MODELS
        MODELS.get(model)
        DATASETS.get(dataset)
        cfg = track_for(model, dataset)
    if strategy is not None and strategy.value != cfg.pruning.strategy:
        cfg = cfg.model_copy(update={"pruning": cfg.pruning.model_copy(update={"strategy": strategy.value})})
    return cfg


def find_regularizer(name: Optional[str]):
    """``None``/``-`` = no regularizer; otherwise a method that provides one (else bad input)."""
    if name is None or name.strip() in ("", "-", "none"):
        return None
    source = find_method(name.strip())
    if "regularizer" not in source.manifest.provides:
        regs = [m.id for m in providing("regularizer")]
        raise HarnessError(f"method {source.id!r} provides no regularizer (it provides "
                           f"{'+'.join(source.manifest.provides)}); regularizers: {', '.join(regs) or 'none'}")
    return source


def _regularizer_list(raw: str) -> list:
    """``--regularizers``: ids, ``-`` for none, ``all`` for every regularizer method."""
    names = parse_list(raw, str, "--regularizers")
    out = []
    for name in names:
        if name == "all":
            out += providing("regularizer")
        else:
            out.append(find_regularizer(name))
    return out


def _setup(device: Device, threads: Optional[int], executor: Optional["Executor"] = None) -> None:
    """``--device cuda`` needs a GPU here, unless the runs go to Slurm jobs (whose nodes have them)."""
    if device.value == "cuda" and executor != Executor.slurm and not torch.cuda.is_available():
        raise HarnessError("--device cuda: no CUDA device is available here (use --device cpu)")
    if threads:
        torch.set_num_threads(threads)


def _warn_constant(record: ResultRecord) -> None:
    warning = leaderboard.constant_scores_warning(record)
    if warning:
        console.print(f"[yellow]{warning}[/yellow]", highlight=False, soft_wrap=True)


def _summary(record: ResultRecord, run_dir: Optional[Path] = None) -> str:
    m = record.metric
    who = leaderboard.run_name(record)
    if record.status == "failed":
        return f"{who} {record.speedup.target:g}x seed {record.seed}: FAILED: {record.error}"
    reg = f", sparsify {record.timing.reg_s:.1f}s" if record.timing.reg_s is not None else ""
    return (f"{who} {record.speedup.target:g}x seed {record.seed}: "
            f"{m.name} base {m.base:.2f} -> pruned {m.pruned:.2f}"
            + (f" (BN re-estimated {m.pruned_recal:.2f})" if m.pruned_recal is not None else "")
            + f" -> final {m.final:.2f} ({m.delta:+.2f}); "
            f"speedup {record.speedup.achieved:.2f}x (target {record.speedup.target:g}x), "
            f"params {record.params.pruned / record.params.base:.1%}, min channels kept "
            f"{record.min_channel_fraction:.0%}, step {record.timing.step_s:.2f}s{reg}"
            + (f"; latency speedup {record.latency.speedup_batch1:.2f}x (batch 1)" if record.latency else "")
            + (f" -> {run_dir}" if run_dir else ""))


@app.command()
@friendly
def evaluate(
    method: Annotated[str, typer.Option(help="method id (see `pbench-harness methods`) or a method folder")],
    speedup: Annotated[float, typer.Option(help="target MACs speedup, e.g. 2, 4, 8")],
    model: ModelOpt = None, dataset: DatasetOpt = None, track: TrackOpt = None,
    seed: Annotated[int, typer.Option(help="run seed")] = 0,
    strategy: StrategyOpt = None,
    runner: RunnerOpt = Runner.subprocess,
    out_dir: OutDirOpt = Path("results"),
    data_root: DataRootOpt = None, cache_dir: CacheOpt = None, device: DeviceOpt = Device.cpu,
    hp: Annotated[Optional[list[str]], typer.Option(help="method hyperparameter name=value (repeatable)")] = None,
    regularizer: RegOpt = None, reg_hp: RegHpOpt = None,
    call_timeout: TimeoutOpt = None, threads: ThreadsOpt = None,
    no_models: Annotated[bool, typer.Option("--no-models", help="do not save sparse/pruned/final models")] = False,
) -> None:
    """Prune one model with one method to one speedup, retrain, evaluate; write one result record."""
    _setup(device, threads)
    cfg = resolve_track(track, model, dataset, strategy)
    spec = RunSpec(track=cfg, method=find_method(method), speedup=speedup, seed=seed, runner=runner.value,
                   out=out_dir, data_root=data_root, cache_dir=cache_dir, device=device.value,
                   hyperparameters=parse_hp(hp), call_timeout=call_timeout, save_models=not no_models,
                   regularizer=find_regularizer(regularizer), reg_hyperparameters=parse_hp(reg_hp))
    with ProgressDisplay() as progress:
        record, run_dir = run_protocol(spec, progress)
    out.print(_summary(record, run_dir), highlight=False, soft_wrap=True)
    _warn_constant(record)
    if record.status != "ok":
        raise typer.Exit(1)


Executor = enum.Enum("Executor", {e: e for e in ("local", "slurm")}, type=str)
ExecutorOpt = Annotated[Executor, typer.Option(
    help="local: worker processes on this machine (--jobs); slurm: one Slurm job per run via submitit "
         "(--slurm-config); the result store must then be on a shared file system")]
SlurmConfigOpt = Annotated[Optional[Path], typer.Option(
    help="Slurm options file (YAML/JSON: partition, gpus_per_job, cpus_per_job, mem_gb, time_min, "
         "array_parallelism, account, qos, constraint, extra_sbatch, setup, folder)")]
JobsOpt = Annotated[int, typer.Option(help="local executor: runs in parallel (worker processes)", min=1)]
RetryOpt = Annotated[bool, typer.Option("--retry-failed", help="re-run runs recorded as failed")]
NoModelsOpt = Annotated[bool, typer.Option("--no-models", help="do not save sparse/pruned/final models")]
SpeedupsOpt = Annotated[Optional[str], typer.Option(help="comma-separated targets (default: the track's)")]
SeedsOpt = Annotated[Optional[str], typer.Option(help="comma-separated seeds (default: the track's)")]


def _grid(cfg: TrackConfig, combos: list[dict], speedups: Optional[str], seeds: Optional[str],
          **common) -> tuple[list[float], list[RunSpec]]:
    """(targets, one RunSpec per combo x target x seed); ``combos`` hold method/regularizer/recipe."""
    targets = parse_list(speedups, float, "--speedups") if speedups else list(cfg.pruning.speedups)
    seed_list = parse_list(seeds, int, "--seeds") if seeds else list(cfg.seeds)
    return targets, [RunSpec(track=cfg, speedup=target, seed=seed, **combo, **common)
                     for combo in combos for target in targets for seed in seed_list]


def _importance_sources(methods: str) -> list:
    if methods == "all":
        return providing("importance")
    sources = [find_method(m) for m in parse_list(methods, str, "--methods")]
    for src in sources:  # bad input before the first run, not in the middle of the sweep
        if "importance" not in src.manifest.provides:
            raise HarnessError(f"method {src.id!r} provides no importance scores (it is a regularizer: "
                               f"pass it with --regularizers)")
    return sources


def _run_all(specs: list[RunSpec], out_dir: Path, jobs: int, retry_failed: bool, executor: Executor,
             slurm_config: Optional[Path]):
    """Run (or skip) every spec with per-run lines and progress; returns the sweep summary."""
    from harness.orchestration.cluster import load_slurm_options
    if slurm_config is not None and executor != Executor.slurm:
        raise HarnessError("--slurm-config needs --executor slurm")
    slurm = load_slurm_options(slurm_config) if executor == Executor.slurm else None
    if slurm is not None and specs and specs[0].device == "cuda" and slurm.gpus_per_job == 0:
        raise HarnessError("--device cuda on Slurm: set gpus_per_job >= 1 in the --slurm-config file")
    counter = iter(range(1, len(specs) + 1))

    def report(spec: RunSpec, record: ResultRecord, how: str) -> None:
        line = _summary(record) if how == "ran" else \
            f"{leaderboard.run_name(record)} {record.speedup.target:g}x seed {record.seed}: skipped ({record.status}, recorded)"
        out.print(f"[{next(counter)}/{len(specs)}] {line}", highlight=False, soft_wrap=True)
        if how == "ran":
            _warn_constant(record)

    def log(line: str) -> None:
        console.print(line, highlight=False, soft_wrap=True)

    with ProgressDisplay(enabled=jobs == 1 and executor == Executor.local) as progress:
        return run_sweep(specs, out_dir, jobs=jobs, retry_failed=retry_failed, on_result=report, progress=progress,
                         executor=executor.value, slurm=slurm, log=log)


def _fail_count(summary, total: int, out_dir: Path) -> None:
    out.print(f"ran {summary.ran}, skipped {summary.skipped} (already recorded), failed {summary.failed}")
    if summary.failed:
        console.print(f"{summary.failed} of {total} runs failed (recorded in {out_dir}; --retry-failed re-runs "
                      f"them)")
        raise typer.Exit(1)


@app.command()
@friendly
def sweep(
    methods: Annotated[str, typer.Option(help="comma-separated method ids, or 'all'")] = "all",
    regularizers: Annotated[str, typer.Option(
        help="comma-separated regularizer ids paired with every method; '-' = none, 'all' = every regularizer")] = "-",
    speedups: SpeedupsOpt = None, seeds: SeedsOpt = None,
    model: ModelOpt = None, dataset: DatasetOpt = None, track: TrackOpt = None, strategy: StrategyOpt = None,
    runner: RunnerOpt = Runner.subprocess, out_dir: OutDirOpt = Path("results"),
    data_root: DataRootOpt = None, cache_dir: CacheOpt = None, device: DeviceOpt = Device.cpu,
    call_timeout: TimeoutOpt = None, threads: ThreadsOpt = None, no_models: NoModelsOpt = False,
    jobs: JobsOpt = 1, retry_failed: RetryOpt = False,
    executor: ExecutorOpt = Executor.local, slurm_config: SlurmConfigOpt = None,
) -> None:
    """Run methods x speedups x seeds on one track; finished runs are skipped, failures never stop the others."""
    _setup(device, threads, executor)
    cfg = resolve_track(track, model, dataset, strategy)
    sources = _importance_sources(methods)
    combos = [dict(method=src, regularizer=reg) for src in sources for reg in _regularizer_list(regularizers)]
    _, specs = _grid(cfg, combos, speedups, seeds, runner=runner.value, out=out_dir, data_root=data_root,
                     cache_dir=cache_dir, device=device.value, call_timeout=call_timeout, save_models=not no_models)
    summary = _run_all(specs, out_dir, jobs, retry_failed, executor, slurm_config)
    out.print()
    out.print(leaderboard.report(summary.records), highlight=False, soft_wrap=True)
    _fail_count(summary, len(specs), out_dir)


@app.command("recipe-swap")
@friendly
def recipe_swap(
    methods: Annotated[str, typer.Option(help="comma-separated method ids (at least two)")],
    recipes: Annotated[str, typer.Option(
        help="comma-separated retraining recipes of the track ('track' = its own `retrain`, others from its "
             "`recipes`)")],
    own: Annotated[Optional[str], typer.Option(
        help="each method's own recipe, method=recipe,... : also report the as-published comparison "
             "(A with its recipe vs B with its recipe)")] = None,
    speedups: SpeedupsOpt = None, seeds: SeedsOpt = None,
    model: ModelOpt = None, dataset: DatasetOpt = None, track: TrackOpt = None, strategy: StrategyOpt = None,
    runner: RunnerOpt = Runner.subprocess, out_dir: OutDirOpt = Path("results"),
    data_root: DataRootOpt = None, cache_dir: CacheOpt = None, device: DeviceOpt = Device.cpu,
    call_timeout: TimeoutOpt = None, threads: ThreadsOpt = None, no_models: NoModelsOpt = False,
    jobs: JobsOpt = 1, retry_failed: RetryOpt = False,
    executor: ExecutorOpt = Executor.local, slurm_config: SlurmConfigOpt = None,
) -> None:
    """Recipe swap (Wang et al. 2023): every method under every retraining recipe; does the ranking hold?"""
    from harness.orchestration import recipe_swap as swap
    _setup(device, threads, executor)
    cfg = resolve_track(track, model, dataset, strategy)
    sources = _importance_sources(methods)
    if len(sources) < 2:
        raise HarnessError("--methods: give at least two methods to compare")
    recipe_list = parse_list(recipes, str, "--recipes")
    if len(recipe_list) < 2:
        raise HarnessError(f"--recipes: give at least two (track {cfg.id} has: "
                           f"{', '.join([TRACK_RECIPE, *cfg.recipes])})")
    for name in recipe_list:
        try:
            cfg.retrain_recipe(name)
        except ValueError as e:
            raise HarnessError(str(e)) from None
    own_map: dict[str, str] = {}
    for item in parse_list(own, str, "--own") if own else []:
        m, sep, rec = item.partition("=")
        if not sep or m not in [s.id for s in sources] or rec not in recipe_list:
            raise HarnessError(f"--own: expected method=recipe with a method from --methods and a recipe from "
                               f"--recipes, got {item!r}")
        own_map[m] = rec
    combos = [dict(method=src, recipe=None if rec == TRACK_RECIPE else rec) for src in sources for rec in recipe_list]
    targets, specs = _grid(cfg, combos, speedups, seeds, runner=runner.value, out=out_dir, data_root=data_root,
                           cache_dir=cache_dir, device=device.value, call_timeout=call_timeout,
                           save_models=not no_models)
    summary = _run_all(specs, out_dir, jobs, retry_failed, executor, slurm_config)
    out.print()
    for line in leaderboard.base_warnings(summary.records):
        console.print(line, highlight=False, soft_wrap=True)
    for target in targets:
        for report in swap.analyse_sections(summary.records, [s.id for s in sources], recipe_list, target, own_map):
            out.print(swap.markdown(report), highlight=False, soft_wrap=True)
    _fail_count(summary, len(specs), out_dir)
