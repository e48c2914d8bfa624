"""Latency measurement (harness/protocol/latency.py) and channel rounding (``pruning.round_to``).

- The speedup interval: Hodges-Lehmann against a hand-worked example, and its ends against scipy's exact
  Wilcoxon signed-rank test (the interval is the set of shifts the test does not reject at 5%).
- ONNX export parity: every zoo model that exports (tiny widths) gives ONNX Runtime outputs within
  ``ONNX_ATOL`` of PyTorch's; the ones that do not export are listed with their reason, and a model
  that does not export is one line in the latency record, not a failed measurement.
- round_to: ResNet-18, MobileNetV2 (depthwise) and ViT (heads) pruned to 2x keep multiples of it in
  every pruned group, with the floor and the target met; the track hash is unchanged at the default.
- An older record (spec 1.3, no per-runtime latency) still validates and renders.
- The review of 1.4: a wrong export of either model fails its runtime (and no view uses it), an export
  failure prints nothing, the cost budget (passes per block, blocks, throughput batch) on a fake clock,
  fewer than 6 blocks uncertain, zero/empty timings refused, cells never pool older records and show
  their median run with its own interval, round_to strict in tracks and one-line on the command line,
  the run page's interval and CPU-time labels.

No timing is asserted here: timings are in benchmarks/latency_stability.py and benchmarks/round_to.py.
"""

from __future__ import annotations

import itertools
import json
import math
import statistics

import pytest
import torch
from torch import nn

from harness.models import classifier_of, prune_config_of
from harness.protocol.grouping import PruneConfig, count_macs_params, describe_groups
from harness.protocol.latency import (MIN_BLOCKS_FOR_95, ONNX_ATOL, THROUGHPUT_ELEMENTS, _flat_outputs, _ort_session,
                                      export_onnx, hodges_lehmann, measure, paired_blocks, passes_per_block,
                                      projected_seconds, speedup_interval, throughput_batch_for)
from harness.protocol.pruning import make_planner, search_speedup
from specs.result import Latency, ResultRecord

from conftest import REPO
from test_models_zoo import ENTRIES, _threads, build, case_for

pytestmark = pytest.mark.usefixtures(_threads.__name__)  # one thread: tiny models (test_models_zoo's fixture)


# --------------------------------------------------------------------------- the interval


def test_hodges_lehmann_hand_worked():
    # x sorted: 0.0 0.1 0.2 0.3 0.4 0.5 0.6 0.9 (n = 8, M = 36 Walsh averages (x_i + x_j) / 2, i <= j).
    # Exact signed-rank distribution for n = 8 (2^8 = 256 sign patterns): subsets of {1..8} with sum
    # 0: {} | 1: {1} | 2: {2} | 3: {3}, {1,2} | 4: {4}, {1,3}  ->  P(T <= 3) = 5/256 = 0.0195 <= 0.025 and
    # P(T <= 4) = 7/256 = 0.0273 > 0.025: C = 3, the interval is the 4th smallest and 4th largest average.
    # Smallest: 0.0 (0,0), 0.05 (0,.1), 0.1 (0,.2), 0.1 (.1,.1) -> 0.1.
    # Largest: 0.9 (.9,.9), 0.75 (.6,.9), 0.7 (.5,.9), 0.65 (.4,.9) -> 0.65.
    x = [0.1, 0.3, 0.2, 0.5, 0.4, 0.9, 0.0, 0.6]
    est, lo, hi = hodges_lehmann(x)
    assert (lo, hi) == pytest.approx((0.1, 0.65))
    walsh = [(a + b) / 2 for a, b in itertools.combinations_with_replacement(x, 2)]
    assert len(walsh) == 36 and est == pytest.approx(statistics.median(walsh))
    # too few values for 95% (n = 5: P(T = 0) = 1/32 > 0.025): the whole range of the Walsh averages
    assert hodges_lehmann([1.0, 2.0, 4.0, 8.0, 16.0])[1:] == (1.0, 16.0)


