"""``evaluate`` (one method), ``sweep`` (methods x speedups x seeds) and ``recipe-swap``.

Each command parses its flags into a :class:`harness.plan.Plan` (with ``sweep --plan FILE``, the file's
values, overridden by the flags given on the command line), resolves it and runs it with
:func:`harness.plan.run_plan` (``evaluate``: every run, recorded or not); all validation is the plan's.
Heavy modules (torch, the protocol) are imported inside the commands.
"""

from __future__ import annotations

import enum
import functools
import inspect
import math
import os
import re
from pathlib import Path
from typing import Annotated, Callable, Optional

import typer

from harness.cli.common import (SANDBOX_OPTIONS, MaxCallTimeoutOpt, MaxCpusOpt, MaxMemoryOpt, MaxWriteOpt, MinFreeOpt,
                                ProgressDisplay, console, friendly, out, parse_hp, parse_list, sandbox_caps)
from harness.errors import HarnessError
from harness.plan import Plan, PlanError, ResolvedPlan, run_plan
from harness.runners import RUNNERS
from specs.result import ResultRecord

app = typer.Typer()

Strategy = enum.Enum("Strategy", {s: s for s in ("local", "global", "protected_global")}, type=str)
Runner = enum.Enum("Runner", {r: r for r in RUNNERS.names()}, type=str)
Device = enum.Enum("Device", {d: d for d in ("cpu", "cuda")}, type=str)
Executor = enum.Enum("Executor", {e: e for e in ("local", "slurm")}, type=str)

TrackOpt = Annotated[Optional[str], typer.Option(help="track id or track file (default: the track of --model, "
                                                      "or of --model with --dataset)")]
ModelOpt = Annotated[Optional[str], typer.Option(help="model: a registered name, torchvision:<name>, timm:<name>, "
                                                      "<module>:<factory> or file:<path>; selects its track (with "
                                                      "--dataset: the pair's, or one derived from the dataset's "
                                                      "default track)")]
DatasetOpt = Annotated[Optional[str], typer.Option(help="dataset name")]
StrategyOpt = Annotated[Optional[Strategy], typer.Option(help="override the track's pruning strategy")]
#: a string, checked by the plan (one-line error for 0, -1, abc and 1025 alike)
RoundToOpt = Annotated[Optional[str], typer.Option(
    "--round-to", metavar="INTEGER", help="override the track's pruning.round_to: pruned groups keep a multiple of "
                                          "this many channels, 1 to 1024 (8 or 16 for hardware-friendly widths; "
                                          "1 = no rounding)")]


def round_to_value(text: Optional[str]):
    """``--round-to`` as the plan's field: an int when it is one, else the text (the plan refuses it)."""
    return int(text) if text is not None and re.fullmatch(r"\s*[+-]?\d+\s*", text) else text
RunnerOpt = Annotated[Runner, typer.Option(help="how the method runs", envvar="PBENCH_RUNNER")]
OutDirOpt = Annotated[Path, typer.Option("--out", help="results folder", envvar="PBENCH_RESULTS")]
DataRootOpt = Annotated[Optional[Path], typer.Option(help="dataset root (CIFAR/ImageNet/COCO)", envvar="PBENCH_DATA")]
CacheOpt = Annotated[Optional[Path], typer.Option(help="base checkpoint cache (default ~/.cache/pbench)",
                                                  envvar="PBENCH_CACHE")]
DeviceOpt = Annotated[Device, typer.Option(help="cpu or cuda")]
ThreadsOpt = Annotated[Optional[int], typer.Option(help="torch threads for the harness", min=1)]
TimeoutOpt = Annotated[Optional[float], typer.Option(help="per-call deadline for the method, seconds (caps the "
                                                          "manifest's)", min=0.1)]
NoModelsOpt = Annotated[bool, typer.Option("--no-models", help="do not save sparse/pruned/final models")]
SpeedupsOpt = Annotated[Optional[str], typer.Option(help="comma-separated targets (default: the track's)")]
SeedsOpt = Annotated[Optional[str], typer.Option(help="comma-separated seeds (default: the track's)")]


