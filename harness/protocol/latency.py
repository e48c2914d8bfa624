"""Measured inference latency: MACs speedup often differs from real speedup.

How it is timed (spec 1.4), identically for eager PyTorch and every deployment runtime:

- the base and the pruned model run in **interleaved paired blocks**: inside a block they alternate
  pass by pass (base first, then pruned first in the next block), ``PASSES`` passes each (more for
  tiny models, fewer down to 1 when the budget needs it: :func:`passes_per_block`), and a block's
  figure per model is its fastest pass (on a shared machine a pass is only ever slowed down);
- at batch 1 and at a throughput batch (shrunk for large inputs: :func:`throughput_batch_for`), for
  **at least** ``min_time_s`` per model and batch size **and** at least ``min_blocks`` blocks,
  whichever is longer, but no further than ``max_time_s`` per model and batch size once
  ``min_blocks`` are done (a 224 px ResNet-18 pair: 20 s of CPU time for the whole stage);
- with the intra-op **thread count fixed** (``threads``, 1 by default: ratios that do not depend on
  how many cores a shared machine happens to leave free) and recorded;
- on the CPU with one thread, on the timing thread's **CPU clock** (``time.thread_time``: time the
  scheduler gives other processes is not counted: on a 2-core machine at load 8, 20 passes took
  0.95 s of wall time and 0.09 s of CPU time; contention for caches, memory bandwidth or an SMT
  sibling still slows a pass), else wall time;
- the speedup is the **Hodges-Lehmann** estimate of the paired blocks' log ratios (the median of
  their Walsh averages), with its **95% interval** from the exact Wilcoxon signed-rank distribution
  (:func:`hodges_lehmann`); an interval wider than +-10% of the speedup, or fewer than
  :data:`MIN_BLOCKS_FOR_95` blocks, marks the figure ``uncertain``.

Deployment runtimes (:func:`measure`'s ``runtimes``): both models are exported to ONNX
(``torch.onnx.export``, the TorchScript exporter: seconds, not minutes, on a CPU; its graph dumps
silenced) and timed in ONNX Runtime on the CPU (also on CUDA runs); TensorRT through ONNX Runtime's
TensorRT provider on CUDA only, ``unmeasured`` elsewhere. Both exports are checked against PyTorch on
the calibration images first: beyond :data:`ONNX_ATOL` relative to the output's scale the runtime is
``failed`` with the differences in its reason (a wrong export is never timed, and views ignore it).
A model that does not export gets one line (``status: failed, reason``), never a failed run.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import math
import os
import statistics
import sys
import time
import warnings
from functools import lru_cache
from typing import Callable, Optional, Sequence

import torch
import torch.nn as nn

from specs.result import UNCERTAIN_HALF_WIDTH, Latency, RuntimeLatency

#: defaults of the measurement (the README's "Latency" section states what they cost on digits)
MIN_TIME_S = 0.2       # per model and batch size
MIN_BLOCKS = 12        # per batch size
MAX_TIME_S = 2.0       # budget per model and batch size: passes per block shrink (to 1) so min_blocks fit in it
BLOCK_S = 0.01         # a block's target length per model
PASSES = 3             # passes per model in a block, unless the budget needs fewer
THREADS = 1
RUNTIMES = ("onnxruntime", "tensorrt")
#: the throughput batch shrinks (halving) until batch x one input's elements is at most this (digits: 32 x 192;
#: CIFAR 32 px: 32 x 3072; ImageNet 224 px: 4 x 150528)
THROUGHPUT_ELEMENTS = 1 << 20
#: how far a runtime's outputs may be from PyTorch's: max abs difference over max(1, max |PyTorch output|)
#: on the calibration images, for the base and the pruned export alike; beyond it the runtime is ``failed``
ONNX_ATOL = 1e-3
#: the fewest blocks at which the exact two-sided 95% signed-rank interval exists (2 / 2^6 < 0.05)
MIN_BLOCKS_FOR_95 = 6


# --------------------------------------------------------------------------- statistics


@lru_cache(maxsize=64)
def _signed_rank_cdf(n: int) -> tuple[float, ...]:
    """P(T <= k) for k = 0..n(n+1)/2, T the Wilcoxon signed-rank statistic of ``n`` untied values
    (exact: the count of subsets of {1..n} by their sum, over 2^n)."""
    top = n * (n + 1) // 2
    counts = [1] + [0] * top
    for r in range(1, n + 1):
        for s in range(top, r - 1, -1):
            counts[s] += counts[s - r]
    out, acc, total = [], 0, 2.0 ** n
    for c in counts:
        acc += c
        out.append(acc / total)
    return tuple(out)


def hodges_lehmann(values: Sequence[float], confidence: float = 0.95) -> tuple[float, float, float]:
    """``(estimate, low, high)``: the Hodges-Lehmann estimate of the centre of ``values`` (the median
    of the n(n+1)/2 Walsh averages (x_i + x_j) / 2, i <= j) and its ``confidence`` interval, the Walsh
    averages of ranks C+1 and M-C, where C is the largest k with P(T <= k) <= (1 - confidence) / 2
    under the exact signed-rank distribution (Hollander & Wolfe: the interval is the set of shifts a
    two-sided exact Wilcoxon test does not reject). Too few values for the level: the
    whole range of the Walsh averages."""
    x = [float(v) for v in values]
    n = len(x)
    if n == 0:
        raise ValueError("no values")
    walsh = sorted((x[i] + x[j]) / 2 for i in range(n) for j in range(i, n))
    m = len(walsh)
    cdf = _signed_rank_cdf(n)
    alpha = (1 - confidence) / 2
    k = 0  # the first k with P(T <= k) > alpha: P(T <= k - 1) <= alpha, so k - 1 averages are cut from each end
    while k < len(cdf) and cdf[k] <= alpha:
        k += 1
    c = min(max(0, k - 1), (m - 1) // 2)
    return statistics.median(walsh), walsh[c], walsh[m - 1 - c]


def speedup_interval(base_s: Sequence[float], pruned_s: Sequence[float]) -> tuple[float, tuple[float, float], bool]:
    """The speedup of paired blocks (base time / pruned time of each block): ``(estimate, (low, high),
    uncertain)``, Hodges-Lehmann on the log ratios, exponentiated. Fewer than :data:`MIN_BLOCKS_FOR_95`
    blocks cannot reach 95% (the interval is the whole range): always uncertain."""
    if len(base_s) != len(pruned_s) or not base_s:
        raise ValueError(f"paired timing blocks needed, got {len(base_s)} base and {len(pruned_s)} pruned")
    if min(min(base_s), min(pruned_s)) <= 0:
        raise ValueError("a timing block measured 0 s: the clock is too coarse for this model")
    logs = [math.log(b / p) for b, p in zip(base_s, pruned_s)]
    est, lo, hi = (math.exp(v) for v in hodges_lehmann(logs))
    uncertain = (len(logs) < MIN_BLOCKS_FOR_95 or lo < est * (1 - UNCERTAIN_HALF_WIDTH)
                 or hi > est * (1 + UNCERTAIN_HALF_WIDTH))
    return est, (lo, hi), uncertain


# --------------------------------------------------------------------------- timing


def passes_per_block(fast_s: float, slow_s: float, min_blocks: int = MIN_BLOCKS, max_time_s: float = MAX_TIME_S) -> int:
    """Passes per model in a block, for passes of ``fast_s`` and ``slow_s`` (the two models): enough for the
    faster one to fill :data:`BLOCK_S` (at least :data:`PASSES`), fewer (down to 1) when ``min_blocks``
    blocks of the slower one would overrun ``max_time_s``."""
    reps = max(PASSES, int(BLOCK_S / max(fast_s, 1e-6)))
    if math.isinf(max_time_s):
        return reps
    return max(1, min(reps, int(max_time_s / (min_blocks * max(slow_s, 1e-9)))))


def throughput_batch_for(example: torch.Tensor, requested: int) -> int:
    """``requested`` halved until it times at most :data:`THROUGHPUT_ELEMENTS` input elements (at least 1)."""
    per = max(1, example[:1].numel())
    batch = max(1, requested)
    while batch > 1 and batch * per > THROUGHPUT_ELEMENTS:
        batch //= 2
    return batch


def paired_blocks(run_base: Callable[[], object], run_pruned: Callable[[], object], min_time_s: float = MIN_TIME_S,
                  min_blocks: int = MIN_BLOCKS, sync: Callable[[], None] = lambda: None,
                  warmup: int = 2, clock: Callable[[], float] = time.perf_counter,
                  max_time_s: float = MAX_TIME_S) -> tuple[list[float], list[float], int]:
    """Each block's fastest pass of each model (seconds), and the passes per model in a block.

    Inside a block the two models alternate pass by pass (base first in even blocks, pruned first in odd
    ones), so both see the same moment of the machine; a block's figure is its fastest pass per model
    (the least disturbed one: on a shared machine a pass is only ever slowed down, never sped up).
    Blocks go on until each model has run ``min_time_s`` (on ``clock``) and there are ``min_blocks`` of them,
    and stop once ``min_blocks`` are done and a model has spent ``max_time_s`` (:func:`passes_per_block`
    keeps ``min_blocks`` within about that budget)."""
    if min_blocks < 1:
        raise ValueError(f"min_blocks must be at least 1, got {min_blocks}")
    def timed(fn: Callable[[], object]) -> float:
        sync()
        t0 = clock()
        fn()
        sync()
        return clock() - t0

    for _ in range(warmup):
        run_base()
        run_pruned()
    tb0, tp0 = timed(run_base), timed(run_pruned)
    if min(tb0, tp0) <= 0:
        raise ValueError("a pass measured 0 s: the clock is too coarse for this model")
    reps = passes_per_block(min(tb0, tp0), max(tb0, tp0), min_blocks, max_time_s)
    base, pruned, spent_b, spent_p = [], [], 0.0, 0.0
    while len(base) < min_blocks or (min(spent_b, spent_p) < min_time_s and max(spent_b, spent_p) < max_time_s):
        first, second = (run_base, run_pruned) if len(base) % 2 == 0 else (run_pruned, run_base)
        t1, t2 = [], []
        for _ in range(reps):
            t1.append(timed(first))
            t2.append(timed(second))
        tb, tp = (t1, t2) if first is run_base else (t2, t1)
        base.append(min(tb))
        pruned.append(min(tp))
        spent_b += sum(tb)
        spent_p += sum(tp)
        if len(base) >= min_blocks and min(spent_b, spent_p) <= 0:
            raise ValueError("a timing block measured 0 s: the clock is too coarse for this model")
    return base, pruned, reps


class _Timed:
    """One runtime's figures at both batch sizes."""

    def __init__(self, base1, pruned1, reps1, base_t, pruned_t, reps_t, throughput_batch):
        self.b1, self.p1 = statistics.median(base1), statistics.median(pruned1)  # median of the blocks' fastest
        self.bt, self.pt = statistics.median(base_t), statistics.median(pruned_t)
        self.s1, self.ci1, u1 = speedup_interval(base1, pruned1)
        self.st, self.cit, ut = speedup_interval(base_t, pruned_t)
        self.uncertain = u1 or ut
        self.blocks = min(len(base1), len(base_t))
        self.repeats = len(base1) * reps1
        self.throughput_batch = throughput_batch