@pytest.mark.parametrize("n", [8, 12, 20])
def test_interval_ends_are_where_the_exact_wilcoxon_test_starts_rejecting(n):
    scipy_stats = pytest.importorskip("scipy.stats")
    g = torch.Generator().manual_seed(n)
    x = (torch.randn(n, generator=g, dtype=torch.float64) * 0.1 + 0.7).tolist()
    _, lo, hi = hodges_lehmann(x)
    eps = 1e-9

    def p(shift: float) -> float:
        return scipy_stats.wilcoxon([v - shift for v in x], method="exact").pvalue

    assert p(lo + eps) >= 0.05 and p(hi - eps) >= 0.05  # inside: not rejected
    assert p(lo - eps) < 0.05 and p(hi + eps) < 0.05    # outside: rejected


def test_speedup_interval_and_the_uncertain_flag():
    base = [2.0, 2.1, 1.9, 2.0, 2.05, 1.95, 2.0, 2.02, 1.98, 2.0, 2.01, 1.99]
    tight = speedup_interval(base, [b / 2 for b in base])  # every block: exactly 2x
    assert tight[0] == pytest.approx(2.0) and tight[1] == pytest.approx((2.0, 2.0)) and not tight[2]
    # paired blocks whose ratios spread from 1.4x to 2.6x: the interval is wider than +-10%
    ratios = [1.4, 2.6, 1.6, 2.4, 1.8, 2.2, 1.5, 2.5, 1.7, 2.3, 2.0, 1.9]
    est, (lo, hi), uncertain = speedup_interval(base, [b / r for b, r in zip(base, ratios)])
    assert lo < est < hi and uncertain
    logs = [math.log(r) for r in ratios]
    assert est == pytest.approx(math.exp(hodges_lehmann(logs)[0]))


# --------------------------------------------------------------------------- ONNX export parity

#: zoo entries not exported in the tests, and why
NOT_EXPORTED = {
    "vgg19/imagenet": "does not export at the tests' 32 px: ONNX has no adaptive_avg_pool2d to 7x7 from 1x1 "
                      "(torchvision's VGG head; at 224 px it exports)",
    "yolov8": "the same modules as yolov8n/yolov8s at a larger scale (26 M parameters: export cost)",
    "yolov8m": "the same modules as yolov8n/yolov8s at a larger scale (26 M parameters: export cost)",
    "yolov8l": "the same modules as yolov8n/yolov8s at a larger scale (44 M parameters: export cost)",
}
EXPORTED = [e for e in ENTRIES if e not in NOT_EXPORTED]


def _ort_outputs(model: nn.Module, x: torch.Tensor) -> list:
    session = _ort_session(export_onnx(model, x[:1]), ["CPUExecutionProvider"], 1)
    return session.run(None, {"input": x.numpy()})


@pytest.mark.parametrize("entry", EXPORTED)
def test_onnx_runtime_matches_pytorch(entry):
    case = case_for(entry)
    model = build(case)
    x = torch.rand(3, 3, case.size, case.size, generator=torch.Generator().manual_seed(0))  # batch 3: dynamic axis
    with torch.no_grad():
        ref = _flat_outputs(model(x))
    got = _ort_outputs(model, x)
    assert len(got) == len(ref)
    for g, r in zip(got, ref):
        assert g.shape == tuple(r.shape)
        assert float((torch.from_numpy(g) - r).abs().max()) <= ONNX_ATOL * max(1.0, float(r.abs().max()))


def test_the_zoo_is_covered():
    assert set(NOT_EXPORTED) <= set(ENTRIES) and set(EXPORTED) | set(NOT_EXPORTED) == set(ENTRIES)


class Unexportable(nn.Module):
    """A 1x1 map pooled to 3x3: runs in PyTorch, has no ONNX export (like VGG's head at 32 px)."""

    def __init__(self, width: int = 4):
        super().__init__()
        self.conv = nn.Conv2d(3, width, 3, stride=8)
        self.pool = nn.AdaptiveAvgPool2d(3)
        self.fc = nn.Linear(9 * width, 2)

    def forward(self, x):
        return self.fc(self.pool(self.conv(x)).flatten(1))