def _setup(device: Device, threads: Optional[int], executor: Executor = Executor.local) -> None:
    """``--device cuda`` needs a GPU here, unless the runs go to Slurm jobs (whose nodes have them)."""
    if device == Device.cuda and executor != Executor.slurm:
        from harness.protocol.distributed import require_device
        require_device(device.value)
    if threads:
        import torch
        torch.set_num_threads(threads)


def _warn_constant(record: ResultRecord) -> None:
    from harness.views.leaderboard import constant_scores_warning
    warning = constant_scores_warning(record)
    if warning:
        console.print(f"[yellow]{warning}[/yellow]", highlight=False, soft_wrap=True)


def _resolve(plan: Plan) -> ResolvedPlan:
    try:
        resolved = plan.resolve()
    except PlanError as e:  # a plan file's or the flags' one-line reason; field names for forms
        raise HarnessError(str(e)) from None
    for note in resolved.notes:  # a derived track, methods that cannot score the model
        console.print(note, highlight=False, soft_wrap=True)
    return resolved


def _summary(record: ResultRecord, run_dir: Optional[Path] = None) -> str:
    from harness.views.leaderboard import run_name
    m = record.metric
    who = run_name(record)
    if record.status != "ok":
        return f"{who} {record.speedup.target:g}x seed {record.seed}: {record.status.upper()}: {record.error}"
    reg = f", sparsify {record.timing.reg_s:.1f}s" if record.timing.reg_s is not None else ""
    return (f"{who} {record.speedup.target:g}x seed {record.seed}: "
            f"{m.name} base {m.base:.2f} -> pruned {m.pruned:.2f}"
            + (f" (BN re-estimated {m.pruned_recal:.2f})" if m.pruned_recal is not None else "")
            + f" -> final {m.final:.2f} ({m.delta:+.2f}); "
            f"speedup {record.speedup.achieved:.2f}x (target {record.speedup.target:g}x), "
            f"params {record.params.pruned / record.params.base:.1%}, min channels kept "
            f"{record.min_channel_fraction:.0%}, step {record.timing.step_s:.2f}s{reg}"
            + (f"; latency speedup (batch 1) {_latency(record)}" if record.latency else "")
            + (f" -> {run_dir}" if run_dir else ""))


@app.command()
@friendly
def evaluate(
    method: Annotated[str, typer.Option(help="method id (see `pbench-harness methods`) or a method folder")],
    speedup: Annotated[Optional[float], typer.Option(help="target MACs speedup, e.g. 2, 4, 8 (default: every "
                                                          "target of the track)")] = None,
    model: ModelOpt = None, dataset: DatasetOpt = None, track: TrackOpt = None,
    seed: Annotated[int, typer.Option(help="run seed")] = 0,
    strategy: StrategyOpt = None, round_to: RoundToOpt = None,
    runner: RunnerOpt = Runner.subprocess,
    out_dir: OutDirOpt = Path("results"),
    data_root: DataRootOpt = None, cache_dir: CacheOpt = None, device: DeviceOpt = Device.cpu,
    hp: Annotated[Optional[list[str]], typer.Option(help="method hyperparameter name=value (repeatable)")] = None,
    regularizer: Annotated[Optional[str], typer.Option(
        "--regularizer", help="regularizer method id or folder: sparse-train with it first (the track's sparsify "
                              "recipe); '-' = none")] = None,
    reg_hp: Annotated[Optional[list[str]], typer.Option(
        "--reg-hp", help="regularizer hyperparameter name=value (repeatable)")] = None,
    call_timeout: TimeoutOpt = None, threads: ThreadsOpt = None, no_models: NoModelsOpt = False,
    max_memory_mb: MaxMemoryOpt = None, max_cpus: MaxCpusOpt = None, max_call_timeout: MaxCallTimeoutOpt = None,
    max_write_mb: MaxWriteOpt = None,
) -> None:
    """Prune one model with one method to a speedup (default: each of the track's), retrain, evaluate; one record each."""
    plan = Plan.build(track=track, model=model, dataset=dataset, methods=[method], regularizers=[regularizer or "-"],
                      speedups=[speedup] if speedup is not None else None, seeds=[seed],
                      strategy=strategy.value if strategy else None, round_to=round_to_value(round_to), runner=runner.value,
                      device=device.value,
                      out=out_dir, data_root=data_root, cache_dir=cache_dir, call_timeout=call_timeout,
                      save_models=not no_models, hyperparameters=parse_hp(hp), reg_hyperparameters=parse_hp(reg_hp),
                      sandbox=sandbox_caps(max_memory_mb=max_memory_mb, max_cpus=max_cpus,
                                           max_call_timeout=max_call_timeout, max_write_mb=max_write_mb))
    _setup(device, threads)
    resolved = _resolve(plan)
    from harness.protocol import distributed
    from harness.store import run_dir

    def report(spec, record: ResultRecord, how: str) -> None:
        if distributed.world().main:  # under torchrun: rank 0 speaks for the run
            out.print(_summary(record, run_dir(spec, record.run_key)), highlight=False, soft_wrap=True)
            _warn_constant(record)

    with ProgressDisplay(enabled=not distributed.launched() or os.environ.get("RANK") == "0") as progress:
        summary = run_plan(resolved, on_result=report, progress=progress, rerun=True)
    if summary.failed:
        raise typer.Exit(1)