def _batches(example: torch.Tensor, throughput_batch: int) -> dict[int, torch.Tensor]:
    return {b: example[:1].repeat(b, *([1] * (example.dim() - 1))) for b in (1, throughput_batch)}


def clock_for(device: str, threads: int) -> tuple[str, Callable[[], float]]:
    """``(name, clock)``: the CPU time of the timing thread on the CPU with one thread (what a pass costs on a
    core of its own, whatever else the machine runs: time the scheduler gives to other processes is not
    counted), else wall time (GPUs, synchronized; several threads)."""
    if not device.startswith("cuda") and threads == 1:
        return "thread_cpu", time.thread_time
    return "wall", time.perf_counter


def _time_pair(make_runs, inputs: dict[int, torch.Tensor], throughput_batch: int, min_time_s: float,
               min_blocks: int, sync=lambda: None, clock=time.perf_counter, max_time_s: float = MAX_TIME_S) -> _Timed:
    out = {}
    for batch, x in inputs.items():
        run_base, run_pruned = make_runs(x)
        out[batch] = paired_blocks(run_base, run_pruned, min_time_s, min_blocks, sync, clock=clock,
                                   max_time_s=max_time_s)
    return _Timed(*out[1], *out[throughput_batch], throughput_batch)


@torch.no_grad()
def measure(base: nn.Module, pruned: nn.Module, example: torch.Tensor, throughput_batch: int = 32,
            device: str = "cpu", min_time_s: float = MIN_TIME_S, min_blocks: int = MIN_BLOCKS,
            threads: Optional[int] = THREADS, runtimes: Sequence[str] = RUNTIMES,
            calibration: Optional[torch.Tensor] = None, max_time_s: float = MAX_TIME_S) -> Latency:
    """``base`` and ``pruned`` timed at batch 1 and ``throughput_batch`` (shrunk for large inputs:
    :func:`throughput_batch_for`) in eager PyTorch on ``device``, then in each of ``runtimes`` (see the
    module docstring). ``calibration``: inputs on which each runtime's outputs are compared with PyTorch's
    (default: ``example``). Both models are left in the mode they came in."""
    if min_blocks < 1:
        raise ValueError(f"min_blocks must be at least 1, got {min_blocks}")
    t_start = time.perf_counter()
    throughput_batch = throughput_batch_for(example, throughput_batch)
    was = base.training, pruned.training, torch.get_num_threads()
    base.eval()
    pruned.eval()
    if threads:
        torch.set_num_threads(threads)
    threads_used = torch.get_num_threads()
    try:
        inputs = {b: x.to(device) for b, x in _batches(example, throughput_batch).items()}
        sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
        clock_name, clock = clock_for(device, threads_used)
        eager = _time_pair(lambda x: (lambda: base(x), lambda: pruned(x)), inputs, throughput_batch, min_time_s,
                           min_blocks, sync, clock, max_time_s)
        deployed = {}
        cal = (example if calibration is None else calibration).to("cpu")
        for name in runtimes:
            deployed[name] = _runtime(name, base, pruned, cal, _batches(example.cpu(), throughput_batch),
                                      throughput_batch, device, min_time_s, min_blocks, threads_used, max_time_s)
    finally:
        base.train(was[0])
        pruned.train(was[1])
        torch.set_num_threads(was[2])
    return Latency(device=device, batch1_base_ms=1e3 * eager.b1, batch1_pruned_ms=1e3 * eager.p1,
                   speedup_batch1=eager.s1, throughput_batch=throughput_batch,
                   throughput_base=throughput_batch / eager.bt, throughput_pruned=throughput_batch / eager.pt,
                   speedup_throughput=eager.st, repeats=eager.repeats, threads=threads_used, blocks=eager.blocks,
                   speedup_batch1_ci=eager.ci1, speedup_throughput_ci=eager.cit, uncertain=eager.uncertain,
                   runtimes=deployed, seconds=time.perf_counter() - t_start, clock=clock_name)