def test_a_model_that_does_not_export_is_one_line_in_the_record():
    base, pruned = Unexportable(8), Unexportable(4)
    x = torch.rand(1, 3, 8, 8)
    lat = measure(base, pruned, x, throughput_batch=2, min_time_s=0.0, min_blocks=2)
    assert lat.speedup_batch1 > 0 and lat.threads == 1 and lat.blocks >= 2 and lat.speedup_batch1_ci is not None
    ort = lat.runtimes["onnxruntime"]
    assert ort.status == "failed" and "\n" not in ort.reason and "adaptive_avg_pool2d" in ort.reason
    assert lat.runtimes["tensorrt"].status == "unmeasured" and "CUDA" in lat.runtimes["tensorrt"].reason
    assert base.training and pruned.training  # left in the mode they came in
    # and a model that exports is measured, its outputs compared with PyTorch's
    ok = measure(_tiny_cnn(8).eval(), _tiny_cnn(4).eval(), torch.rand(1, 3, 8, 8), throughput_batch=2,
                 min_time_s=0.0, min_blocks=2, runtimes=("onnxruntime",))
    r = ok.runtimes["onnxruntime"]
    assert r.status == "measured" and r.max_abs_diff <= ONNX_ATOL and r.providers == ["CPUExecutionProvider"]
    assert r.speedup_batch1_ci[0] <= r.speedup_batch1 <= r.speedup_batch1_ci[1]


def _tiny_cnn(width: int) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, 2))


# --------------------------------------------------------------------------- round_to


def _mobilenet_v2():
    import torchvision
    torch.manual_seed(0)
    return torchvision.models.mobilenet_v2(num_classes=10, width_mult=0.5).eval()


def _vit():
    import timm
    torch.manual_seed(0)
    return timm.create_model("vit_small_patch16_224", pretrained=False, num_classes=10, img_size=32, depth=2).eval()


def _resnet18():
    return build(case_for("resnet18"))


def _config(model: nn.Module) -> PruneConfig:
    return prune_config_of(model).merged(PruneConfig(ignored_layers=[classifier_of(model)]))