def _latency(record) -> str:
    """``1.62x [1.58-1.66] (PyTorch), 1.20x [1.18-1.22] (ONNX Runtime)``: each runtime measured."""
    from harness.views.latency import LABELS, latency_cell, runtimes_of
    return ", ".join(f"{latency_cell([record], rt).text()} ({LABELS.get(rt, rt)})" for rt in runtimes_of([record]))


def _run_options(
    speedups: SpeedupsOpt = None, seeds: SeedsOpt = None,
    model: ModelOpt = None, dataset: DatasetOpt = None, track: TrackOpt = None, strategy: StrategyOpt = None,
    round_to: RoundToOpt = None, runner: RunnerOpt = Runner.subprocess, out_dir: OutDirOpt = Path("results"),
    data_root: DataRootOpt = None, cache_dir: CacheOpt = None, device: DeviceOpt = Device.cpu,
    call_timeout: TimeoutOpt = None, threads: ThreadsOpt = None, no_models: NoModelsOpt = False,
    jobs: Annotated[int, typer.Option(help="local executor: runs in parallel (worker processes)", min=1)] = 1,
    retry_failed: Annotated[bool, typer.Option("--retry-failed", help="re-run runs recorded as failed")] = False,
    executor: Annotated[Executor, typer.Option(
        help="local: worker processes on this machine (--jobs); slurm: one Slurm job per run via submitit "
             "(--slurm-config); the result store must then be on a shared file system")] = Executor.local,
    slurm_config: Annotated[Optional[Path], typer.Option(
        help="Slurm options file (YAML/JSON: partition, gpus_per_job, cpus_per_job, mem_gb, time_min, "
             "array_parallelism, account, qos, constraint, extra_sbatch, setup, folder)")] = None,
    max_memory_mb: MaxMemoryOpt = None, max_cpus: MaxCpusOpt = None, max_call_timeout: MaxCallTimeoutOpt = None,
    max_write_mb: MaxWriteOpt = None, min_free_mb: MinFreeOpt = None,
) -> None:
    """The options ``sweep`` and ``recipe-swap`` share (see :func:`with_run_options`)."""


#: plan field of each shared option whose name differs
_PLAN_NAMES = {"out_dir": "out", "no_models": "save_models"}


def _plan_fields(options: dict, explicit: set[str]) -> dict:
    """Shared options -> Plan fields; only ``explicit`` ones (given on the command line, or in the
    environment) when a plan file supplies the rest."""
    fields = {}
    for name, value in options.items():
        if name == "threads" or name not in explicit:
            continue
        if name in SANDBOX_OPTIONS:
            fields.setdefault("sandbox", {}).update(sandbox_caps(**{name: value}))
            continue
        if isinstance(value, enum.Enum):
            value = value.value
        if name == "speedups":
            value = parse_list(value, float, "--speedups") if value is not None else None
        elif name == "seeds":
            value = parse_list(value, int, "--seeds") if value is not None else None
        elif name == "no_models":
            value = not value
        elif name == "round_to":
            value = round_to_value(value)
        fields[_PLAN_NAMES.get(name, name)] = value
    return fields