@torch.no_grad()
def projected_seconds(base: nn.Module, pruned: nn.Module, example: torch.Tensor, throughput_batch: int = 32,
                      device: str = "cpu", min_time_s: float = MIN_TIME_S, min_blocks: int = MIN_BLOCKS,
                      runtimes: Sequence[str] = RUNTIMES, max_time_s: float = MAX_TIME_S) -> float:
    """Wall seconds :func:`measure` would take, projected from one pass of each model per batch size (after
    one warm-up) and one ONNX export, by the rules of :func:`paired_blocks`; each deployment runtime that
    would be measured here is counted like eager PyTorch, plus both exports (for ``sweep --dry-run``)."""
    was = base.training, pruned.training, torch.get_num_threads()
    base.eval()
    pruned.eval()
    torch.set_num_threads(THREADS)
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)

    def timed(fn, x):
        sync()
        t0 = time.perf_counter()
        fn(x)
        sync()
        return time.perf_counter() - t0

    try:
        eager = 0.0
        for x in _batches(example, throughput_batch_for(example, throughput_batch)).values():
            x = x.to(device)
            base(x), pruned(x)
            tb, tp = timed(base, x), timed(pruned, x)
            reps = passes_per_block(min(tb, tp), max(tb, tp), min_blocks, max_time_s)
            fast = max(min(tb, tp), 1e-9) * reps
            blocks = max(min_blocks, min(math.ceil(min_time_s / fast), math.ceil(max_time_s / fast)))
            eager += (blocks * reps + 3) * (tb + tp)
        if importlib.util.find_spec("onnxruntime") is None:
            return eager
        deployed = sum(1 for r in runtimes if r == "onnxruntime" or (r == "tensorrt" and device.startswith("cuda")))
        if not deployed:
            return eager
        t0 = time.perf_counter()
        try:
            export_onnx(pruned, example[:1].cpu())
        except Exception:  # noqa: BLE001 - a model that does not export costs its attempt
            pass
        return eager * (1 + deployed) + 2 * (time.perf_counter() - t0)
    finally:
        base.train(was[0])
        pruned.train(was[1])
        torch.set_num_threads(was[2])


