"""The model zoo: every architecture in :data:`ZOO` x every discovered method, from ONE list.

Each architecture is named by a model reference (a registered name, ``torchvision:``, ``timm:``, a
``<module>:<factory>`` on PYTHONPATH) and built tiny (CPU, small inputs). For each one the harness
describes its groups and collects every observation kind once; then every method in methods/ runs:

- importance methods: the manifest's ``requires`` are checked (a refusal must come from a declared
  need, and is checked against the model itself), scores come through the in-process runner
  (validated like any reply), the harness prunes to 2x under ``protected_global``, the pruned model
  runs forward, and every group keeps at least 10% of its channels;
- regularizers: one sparse-training step with their gradient terms (validated), then the pairing's
  importance (magnitude_l2) prunes the sparsified model to 2x, forward, floor.

Where Torch-Pruning is right - MagnitudeL1/L2, LAMP, FPGM, BNScale, Taylor's conv/linear part - our
scores equal its importances group by group on every architecture (with the hyperparameters that
select Torch-Pruning's conventions: depthwise members left out, BatchNorm not scored by Taylor).
Groups that read a grouped conv's inputs are the exception by design (Torch-Pruning repeats the whole
weight column for every conv group; tests/test_methods_members.py proves ours against autograd).

The work for the selected architectures runs once per session in two worker processes (the CI
machine has 2 cores); the tests then assert on it. ``PBENCH_ZOO_TABLE=path`` also writes the
markdown table (models x methods, parity per model).
"""

from __future__ import annotations

import copy
import math
import multiprocessing as mp
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pytest

FIXTURES = Path(__file__).resolve().parent / "fixtures"  # zoo_factories: the user factories below


@dataclass(frozen=True)
class Arch:
    """One zoo entry: a model reference and how small to build it."""

    ref: str
    family: str
    kwargs: dict = field(default_factory=dict)
    size: int = 32  # input side

    @property
    def id(self) -> str:
        return self.ref.rpartition(":")[2]


ZOO = [
    Arch("resnet18", "ResNet, registered (residual)", {"width": 0.125}, 32),
    Arch("torchvision:mobilenet_v2", "MobileNetV2 (depthwise)", {"width_mult": 0.25, "inverted_residual_setting": [
        [1, 16, 1, 1], [6, 24, 2, 2], [6, 32, 1, 2], [6, 64, 1, 2], [6, 96, 1, 1]]}),
    Arch("timm:mobilenetv3_small_050", "MobileNetV3 (depthwise, squeeze-excitation)"),
    Arch("timm:test_efficientnet", "EfficientNet (depthwise, squeeze-excitation)"),
    Arch("zoo_factories:regnet_tiny", "RegNetX, torchvision class (grouped)"),
    Arch("zoo_factories:resnext_tiny", "ResNeXt, torchvision class (grouped)"),
    Arch("zoo_factories:densenet_tiny", "DenseNet, torchvision class (concatenation)"),
    Arch("timm:test_convnext", "ConvNeXt (LayerNorm2d, layer-scale gamma)"),
    Arch("timm:test_vit", "ViT (heads, pos_embed, cls_token)", {}, 32),
    Arch("timm:deit_tiny_distilled_patch16_224", "DeiT, distilled (dist_token, two heads)", {"depth": 2}, 32),
    Arch("timm:deit3_small_patch16_224", "DeiT-III (layer-scale gamma)",
         {"depth": 2, "embed_dim": 96, "num_heads": 3}, 32),
    Arch("timm:test_byobnet", "ByobNet (mixed blocks)"),
]
BY_ID = {a.id: a for a in ZOO}

#: hyperparameters that select Torch-Pruning 1.6.1's conventions, and its importance for each method
PARITY_HP = {"magnitude_l1": {"depthwise": False}, "magnitude_l2": {"depthwise": False},
             "lamp": {"depthwise": False}, "fpgm": {"depthwise": False}, "bn_scale": {},
             "taylor": {"depthwise": False, "score_bn": False}}
SPEEDUP, FLOOR = 2.0, 0.1
PAIRING = "magnitude_l2"  # what prunes a regularizer's sparsified model


def _methods():
    from harness.methods import discover
    return discover().names()


# --------------------------------------------------------------------------- the work (in workers)


def _build(arch: Arch):
    import torch
    from torch import nn

    from harness.models import create_model

    torch.manual_seed(0)
    model = create_model(arch.ref, num_classes=10, in_chans=3, image_size=arch.size, **arch.kwargs).eval()
    with torch.no_grad():  # trained-looking affine parameters: BN / layer-scale members then matter
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.affine:
                m.weight.uniform_(0.2, 2.0)
                m.bias.uniform_(-0.5, 0.5)
        for name, p in model.named_parameters():
            if name.rpartition(".")[2] in ("gamma", "layer_scale"):
                p.uniform_(0.2, 2.0)
    return model


