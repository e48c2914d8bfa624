"""Bring your own model, end to end: every architecture of the zoo's list (tests/test_zoo.py: ``EVALUATED``, the
twelve of the per-method zoo plus the BYO families) either completes ``evaluate`` twice on one cache - a fresh
base, then the cached one, at the input size the harness picked - or is refused before training in one line
that says what to do (``REFUSED``). An architecture that needs a pretraining recipe or an input size of its own
gets it as its user's track file would (``RECIPES``, ``IMAGE_SIZES``). A file apart from the per-method zoo so
that ``make test`` (pytest-xdist, ``--dist loadfile``) runs the two on different workers; each takes the cores
its worker is due (:func:`workers`).
Full-size torchvision/timm architectures (``HEAVY``) run with ``PBENCH_ZOO_FULL=1``; ``PBENCH_ZOO_TABLE=path``
appends the table (architecture, input size, base top-1, outcome, seconds).
"""

from __future__ import annotations

import copy
import multiprocessing as mp
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import pytest

from test_zoo import (EVAL_TRACK, EVALUATED, FIXTURES, FULL, HEAVY, IMAGE_SIZES, RECIPES, REFUSED,  # noqa: F401
                      workers)


def evaluate_twice(ref: str, kwargs: dict, out: str) -> dict:
    """Derive the track (the harness picks the input size), then ``evaluate`` magnitude_l2 at 2x twice on one
    cache: ``{"status": "ok", size, base_top1, digests, statuses, seconds}``, or ``refused`` with the one-line
    reason when the harness refuses the model (derivation, or a failed base)."""
    sys.path.insert(0, str(FIXTURES))
    os.environ["PYTHONPATH"] = os.pathsep.join([str(FIXTURES), os.environ.get("PYTHONPATH", "")])  # pretraining child
    import warnings

    import torch

    from harness.errors import HarnessError
    from harness.methods import find_method
    from harness.protocol.run import RunSpec, evaluate
    from harness.tracks import derive_track
    from specs.track import TrackConfig

    warnings.simplefilter("ignore")
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    try:
        base = copy.deepcopy(EVAL_TRACK)
        base["checkpoint"]["pretrain"].update(RECIPES.get(ref, {}))
        if ref in IMAGE_SIZES:
            base["dataset"]["image_size"] = IMAGE_SIZES[ref]
        track, note = derive_track(TrackConfig.model_validate(base), ref, kwargs=kwargs)
        derived_s = time.perf_counter() - t0
        records = [evaluate(RunSpec(track=track, method=find_method("magnitude_l2"), speedup=2, seed=0,
                                    runner="inprocess", out=Path(out) / f"run{i}", save_models=False,
                                    measure_latency=False))[0] for i in (1, 2)]
    except HarnessError as e:
        return {"status": "refused", "reason": str(e), "seconds": time.perf_counter() - t0}
    except Exception as e:  # noqa: BLE001 - the test reports it
        import traceback
        return {"status": "error", "reason": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc(),
                "seconds": time.perf_counter() - t0}
    return {"status": "ok", "size": track.dataset.image_size or 8, "note": note,
            "base_top1": records[0].metric.base, "final": [r.metric.final for r in records],
            "statuses": [r.status for r in records], "errors": [r.error for r in records],
            "digests": [r.provenance.checkpoint_sha256 for r in records], "seconds": time.perf_counter() - t0,
            "derive_s": derived_s, "run_s": [r.timing.total_s for r in records],
            "retrain_s": [r.timing.retrain_s for r in records]}


def _evaluated_selected(request) -> list[str]:
    ids = {item.callspec.params["ref"] for item in request.session.items
           if item.path == request.node.path and "ref" in getattr(getattr(item, "callspec", None), "params", {})}
    return [ref for ref, _, _ in EVALUATED if ref in ids and (FULL or ref not in HEAVY)]


@pytest.fixture(scope="module")
def evaluated(request, tmp_path_factory) -> dict[str, dict]:
    """``{ref: evaluate_twice(...)}`` for the selected architectures, one worker process per core (:func:`workers`)."""
    wanted = _evaluated_selected(request)
    kwargs = {ref: kw for ref, _, kw in EVALUATED}
    out = tmp_path_factory.mktemp("zoo-evaluate")
    t0 = time.perf_counter()
    with ProcessPoolExecutor(max_workers=workers(len(wanted)), mp_context=mp.get_context("spawn")) as pool:
        futures = {ref: pool.submit(evaluate_twice, ref, kwargs[ref], str(out / ref.replace(":", "-")))
                   for ref in wanted}
        results = {ref: f.result() for ref, f in futures.items()}
    if os.environ.get("PBENCH_ZOO_TABLE"):
        with open(os.environ["PBENCH_ZOO_TABLE"], "a") as f:
            f.write("\n" + evaluated_table(results, time.perf_counter() - t0))
    return results


def evaluated_table(results: dict[str, dict], wall_s: float) -> str:
    family = {ref: fam for ref, fam, _ in EVALUATED}
    lines = ["| architecture | family | input size | base top-1 | outcome | s |", "|---|---|---|---|---|---|"]
    for ref, r in results.items():
        if r["status"] == "ok":
            outcome = ("ok twice, same base" if r["statuses"] == ["ok", "ok"] and len(set(r["digests"])) == 1
                       else f"FAILED: {r['statuses']} {r['errors']}")
            lines.append(f"| {ref} | {family[ref]} | {r['size']} px | {r['base_top1']:.1f} | {outcome} | "
                         f"{r['seconds']:.0f} |")
        else:
            lines.append(f"| {ref} | {family[ref]} | - | - | {r['status']}: {r['reason']} | {r['seconds']:.0f} |")
    lines.append(f"\n{len(results)} architectures in {wall_s:.0f} s wall ({workers(len(results))} worker processes)")
    return "\n".join(lines) + "\n"


def test_the_evaluated_zoo_covers_the_families():
    assert len(EVALUATED) >= 24 and len({ref for ref, _, _ in EVALUATED}) == len(EVALUATED)
    families = " ".join(fam for _, fam, _ in EVALUATED)
    for needed in ("channel shuffle", "inception", "MLP-Mixer", "hybrid conv-attention", "re-parameterizable",
                   "pyramid ViT", "transformers"):
        assert needed in families
    assert sum(ref.startswith("hf:") for ref, _, _ in EVALUATED) >= 4


@pytest.mark.slow
@pytest.mark.parametrize("ref", [pytest.param(ref, id=ref.rpartition(":")[2], marks=[pytest.mark.skipif(
    ref in HEAVY and not FULL, reason="full-size architecture: PBENCH_ZOO_FULL=1 runs it")]) for ref, _, _ in EVALUATED])
def test_evaluate_twice_or_refuse_up_front(evaluated, ref):
    r = evaluated[ref]
    assert r["status"] != "error", r.get("traceback")
    if ref in REFUSED:
        assert r["status"] == "refused" and "\n" not in r["reason"] and REFUSED[ref] in r["reason"], r
        assert any(what in r["reason"] for what in ("prune adapter", "dataset.image_size", "checkpoint.pretrain"))
        return
    assert r["status"] == "ok", r["reason"]
    assert r["statuses"] == ["ok", "ok"], r["errors"]
    assert r["digests"][0] == r["digests"][1]  # trained once, then reused
    assert r["base_top1"] >= 15.0  # beats chance (10%) by the default margin