# --------------------------------------------------------------------------- deployment runtimes


def _flat_outputs(out) -> list[torch.Tensor]:
    from torch.utils._pytree import tree_leaves
    return [t for t in tree_leaves(out) if isinstance(t, torch.Tensor)]


def export_onnx(model: nn.Module, example: torch.Tensor) -> bytes:
    """``model`` (on the CPU, in eval mode) as an ONNX model with a dynamic batch dimension."""
    import copy
    m = copy.deepcopy(model).cpu().eval()
    buf = io.BytesIO()
    with warnings.catch_warnings(), _quiet_exporter():
        warnings.simplefilter("ignore")
        torch.onnx.export(m, (example.cpu(),), buf, dynamo=False, input_names=["input"], opset_version=17,
                          dynamic_axes={"input": {0: "batch"}})
    return buf.getvalue()


@contextlib.contextmanager
def _quiet_exporter():
    """The TorchScript exporter prints its whole graph (from C++, to file descriptor 1) when an op has no
    symbolic, and warnings to 2; the record keeps the one-line reason, so both descriptors (and
    ``sys.stdout``/``sys.stderr``) go to /dev/null meanwhile."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(fd) for fd in (1, 2)]
    try:
        with open(os.devnull, "w") as null, contextlib.redirect_stdout(null), contextlib.redirect_stderr(null):
            for fd in (1, 2):
                os.dup2(null.fileno(), fd)
            try:
                yield
            finally:
                for fd, old in zip((1, 2), saved):
                    os.dup2(old, fd)
    finally:
        for old in saved:
            os.close(old)


def output_diff(got: Sequence, ref: Sequence[torch.Tensor]) -> tuple[float, float]:
    """``(max abs difference, scale)`` of a runtime's outputs ``got`` against PyTorch's ``ref``: the scale is
    max(1, max |ref|), the tolerance :data:`ONNX_ATOL` is relative to it."""
    if len(got) != len(ref):
        raise RuntimeError(f"{len(got)} ONNX outputs for {len(ref)} PyTorch outputs")
    diff = max((float((torch.as_tensor(g) - r.float()).abs().max()) for g, r in zip(got, ref)), default=0.0)
    scale = max([1.0] + [float(r.abs().max()) for r in ref if r.numel()])
    return diff, scale


def _one_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0] if text else ''}"[:300]


def _ort_session(onnx_bytes: bytes, providers: list[str], threads: int):
    import onnxruntime as ort
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    return ort.InferenceSession(onnx_bytes, sess_options=opts, providers=providers)


def _runtime(name: str, base: nn.Module, pruned: nn.Module, calibration: torch.Tensor,
             inputs: dict[int, torch.Tensor], throughput_batch: int, device: str, min_time_s: float,
             min_blocks: int, threads: int, max_time_s: float = MAX_TIME_S) -> RuntimeLatency:
    """One deployment runtime's record: measured, unmeasured (not available here) or failed (one line)."""
    try:
        import onnxruntime as ort
    except ImportError:
        return RuntimeLatency(runtime=name, status="unmeasured", reason="onnxruntime is not installed")
    if name == "onnxruntime":
        providers, where = ["CPUExecutionProvider"], "cpu"
    elif name == "tensorrt":
        if not device.startswith("cuda"):
            return RuntimeLatency(runtime=name, status="unmeasured", reason="TensorRT needs a CUDA device")
        if "TensorrtExecutionProvider" not in ort.get_available_providers():
            return RuntimeLatency(runtime=name, status="unmeasured",
                                  reason="no TensorRT provider in this ONNX Runtime (onnxruntime-gpu + tensorrt)")
        providers, where = ["TensorrtExecutionProvider", "CUDAExecutionProvider"], "cuda"
    else:
        return RuntimeLatency(runtime=name, status="unmeasured", reason=f"unknown runtime {name!r}")
    clock_name, clock = clock_for(where, threads)
    head = dict(runtime=name, version=ort.__version__, providers=providers, device=where, threads=threads,
                clock=clock_name)
    try:
        sessions = [_ort_session(export_onnx(m, inputs[1]), providers, threads) for m in (base, pruned)]
        cal = calibration.cpu()
        (base_diff, base_scale), (diff, scale) = (
            output_diff(s.run(None, {"input": cal.numpy()}), _flat_outputs(copy_eval(m)(cal)))
            for s, m in zip(sessions, (base, pruned)))
    except Exception as e:  # noqa: BLE001 - an unexportable model is one line in the record, not a failed run
        return RuntimeLatency(**head, status="failed", reason=_one_line(e))
    head.update(max_abs_diff=diff, base_max_abs_diff=base_diff)
    wrong = [f"{which} max abs diff {d:.3g} > {ONNX_ATOL:g} x output scale {sc:.3g}"
             for which, d, sc in (("base", base_diff, base_scale), ("pruned", diff, scale)) if not d <= ONNX_ATOL * sc]
    if wrong:
        return RuntimeLatency(**head, status="failed", reason="outputs differ from PyTorch's on the calibration "
                                                              "images: " + "; ".join(wrong))
    try:
        arrays = {b: x.numpy() for b, x in inputs.items()}

        def runs(x):
            feed = {"input": arrays[x]}
            return (lambda: sessions[0].run(None, feed)), (lambda: sessions[1].run(None, feed))

        t = _time_pair(runs, {b: b for b in arrays}, throughput_batch, min_time_s, min_blocks, clock=clock,
                       max_time_s=max_time_s)
    except Exception as e:  # noqa: BLE001 - an unexportable model is one line in the record, not a failed run
        return RuntimeLatency(**head, status="failed", reason=_one_line(e))
    return RuntimeLatency(**head, status="measured", batch1_base_ms=1e3 * t.b1,
                          batch1_pruned_ms=1e3 * t.p1, speedup_batch1=t.s1, speedup_batch1_ci=t.ci1,
                          throughput_batch=throughput_batch, speedup_throughput=t.st, speedup_throughput_ci=t.cit,
                          blocks=t.blocks, uncertain=t.uncertain)


def copy_eval(model: nn.Module) -> Callable[[torch.Tensor], object]:
    """``model``'s forward on the CPU without changing the model's own device (a copy when it is elsewhere)."""
    import copy
    dev = next((p.device for p in model.parameters()), torch.device("cpu"))
    m = model if dev.type == "cpu" else copy.deepcopy(model).cpu()
    return lambda x: m(x.cpu())