def with_run_options(fn: Callable) -> Callable:
    """The command also takes :func:`_run_options`' options; it receives them as ``opts`` (a dict)."""
    shared = [p.replace(kind=inspect.Parameter.KEYWORD_ONLY)
              for p in inspect.signature(_run_options, eval_str=True).parameters.values()]
    own = [p.replace(kind=inspect.Parameter.KEYWORD_ONLY)
           for p in inspect.signature(fn, eval_str=True).parameters.values() if p.name != "opts"]

    @functools.wraps(fn)
    def wrapper(**kwargs):
        return fn(opts={p.name: kwargs.pop(p.name) for p in shared}, **kwargs)

    wrapper.__signature__ = inspect.Signature(own + shared)
    wrapper.__annotations__ = {p.name: p.annotation for p in own + shared}
    del wrapper.__wrapped__  # typer must see the merged signature
    return wrapper


def _explicit(ctx: typer.Context, names) -> set[str]:
    """The parameters of the running command that were given (command line or environment)."""
    given = ("COMMANDLINE", "ENVIRONMENT", "PROMPT")  # by name: typer may bring its own click
    return {n for n in names if getattr(ctx.get_parameter_source(n), "name", None) in given}


def _run_all(resolved: ResolvedPlan, opts: dict):
    """Run (or skip) every run with per-run lines and progress; returns the sweep summary."""
    from harness.views.leaderboard import run_name
    specs = resolved.specs
    counter = iter(range(1, len(specs) + 1))

    def report(spec, record: ResultRecord, how: str) -> None:
        line = _summary(record) if how == "ran" else \
            f"{run_name(record)} {record.speedup.target:g}x seed {record.seed}: skipped ({record.status}, recorded)"
        out.print(f"[{next(counter)}/{len(specs)}] {line}", highlight=False, soft_wrap=True)
        if how == "ran":
            _warn_constant(record)

    def log(line: str) -> None:
        console.print(line, highlight=False, soft_wrap=True)

    plan = resolved.plan
    _setup(Device(plan.device), opts["threads"], Executor(plan.executor))
    with ProgressDisplay(enabled=plan.jobs == 1 and plan.executor == "local") as progress:
        return run_plan(resolved, on_result=report, progress=progress, log=log)


def _fail_count(summary, total: int, out_dir: Path) -> None:
    out.print(f"ran {summary.ran}, skipped {summary.skipped} (already recorded), failed {summary.failed}")
    if summary.failed:
        console.print(f"{summary.failed} of {total} runs failed (recorded in {out_dir}; --retry-failed re-runs "
                      f"them)")
        raise typer.Exit(1)