@pytest.mark.parametrize("round_to", [8])
@pytest.mark.parametrize("make", [_resnet18, _mobilenet_v2, _vit], ids=["resnet18", "mobilenet_v2", "vit"])
def test_round_to_keeps_multiples_the_floor_and_the_target(make, round_to):
    model, example = make(), torch.rand(1, 3, 32, 32)
    groups = describe_groups(model, example, _config(model))
    g = torch.Generator().manual_seed(3)
    scores = {gr.id: torch.rand(gr.n_channels, generator=g, dtype=torch.float64) for gr in groups}
    base_macs, _ = count_macs_params(model, example)
    planner = make_planner(groups, scores, {gr.id: gr.n_channels for gr in groups}, "protected_global", 0.1,
                           seed=0, round_to=round_to)
    found = search_speedup(model, example, _config, planner, base_macs, base_macs, 2.0)
    assert base_macs / found.macs >= 2.0 * (1 - 1e-9)
    after = describe_groups(found.model, example, _config(found.model))
    after = {gr.id: gr for gr in after}
    pruned_groups = 0
    for gr in groups:
        units_before = gr.n_channels // gr.ch_groups
        kept = after[gr.id].n_channels // gr.ch_groups if gr.id in after else units_before
        assert after[gr.id].ch_groups == gr.ch_groups
        floor = max(1, math.ceil(0.1 * units_before))
        assert kept >= floor, f"{gr.id}: {kept} < floor {floor}"
        if kept < units_before:
            pruned_groups += 1
            assert kept % round_to == 0, f"{gr.id}: kept {kept} units, not a multiple of {round_to}"
    assert pruned_groups > 0
    if make is _vit:  # heads stay, every head dim a multiple, so heads x head_dim too
        for b in found.model.blocks:
            assert b.attn.num_heads == 6 and b.attn.head_dim % round_to == 0
            assert (b.attn.num_heads * b.attn.head_dim) % round_to == 0
    if make is _mobilenet_v2:  # depthwise convs follow their expansion convs: multiples too
        dw = [m for m in found.model.modules() if isinstance(m, nn.Conv2d) and m.groups > 1]
        assert dw and all(m.groups == m.in_channels == m.out_channels for m in dw)
        changed = [m for m, o in zip(dw, [m for m in make().modules() if isinstance(m, nn.Conv2d) and m.groups > 1])
                   if m.out_channels != o.out_channels]
        assert changed and all(m.out_channels % round_to == 0 for m in changed)
    # the same search without rounding prunes groups to counts that are not multiples
    plain = make_planner(groups, scores, {gr.id: gr.n_channels for gr in groups}, "protected_global", 0.1, seed=0)
    plan = plain.units(found.t)
    assert any((gr.n_channels // gr.ch_groups - len(plan[gr.id])) % round_to for gr in groups if plan[gr.id])


def test_round_to_default_keeps_track_hashes_and_plans():
    from harness.plan import Plan
    from harness.tracks import registry
    track = registry().get("digits-resnet18")
    assert track.pruning.round_to == 1
    assert track.hash().startswith("ed07862e4805")  # the committed digits records' track
    rounded = track.model_copy(update={"pruning": track.pruning.model_copy(update={"round_to": 8})})
    assert rounded.hash() != track.hash()
    resolved = Plan.build(track="digits-resnet18", methods=["magnitude_l2"], round_to=8, speedups=[2],
                          seeds=[0]).resolve()
    assert resolved.specs[0].track.pruning.round_to == 8
    assert Plan.build(track="digits-resnet18", methods=["magnitude_l2"]).resolve().specs[0].track.hash() == \
        track.hash()


def test_round_to_is_refused_when_not_positive():
    from harness.plan import Plan, PlanError
    with pytest.raises(PlanError, match="round_to"):
        Plan.build(track="digits-resnet18", round_to=0)


# --------------------------------------------------------------------------- older records


#: what a record's latency held before spec 1.4 (wall-clock medians, no interval, no runtimes)
PRE_14_LATENCY = ("device", "batch1_base_ms", "batch1_pruned_ms", "speedup_batch1", "throughput_batch",
                  "throughput_base", "throughput_pruned", "speedup_throughput", "repeats")


def _pre_14(data: dict) -> dict:
    """A committed (spec 1.4) record as a record written before 1.4 was: its latency fields of then only."""
    return {**{k: v for k, v in data.items() if k != "round_to"},
            "provenance": {**data["provenance"], "spec_version": "1.3"},
            "latency": {k: data["latency"][k] for k in PRE_14_LATENCY}}


def test_an_older_record_without_runtime_latency_still_validates_and_renders():
    from harness.views import leaderboard as lb
    from harness.views.latency import latency_cell
    path = next(p for p in sorted((REPO / "benchmarks" / "results").rglob("result.json"))
                if json.loads(p.read_text()).get("latency"))
    data = _pre_14(json.loads(path.read_text()))
    assert data["provenance"]["spec_version"] < "1.4" and "runtimes" not in data["latency"]
    record = ResultRecord.model_validate(data)
    assert record.round_to == 1 and record.latency.runtimes == {} and record.latency.speedup_batch1_ci is None
    [row] = lb.rows([record])
    text = lb.markdown([row])
    assert f"{record.latency.speedup_batch1:.2f}x" in text
    assert latency_cell([record], "onnxruntime") is None
    new = Latency.model_validate({**data["latency"], "speedup_batch1_ci": [1.0, 3.0], "uncertain": True})
    assert new.deployed() is None


def _committed(n: int = 6) -> list[ResultRecord]:
    """``n`` committed 2x records, as written before spec 1.4 (:func:`_pre_14`)."""
    paths = sorted((REPO / "benchmarks" / "results" / "digits-resnet18").rglob("result.json"))
    data = [json.loads(p.read_text()) for p in paths]
    records = [ResultRecord.model_validate(_pre_14(d)) for d in data
               if d["status"] == "ok" and d.get("latency") and d["speedup"]["target"] == 2.0]
    return records[:n]


def test_views_show_each_runtime_with_its_interval_and_the_pareto_plot_uses_the_deployment_runtime():
    from harness.views import leaderboard as lb
    from harness.web.boards import board
    from specs.result import RuntimeLatency
    old = _committed()
    new = []
    for i, r in enumerate(old):
        s = r.latency.speedup_batch1
        ort = RuntimeLatency(runtime="onnxruntime", status="measured", version="1", providers=["CPUExecutionProvider"],
                             max_abs_diff=1e-6, batch1_base_ms=1.0, batch1_pruned_ms=1 / (s / 2),
                             speedup_batch1=s / 2, speedup_batch1_ci=(s / 2 * 0.95, s / 2 * 1.05 + 0.3 * (i == 0)),
                             uncertain=i == 0)  # as measure() flags an interval wider than +-10%
        trt = RuntimeLatency(runtime="tensorrt", status="unmeasured", reason="TensorRT needs a CUDA device")
        lat = r.latency.model_copy(update={"speedup_batch1_ci": (s * 0.9, s * 1.1), "runtimes":
                                           {"onnxruntime": ort, "tensorrt": trt}})
        new.append(ResultRecord.model_validate(r.model_copy(update={"latency": lat}).model_dump()))
    rows = lb.rows(new)
    text = lb.markdown(rows)
    assert "ONNX RT" in text
    row = next(x for x in rows if any(rec.run_key == new[0].run_key for rec in x.records))
    cell = row.latency["onnxruntime"]
    ok = sorted((rec for rec in row.records if rec.status == "ok"), key=lambda rec: rec.latency.speedup_batch1)
    median_run = ok[(len(ok) - 1) // 2].latency.runtimes["onnxruntime"]  # the median run, with its own interval
    assert (cell.speedup, (cell.low, cell.high)) == (median_run.speedup_batch1, median_run.speedup_batch1_ci)
    assert cell.uncertain and cell.text().endswith("] ?") and cell.text() in text  # shown as uncertain
    csv = lb.to_csv(rows)
    assert "onnxruntime_speedup_b1" in csv.splitlines()[0]
    lboard = board(new, new[0].track.id, view="2x")
    [section] = lboard.sections
    assert section.latency_runtime == "onnxruntime"
    by_name = {p.name: p for p in section.points}
    assert by_name[row.name].latency_speedup == pytest.approx(cell.speedup)
    entry = next(e for e in section.entries if e.name == row.name)
    assert set(entry.latency) == {"eager", "onnxruntime"} and entry.latency["onnxruntime"].uncertain
    # records without the deployment runtime: the plot stays in eager PyTorch
    assert board(old, old[0].track.id, view="2x").sections[0].latency_runtime == "eager"


# --------------------------------------------------------------------------- review of spec 1.4's latency


class Branchy(nn.Module):
    """A Python-level branch on the input: tracing at the example freezes it, so the ONNX export computes the
    wrong thing on the calibration images (which take the other branch)."""

    def __init__(self, width: int = 4):
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, width, 3)
        self.fc = nn.Linear(width, 2)

    def forward(self, x):
        y = self.conv(x).mean((2, 3))
        if float(x.mean()) > 0.5:
            y = y * 100.0
        return self.fc(y)


@pytest.mark.parametrize("wrong", ["base", "pruned"])
def test_a_wrong_export_of_either_model_fails_the_runtime_and_no_view_uses_it(wrong):
    from harness.views.latency import latency_cell, runtimes_of
    models = {"base": _tiny_cnn(8).eval(), "pruned": _tiny_cnn(4).eval()}
    models[wrong] = Branchy(8 if wrong == "base" else 4)
    example, cal = torch.full((1, 3, 8, 8), 0.9), torch.rand(4, 3, 8, 8, generator=torch.Generator().manual_seed(0)) * 0.5
    lat = measure(models["base"], models["pruned"], example, throughput_batch=2, min_time_s=0.0, min_blocks=2,
                  runtimes=("onnxruntime",), calibration=cal)
    ort = lat.runtimes["onnxruntime"]
    # the difference PyTorch itself gives between the frozen branch and the taken one, on the calibration images
    with torch.no_grad():
        m = models[wrong]
        y = m.conv(cal).mean((2, 3))
        expected = float((m.fc(y * 100.0) - m.fc(y)).abs().max())
    got = ort.base_max_abs_diff if wrong == "base" else ort.max_abs_diff
    assert ort.status == "failed" and ort.speedup_batch1 is None and got == pytest.approx(expected, rel=1e-4)
    assert "\n" not in ort.reason and f"{wrong} max abs diff {got:.3g}" in ort.reason
    assert ("pruned" if wrong == "base" else "base") + " max abs diff" not in ort.reason  # the other one exports right
    record = ResultRecord.model_validate({**_committed(1)[0].model_dump(), "latency": lat.model_dump()})
    assert runtimes_of([record]) == ["eager"] and latency_cell([record], "onnxruntime") is None


def test_an_export_failure_prints_nothing(capfd):
    lat = measure(Unexportable(8), Unexportable(4), torch.rand(1, 3, 8, 8), throughput_batch=2, min_time_s=0.0,
                  min_blocks=2, runtimes=("onnxruntime",))
    assert lat.runtimes["onnxruntime"].status == "failed"
    out, err = capfd.readouterr()
    assert "graph" not in out + err and out + err == ""


def test_the_budget_caps_passes_blocks_and_the_throughput_batch():
    # passes per block: fill 10 ms with the faster model (at least 3), unless 12 blocks of the slower overrun 2 s
    assert passes_per_block(1e-4, 1e-4) == 100 and passes_per_block(0.02, 0.02) == 3
    assert passes_per_block(0.02, 0.1) == 1 and passes_per_block(0.02, 0.06) == 2  # int(2 / (12 * 0.06)) = 2
    # the throughput batch halves until it holds 2^20 input elements
    assert throughput_batch_for(torch.zeros(1, 1, 8, 8), 32) == 32
    assert throughput_batch_for(torch.zeros(1, 3, 32, 32), 32) == 32
    assert throughput_batch_for(torch.zeros(1, 3, 224, 224), 32) == 4  # 4 x 150528 <= 2^20 < 8 x 150528
    assert 4 * 3 * 224 * 224 <= THROUGHPUT_ELEMENTS < 8 * 3 * 224 * 224
    assert throughput_batch_for(torch.zeros(1, 3, 1024, 1024), 32) == 1
    # blocks stop at min_blocks once a model has spent the budget, however long min_time_s asks for
    ticks = itertools.count()

    def clock():  # every pass measures 1 "second" on it (two readings: 2k and 2k + 1)
        return float(next(ticks))

    base, pruned, reps = paired_blocks(lambda: None, lambda: None, min_time_s=100.0, min_blocks=3, warmup=0,
                                       clock=clock, max_time_s=2.0)
    assert (len(base), reps) == (3, 1)
    ticks = itertools.count()
    base, _, reps = paired_blocks(lambda: None, lambda: None, min_time_s=20.0, min_blocks=3, warmup=0, clock=clock,
                                  max_time_s=math.inf)
    assert (len(base), reps) == (7, 3)  # no budget: 3 passes a block, min_time_s rules (7 x 3 >= 20)
    with pytest.raises(ValueError, match="0 s"):  # a clock that never moves: refused, not an endless loop
        paired_blocks(lambda: None, lambda: None, min_time_s=1.0, min_blocks=3, warmup=0, clock=lambda: 0.0)


def test_the_dry_run_projects_the_stage_instead_of_running_it():
    base, pruned = _tiny_cnn(8).train(), _tiny_cnn(4).train()
    seconds = projected_seconds(base, pruned, torch.rand(1, 3, 8, 8), throughput_batch=2, runtimes=())
    assert 0 < seconds < 60 and base.training and pruned.training


def test_few_blocks_are_uncertain_and_degenerate_timings_are_refused_in_one_line():
    # five blocks, identical ratios: a point, but 95% is out of reach (the exact test's smallest p is 2/32)
    est, (lo, hi), uncertain = speedup_interval([1.0] * 5, [0.5] * 5)
    assert est == pytest.approx(2.0) and uncertain and MIN_BLOCKS_FOR_95 == 6
    assert not speedup_interval([1.0] * 6, [0.5] * 6)[2]
    assert speedup_interval([1.0], [0.5])[2]
    for base, pruned, match in (([1.0] * 6, [0.0] * 6, "0 s"), ([0.0] * 6, [1.0] * 6, "0 s"), ([], [], "blocks")):
        with pytest.raises(ValueError, match=match):
            speedup_interval(base, pruned)
    with pytest.raises(ValueError, match="min_blocks"):
        measure(_tiny_cnn(4), _tiny_cnn(4), torch.rand(1, 3, 8, 8), min_time_s=0.0, min_blocks=0, runtimes=())


def _with_latency(r: ResultRecord, s: float, ci=None, uncertain=False, ms=1.0) -> ResultRecord:
    lat = r.latency.model_copy(update={"speedup_batch1": s, "speedup_batch1_ci": ci, "uncertain": uncertain,
                                       "batch1_pruned_ms": ms, "clock": "thread_cpu" if ci else None})
    return r.model_copy(update={"latency": lat})


def test_a_cell_never_pools_older_records_and_shows_its_median_run_with_that_runs_interval():
    from harness.views.latency import latency_cell
    [r] = _committed(1)
    old = _with_latency(r, 0.62, ms=13.0)
    new = [_with_latency(r, s, (s - 0.05, s + 0.08), ms=m) for s, m in ((1.9, 3.0), (1.5, 5.0), (1.72, 4.0))]
    cell = latency_cell([old] + new)
    assert (cell.speedup, cell.low, cell.high, cell.n, cell.ms, cell.older) == (1.72, 1.67, 1.80, 3, 4.0, False)
    assert cell.text() == "1.72x [1.67-1.80]" and cell.clock == "thread_cpu"
    # two 1.4 runs: the lower middle one; one uncertain run marks the cell
    cell = latency_cell([old, new[0], _with_latency(r, 1.5, (1.2, 1.9), uncertain=True)])
    assert (cell.speedup, cell.low, cell.high) == (1.5, 1.2, 1.9) and cell.uncertain
    # older records alone: their median, without an interval, always uncertain
    cell = latency_cell([old, _with_latency(r, 0.8), _with_latency(r, 2.0)])
    assert (cell.speedup, cell.low, cell.older, cell.uncertain, cell.text()) == (0.8, None, True, True, "0.80x ?")


def test_the_board_takes_latency_ms_from_the_cells_median_run_and_the_section_says_round_to():
    from harness.views import leaderboard as lb
    from harness.web.boards import board
    records = _committed(6)
    target = lb.section_of(records[0])
    in_cell = [x for x in records if lb.section_of(x) == target and x.method.id == records[0].method.id
               and x.regularizer == records[0].regularizer]
    timed = [_with_latency(x, 1.0 + i / 10, (0.9 + i / 10, 1.1 + i / 10), ms=10.0 + i) for i, x in enumerate(in_cell)]
    section = board(timed, timed[0].track.id, view="2x").sections[0]
    entry = next(e for e in section.entries if e.method == records[0].method.id)
    middle = sorted(timed, key=lambda x: x.latency.speedup_batch1)[(len(timed) - 1) // 2].latency
    assert (entry.latency_speedup, entry.latency_ms) == (middle.speedup_batch1, middle.batch1_pruned_ms)
    assert "round_to" not in section.label
    rounded = [x.model_copy(update={"round_to": 8}) for x in timed]
    assert board(rounded, timed[0].track.id, view="2x").sections[0].label.endswith(" · round_to 8")


@pytest.mark.parametrize("bad", [True, "8", 8.0])
def test_a_track_round_to_must_be_an_integer(bad):
    from pydantic import ValidationError
    from harness.tracks import registry
    from specs.track import TrackConfig
    data = registry().get("digits-resnet18").model_dump()
    data["pruning"]["round_to"] = bad
    with pytest.raises(ValidationError, match="valid integer"):
        TrackConfig.model_validate(data)
    data["pruning"]["round_to"] = 8
    assert TrackConfig.model_validate(data).pruning.round_to == 8


@pytest.mark.parametrize("value", ["0", "-1", "abc", "1025", "2.5"])
def test_a_bad_round_to_on_the_command_line_is_one_line(value):
    from typer.testing import CliRunner
    from harness.cli import app
    res = CliRunner().invoke(app, ["evaluate", "--model", "resnet18", "--dataset", "digits", "--method",
                                   "magnitude_l2", f"--round-to={value}"])
    lines = res.output.strip().splitlines()
    assert res.exit_code == 2 and len(lines) == 1 and lines[0].startswith("error:") and "round_to" in lines[0]
    help_text = CliRunner().invoke(app, ["evaluate", "--help"], terminal_width=200).output
    assert "1 to 1024" in " ".join(help_text.split())


def test_the_run_page_shows_the_eager_interval_and_says_cpu_time(tmp_path):
    from fastapi.testclient import TestClient
    from harness.store import RESULT_FILE, write_record
    from harness.web.app import create_app
    from harness.web.config import ServerConfig
    [old] = _committed(1)
    new = _with_latency(old, 1.72, (1.6, 1.9), uncertain=True, ms=4.0).model_copy(update={"run_key": "1" * 64})
    for r in (old, new):
        write_record(tmp_path / "store" / r.run_key / RESULT_FILE, r)
    with TestClient(create_app(ServerConfig(store=tmp_path / "store"), start_queue=False),
                    base_url="http://127.0.0.1:8000") as client:
        page_new, page_old = (client.get(f"/runs/{r.run_key}").text for r in (new, old))
    assert "1.72x [1.60–1.90] ?" in page_new and "ms of CPU time" in page_new
    assert f"{old.latency.speedup_batch1:.2f}x ?" in page_old and "before spec 1.4: no interval" in page_old
    assert "ms wall" in page_old