def _config_for(model):
    from harness.models import classifier_of, prune_config_of
    from harness.protocol.grouping import PruneConfig

    return prune_config_of(model).merged(PruneConfig(ignored_layers=[classifier_of(model)]))


def _prune(model, example, groups, scores, base_macs) -> dict:
    """Plan, search 2x, run forward, check the floor; what the zoo records of a pruned model."""
    import torch

    from harness.protocol.pruning import make_planner, search_speedup

    base_channels = {g.id: g.n_channels for g in groups}
    planner = make_planner(groups, scores, base_channels, "protected_global", FLOOR, seed=0)
    found = search_speedup(model, example, _config_for, planner, base_macs, base_macs, SPEEDUP)
    with torch.no_grad():
        out = found.model(torch.randn(2, *example.shape[1:]))
    modules = dict(found.model.named_modules())
    kept = min((getattr(modules[g.id], "out_channels", None) or modules[g.id].out_features) /
               (max(1, math.ceil(FLOOR * (g.n_channels // g.ch_groups))) * g.ch_groups) for g in groups)
    return {"speedup": base_macs / found.macs, "probes": found.evaluations, "finite": bool(torch.isfinite(out).all()),
            "shape": tuple(out.shape), "floor_ratio": kept}


def _tp_parity(model, example, config, groups, obs, batch) -> dict:
    """Per method of PARITY_HP: groups compared, groups left out (grouped consumers), max difference."""
    import torch
    import torch.nn.functional as F
    import torch_pruning as tp

    from harness.methods import find_method
    from harness.protocol.grouping import ROOT_TYPES, build_graph
    from harness.runners import client_class
    from specs.sdk import grouped

    imp = tp.importance
    references = {"magnitude_l1": imp.MagnitudeImportance(p=1), "magnitude_l2": imp.MagnitudeImportance(p=2),
                  "lamp": imp.LAMPImportance(), "fpgm": imp.FPGMImportance(), "bn_scale": imp.BNScaleImportance(),
                  "taylor": imp.TaylorImportance()}
    model.zero_grad(set_to_none=True)
    F.cross_entropy(model(batch[0]), batch[1]).backward()  # autograd's gradients, for Taylor (eval mode)
    names = {m: n for n, m in model.named_modules()}
    DG = build_graph(model, example, config)
    tp_groups = {names[g[0].dep.target.module]: g
                 for g in DG.get_all_groups(ignored_layers=config.ignored_layers, root_module_types=ROOT_TYPES)}
    by_id = {g.id: g for g in groups}
    out = {}
    for method, reference in references.items():
        with client_class("inprocess")(find_method(method), PARITY_HP[method], seed=0) as client:
            ours = client.score(0, groups, {k: obs[k] for k in client.observations})
        compared, by_design, differs, worst = 0, 0, 0, 0.0
        for gid, tp_group in tp_groups.items():
            if any(grouped(m) for m in by_id[gid].members):  # TP repeats the column (FPGM even crashes)
                by_design += 1
                try:
                    theirs = reference(tp_group)
                except RuntimeError:
                    theirs = None
                if theirs is not None and not torch.allclose(ours[gid].float(), theirs.float(), rtol=1e-3):
                    differs += 1
                continue
            expected = reference(tp_group)
            if expected is None:  # Torch-Pruning scores nothing here (e.g. BNScale on a group without BN)
                continue
            diff = (ours[gid].float() - expected.float()).abs().max().item() / max(1e-12, expected.abs().max().item())
            worst, compared = max(worst, diff), compared + 1
        out[method] = {"compared": compared, "by_design": by_design, "differs": differs, "max_rel_diff": worst}
    model.zero_grad(set_to_none=True)
    return out


def run_arch(arch_id: str) -> dict:
    """Everything the zoo checks on one architecture (plain data, so it crosses processes); an error
    outside the methods' own steps is reported as ``{"error": ...}``."""
    try:
        return _run_arch(arch_id)
    except Exception as e:  # noqa: BLE001 - the tests report it for this architecture only
        import traceback

        return {"error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()}


def _run_arch(arch_id: str) -> dict:
    sys.path.insert(0, str(FIXTURES))
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch
    import torch.nn.functional as F
    from torch import nn

    from harness.methods import discover
    from harness.protocol.grouping import (NotApplicable, check_applicable, count_macs_params, describe_groups)
    from harness.protocol.observations import collect
    from harness.protocol.sparsify import make_grad_hook
    from harness.runners import client_class
    from specs.sdk import one_line
    from specs.track import Calibration

    torch.set_num_threads(1)
    arch, t0, cpu0 = BY_ID[arch_id], time.perf_counter(), time.process_time()
    model = _build(arch)
    example = torch.randn(1, 3, arch.size, arch.size)
    config = _config_for(model)
    groups = describe_groups(model, example, config)
    g = torch.Generator().manual_seed(1)
    batch = (torch.rand(4, 3, arch.size, arch.size, generator=g), torch.randint(0, 10, (4,), generator=g))
    sources = [discover().get(n) for n in discover().names()]
    kinds = sorted({k for s in sources for k in s.manifest.observations})
    calibration = Calibration(num_samples=4, batch_size=4, positions_per_sample=4, activation_samples=4,
                              output_samples=4)
    obs = collect(kinds, model, groups, [batch], lambda m, b: F.cross_entropy(m(b[0]), b[1]), seed=0,
                  calibration=calibration)
    base_macs, _ = count_macs_params(model, example)
    report = {"groups": len(groups), "grouped": sum(g.ch_groups > 1 for g in groups),
              "has_bn": any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules()),
              "params": sum(p.numel() for p in model.parameters()), "methods": {}}
    for source in sources:
        t = time.perf_counter()
        try:
            check_applicable(source.manifest, model, example, groups)
            if "importance" in source.manifest.provides:
                with client_class("inprocess")(source, {}, seed=0) as client:
                    scores = client.score(0, groups, {k: obs[k] for k in client.observations})
                result = _prune(model, example, groups, scores, base_macs)
            else:
                sparse = copy.deepcopy(model)
                with client_class("inprocess")(source, {}, seed=0) as client:
                    hook = make_grad_hook(sparse, groups, client.regularizer_link(groups))
                    for p in sparse.parameters():
                        p.grad = torch.zeros_like(p)
                    hook(0, 1)
                terms = [p.grad for p in sparse.parameters()]
                moved = sum(int(t.abs().sum() > 0) for t in terms)
                with torch.no_grad():
                    for p in sparse.parameters():
                        p.sub_(0.1 * p.grad)
                with client_class("inprocess")(discover().get(PAIRING), {}, seed=0) as client:
                    scores = client.score(0, groups, collect(["weights"], sparse, groups, []))
                result = _prune(sparse, example, groups, scores, base_macs)
                result["regularized"] = moved
                result["finite_terms"] = all(bool(torch.isfinite(t).all()) for t in terms)
            result["status"] = "ok"
        except NotApplicable as e:
            result = {"status": "refused", "reason": str(e)}
        except Exception as e:  # noqa: BLE001 - the test reports it
            result = {"status": "failed", "reason": one_line(e)}
        result["seconds"] = time.perf_counter() - t
        report["methods"][source.id] = result
    report["parity"] = _tp_parity(model, example, config, groups, obs, batch)
    report["seconds"], report["cpu_seconds"] = time.perf_counter() - t0, time.process_time() - cpu0
    return report


# --------------------------------------------------------------------------- the tests


def _selected(request) -> list[str]:
    """The architectures the selected tests of this module ask for (``-k`` runs only those)."""
    ids = {item.callspec.params["arch"] for item in request.session.items
           if item.path == request.node.path and "arch" in getattr(getattr(item, "callspec", None), "params", {})}
    return [a.id for a in ZOO if a.id in ids]


def report_of(zoo: dict, arch: str) -> dict:
    report = zoo[arch]
    assert "error" not in report, f"{arch}: {report.get('traceback', report.get('error'))}"
    return report


@pytest.fixture(scope="module")
def zoo(request) -> dict[str, dict]:
    """``{arch id: run_arch(arch id)}`` for the selected architectures, two worker processes."""
    wanted = _selected(request)
    t0 = time.perf_counter()
    with ProcessPoolExecutor(max_workers=min(2, len(wanted)) or 1, mp_context=mp.get_context("spawn")) as pool:
        results = dict(zip(wanted, pool.map(run_arch, wanted)))
    if os.environ.get("PBENCH_ZOO_TABLE"):
        Path(os.environ["PBENCH_ZOO_TABLE"]).write_text(table(results, time.perf_counter() - t0))
    return results


def table(results: dict[str, dict], wall_s: float) -> str:
    """The zoo table: models x methods (ok with the speedup reached, refused with the need, or failed),
    and Torch-Pruning parity per model."""
    methods = _methods()
    lines = ["| model | family | groups | " + " | ".join(methods) + " | TP parity | s |",
             "|---|---|---|" + "---|" * len(methods) + "---|---|"]
    for arch_id, r in results.items():
        if "error" in r:
            lines.append(f"| {BY_ID[arch_id].ref} | {BY_ID[arch_id].family} | ERROR: {r['error'][:120]} |")
            continue
        cells = []
        for m in methods:
            o = r["methods"][m]
            if o["status"] == "ok":
                cells.append(f"ok {o['speedup']:.2f}x")
            elif o["status"] == "refused":
                need = "batchnorm" if "needs batchnorm" in o["reason"] else "spatial maps"
                cells.append(f"refused: no {need}")
            else:
                cells.append(f"FAILED: {o['reason'][:80]}")
        par = r["parity"]
        compared = sum(p["compared"] for p in par.values())
        worst = max(p["max_rel_diff"] for m, p in par.items() if m != "lamp")
        left_out = max(p["by_design"] for p in par.values())
        parity = (f"{compared} method x group scores equal (max rel. diff {worst:.0e}, LAMP "
                  f"{par['lamp']['max_rel_diff']:.0e})" + (
                      f"; {left_out} groups reading a grouped conv left out by design (TP differs on "
                      f"{max(p['differs'] for p in par.values())})" if left_out else ""))
        lines.append(f"| {BY_ID[arch_id].ref} | {BY_ID[arch_id].family} | {r['groups']} | " + " | ".join(cells)
                     + f" | {parity} | {r['seconds']:.0f} |")
    per_method = {m: sum(r["methods"][m]["seconds"] for r in results.values() if "methods" in r) for m in methods}
    cpu = sum(r.get("cpu_seconds", 0) for r in results.values())
    lines.append(f"\n{len(results)} models x {len(methods)} methods in {wall_s:.0f} s wall (2 worker processes, "
                 f"{cpu:.0f} CPU-seconds in them); "
                 f"seconds per method over all models: "
                 + ", ".join(f"{m} {t:.0f}" for m, t in sorted(per_method.items(), key=lambda kv: -kv[1])))
    return "\n".join(lines) + "\n"


ARCHS = [pytest.param(a.id, id=a.id) for a in ZOO]


def test_the_zoo_covers_the_families():
    families = " ".join(a.family for a in ZOO)
    assert len(ZOO) >= 12
    for needed in ("ViT", "DeiT", "ConvNeXt", "MobileNet", "EfficientNet", "RegNet", "ResNeXt", "DenseNet"):
        assert needed in families
    assert {a.ref.partition(":")[0] for a in ZOO} >= {"torchvision", "timm", "zoo_factories", "resnet18"}


@pytest.mark.slow
@pytest.mark.parametrize("method", _methods())
@pytest.mark.parametrize("arch", ARCHS)
def test_method_on_architecture(zoo, arch, method):
    from harness.methods import find_method

    outcome = report_of(zoo, arch)["methods"][method]
    manifest = find_method(method).manifest
    if outcome["status"] == "refused":
        reason = outcome["reason"]
        assert "\n" not in reason and reason.startswith(f"{method} cannot score")
        assert manifest.requires, f"{method} refused {arch} without declaring a need: {reason}"
        return
    assert outcome["status"] == "ok", f"{method} on {arch}: {outcome.get('reason')}"
    assert outcome["speedup"] >= SPEEDUP * (1 - 1e-9)
    assert outcome["finite"] and outcome["shape"] == (2, 10)
    assert outcome["floor_ratio"] >= 1.0, f"a group kept fewer than {FLOOR:.0%} of its channels"
    if "regularizer" in manifest.provides:
        assert outcome["finite_terms"] and outcome["regularized"] > 0


@pytest.mark.slow
@pytest.mark.parametrize("arch", ARCHS)
def test_scores_equal_torch_pruning(zoo, arch):
    parity = report_of(zoo, arch)["parity"]
    assert set(parity) == set(PARITY_HP)
    for method, p in parity.items():
        # LAMP: Torch-Pruning divides by (group total - the smaller scores), which cancels for the top scores in
        # float32; ours sums the larger ones (test_methods_members.py::test_lamp_sums_from_the_top): up to ~5e-5
        assert p["max_rel_diff"] <= (1e-4 if method == "lamp" else 1e-5), f"{method} on {arch}: {p}"
    assert sum(p["compared"] for p in parity.values()) >= zoo[arch]["groups"], parity  # most groups, most methods
    if zoo[arch]["has_bn"]:
        assert parity["bn_scale"]["compared"] > 0


@pytest.mark.slow
@pytest.mark.parametrize("arch", ARCHS)
def test_refusals_follow_the_architecture(zoo, arch):
    """BatchNorm scores need BatchNorm; feature-map ranks need 2-D maps, which a transformer's linear
    roots on token sequences do not give - and nothing else is ever refused."""
    status = {m: o["status"] for m, o in report_of(zoo, arch)["methods"].items()}
    for method in ("bn_scale", "bn_scale_l1"):
        assert (status[method] == "refused") == (not zoo[arch]["has_bn"]), zoo[arch]["methods"][method]
    transformer = any(k in BY_ID[arch].family for k in ("ViT", "DeiT"))
    assert (status["hrank"] == "refused") == transformer, zoo[arch]["methods"]["hrank"]
    assert {m for m, s in status.items() if s == "refused"} <= {"bn_scale", "bn_scale_l1", "hrank"}