@app.command()
@friendly
@with_run_options
def sweep(
    ctx: typer.Context,
    methods: Annotated[Optional[str], typer.Option(help="comma-separated method ids, or 'all' (default)")] = None,
    regularizers: Annotated[Optional[str], typer.Option(
        help="comma-separated regularizer ids paired with every method; '-' = none (default), 'all' = every "
             "regularizer")] = None,
    plan_file: Annotated[Optional[Path], typer.Option(
        "--plan", help="a plan file (YAML/JSON, the fields of harness.plan.Plan); flags given here override it")]
    = None,
    dry_run: Annotated[bool, typer.Option(
        "--dry-run", help="run nothing: measure a few steps of each stage on this device and print the projected "
                          "device-hours per run and for the sweep")] = False,
    target_difference: Annotated[Optional[float], typer.Option(
        "--target-difference",
        help="with --dry-run: instead of the device time, how many seeds each cell needs to detect this difference "
             "of the metric to the track's control, from the between-seed spread recorded in --out")] = None,
    opts: dict = None,
) -> None:
    """Run methods x speedups x seeds on one track; finished runs are skipped, failures never stop the others."""
    own = {"methods": parse_list(methods, str, "--methods") if methods is not None else None,
           "regularizers": parse_list(regularizers, str, "--regularizers") if regularizers is not None else None}
    if plan_file is None:
        explicit = set(opts)
        fields = {**_plan_fields(opts, explicit), **{k: v for k, v in own.items() if v is not None}}
        plan = Plan.build(**fields)
    else:
        explicit = _explicit(ctx, opts)
        fields = {**_plan_fields(opts, explicit), **{k: v for k, v in own.items() if v is not None}}
        plan = Plan.from_file(plan_file, **fields)
    if target_difference is not None and not dry_run:
        raise HarnessError("--target-difference goes with --dry-run (it runs nothing)")
    if target_difference is not None and not (math.isfinite(target_difference) and target_difference > 0):
        raise HarnessError(f"--target-difference must be a finite number > 0 (a difference of the track's "
                           f"metric), got "
                           f"{target_difference:g}")
    resolved = _resolve(plan)
    if target_difference is not None:
        out.print(_seeds_needed(resolved, target_difference), highlight=False, soft_wrap=True)
        return
    if dry_run:
        from harness.orchestration.estimate import estimate, markdown
        _setup(Device(plan.device), opts["threads"])
        cost = estimate(resolved, log=lambda line: console.print(line, highlight=False, soft_wrap=True))
        out.print(markdown(cost), highlight=False, soft_wrap=True)
        return
    if resolved.plan.recipes is not None:
        summary = _run_all(resolved, opts)
        _swap_report(resolved, summary)
    else:
        from harness.views import leaderboard
        summary = _run_all(resolved, opts)
        out.print()
        out.print(leaderboard.report(summary.records), highlight=False, soft_wrap=True)
    _fail_count(summary, len(resolved.specs), plan.out)


def _seeds_needed(resolved: ResolvedPlan, difference: float) -> str:
    """The seeds table of ``sweep --dry-run --target-difference`` from the track's records in the plan's --out."""
    from harness.store import Store
    from harness.views.leaderboard import seeds_needed
    track = resolved.track
    out_dir = resolved.plan.out
    records = [r for r in (Store.load(out_dir).records.values() if Path(out_dir).is_dir() else [])
               if r.track.id == track.id and r.track.hash == track.hash()]
    try:
        return seeds_needed(records, difference)
    except ValueError as e:
        raise HarnessError(f"--target-difference: {out_dir} holds {len(records)} records of {track.id} (this track "
                           f"version): {e}") from None


def _swap_report(resolved: ResolvedPlan, summary) -> None:
    from harness.views import recipe_swap as swap
    out.print()
    from harness.views.leaderboard import base_warnings
    for line in base_warnings(summary.records):
        console.print(line, highlight=False, soft_wrap=True)
    for target in resolved.targets:
        for report in swap.analyse_sections(summary.records, [s.id for s in resolved.methods],
                                            resolved.plan.recipes, target, resolved.plan.own):
            out.print(swap.markdown(report), highlight=False, soft_wrap=True)


@app.command("recipe-swap")
@friendly
@with_run_options
def recipe_swap(
    methods: Annotated[str, typer.Option(help="comma-separated method ids (at least two)")],
    recipes: Annotated[str, typer.Option(
        help="comma-separated retraining recipes of the track ('track' = its own `retrain`, others from its "
             "`recipes`)")],
    own: Annotated[Optional[str], typer.Option(
        help="each method's own recipe, method=recipe,... : also report the as-published comparison "
             "(A with its recipe vs B with its recipe)")] = None,
    opts: dict = None,
) -> None:
    """Recipe swap (Wang et al. 2023): every method under every retraining recipe; does the ranking hold?"""
    own_map: dict[str, str] = {}
    for item in parse_list(own, str, "--own") if own else []:
        m, sep, rec = item.partition("=")
        if not sep or not m or not rec:
            raise HarnessError(f"--own: expected method=recipe, got {item!r}")
        own_map[m] = rec
    plan = Plan.build(methods=parse_list(methods, str, "--methods"), recipes=parse_list(recipes, str, "--recipes"),
                      own=own_map, **_plan_fields(opts, set(opts)))
    resolved = _resolve(plan)
    summary = _run_all(resolved, opts)
    _swap_report(resolved, summary)
    _fail_count(summary, len(resolved.specs), plan.out)
