"""The run plan (harness.plan): one validated object behind evaluate, sweep, recipe-swap and plan files."""

from __future__ import annotations

import subprocess
import sys

import pytest
from typer.testing import CliRunner

from harness.cli import app
from harness.plan import Plan, PlanError
from harness.protocol.run import run_key_of

REPO = __import__("pathlib").Path(__file__).resolve().parents[1]


def resolve(**fields):
    return Plan.build(**fields).resolve()


def test_a_plan_expands_into_one_run_per_combination_target_and_seed(tiny_track_file):
    r = resolve(track=str(tiny_track_file), methods=["magnitude_l1", "random"], regularizers=["-", "group_norm"],
                speedups=[2, 4], seeds=[0, 1])
    assert len(r.specs) == 2 * 2 * 2 * 2
    combos = {(s.method.id, s.regularizer.id if s.regularizer else None, s.speedup, s.seed) for s in r.specs}
    assert len(combos) == 16 and len({run_key_of(s) for s in r.specs}) == 16
    assert r.targets == [2, 4] and r.seeds == [0, 1]


def test_defaults_come_from_the_track(tiny_track):
    r = resolve(track="digits-resnet18", methods=["random"])
    assert r.targets == [2, 4, 8] and r.seeds == [0, 1, 2]
    assert {s.method.id for s in r.specs} == {"random"}


def test_all_means_every_method_that_provides_it():
    from harness.methods import providing
    r = resolve(track="digits-resnet18", methods=["all"], regularizers=["all"], speedups=[2], seeds=[0])
    assert {s.method.id for s in r.specs} == {m.id for m in providing("importance")}
    assert {s.regularizer.id for s in r.specs} == {m.id for m in providing("regularizer")}


@pytest.mark.parametrize("fields, field, message", [
    (dict(methods=["group_norm"]), "methods", "provides no importance scores"),
    (dict(methods=["random"], regularizers=["random"]), "regularizers", "provides no regularizer"),
    (dict(methods=["nope"]), "methods", "unknown method 'nope'"),
    (dict(methods=["random"], speedups=[0.5]), "speedups", "speedup must be > 1"),
    (dict(methods=["random"], hyperparameters={"q": 1}), "hyperparameters", "has no hyperparameter 'q'"),
    (dict(methods=["lamp", "random"], hyperparameters={"p": 1}, speedups=[2, 4]), "hyperparameters",
     "method 'random' has no hyperparameter 'p'"),  # every method's, not only the first runs'
    (dict(methods=["random"], reg_hyperparameters={"lam": 1}), "reg_hyperparameters", "without a regularizer"),
    (dict(methods=["random", "lamp"], recipes=["track"]), "recipes", "at least two recipes"),
    (dict(methods=["random"], recipes=["track", "ft_long"]), "methods", "at least two methods"),
    (dict(methods=["random", "lamp"], recipes=["track", "nope"]), "recipes", "no retraining recipe 'nope'"),
    (dict(methods=["random", "lamp"], recipes=["track", "ft_long"], own={"taylor": "track"}), "own", "own:"),
    (dict(methods=["random"], jobs=0), "jobs", "invalid plan: jobs"),
    (dict(methods=["random"], runner="ssh"), "runner", "invalid plan: runner"),
    (dict(methods=["random"], slurm_config="s.yaml"), "slurm_config", "--slurm-config needs --executor slurm"),
    (dict(methods=["random"], own={"random": "track"}), "own", "--own needs --recipes"),
])
def test_bad_plans_name_the_field_in_one_line(fields, field, message):
    with pytest.raises(PlanError) as e:
        resolve(track="digits-resnet18", **fields)
    assert e.value.field == field and message in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize("fields, field, message", [
    (dict(speedup=0.5), "speedups", "speedup must be > 1 (e.g. 2, 4, 8), got 0.5"),
    (dict(method="group_norm"), "methods", "method 'group_norm' provides no importance scores"),
    (dict(regularizer="lamp"), "regularizers", "method 'lamp' provides no regularizer"),
    (dict(reg_hyperparameters={"reg": 1}), "reg_hyperparameters", "regularizer hyperparameters given without a "
                                                                  "regularizer"),
    (dict(hyperparameters={"q": 1}), "hyperparameters", "method 'random' has no hyperparameter 'q'"),
])
def test_a_run_built_without_a_plan_gets_the_plans_checks(fields, field, message):
    """``check_run``: blind evaluation and the submission smoke run build their RunSpecs by hand; the
    protocol checks none of it (it trusts its RunSpec), the plan's checks do, in the same words."""
    from harness.methods import find_method
    from harness.plan import check_run
    from harness.protocol.run import RunSpec
    from harness.tracks import load_track
    sources = {k: find_method(fields.pop(k)) for k in ("method", "regularizer") if k in fields}
    spec = RunSpec(track=load_track("digits-resnet18"), **{"method": find_method("random"), "speedup": 2, "seed": 0,
                                                            **sources, **fields})
    with pytest.raises(PlanError) as e:
        check_run(spec)
    assert e.value.field == field and str(e.value).startswith(message) and "\n" not in str(e.value)
    check_run(RunSpec(track=load_track("digits-resnet18"), method=find_method("random"), speedup=2, seed=0))


def test_model_alone_selects_its_only_track_and_lists_several():
    r = resolve(model="yolov8", methods=["fpgm"])
    assert r.track.id == "coco-yolov8" and r.targets == [2, 3, 4]
    with pytest.raises(PlanError, match=r"model 'resnet18' has 4 tracks \(cifar10-resnet18, .*\): give --dataset"):
        resolve(model="resnet18", methods=["fpgm"])
    with pytest.raises(PlanError, match="unknown model 'resnet19'; did you mean 'resnet18'"):
        resolve(model="resnet19", methods=["fpgm"])


def test_a_plan_file_with_flags_that_override_it(tiny_track_file, tmp_path):
    plan_file = tmp_path / "plan.yaml"
    plan_file.write_text(f"track: {tiny_track_file}\nmethods: [magnitude_l1, random]\nspeedups: [2]\nseeds: [0]\n"
                         f"out: {tmp_path / 'from-file'}\nsave_models: false\n")
    res = CliRunner().invoke(app, ["sweep", "--plan", str(plan_file), "--methods", "random", "--out",
                                   str(tmp_path / "from-flags")])
    assert res.exit_code == 0, res.output
    assert "[1/1] random 2x seed 0" in res.output  # --methods won over the file's two methods
    assert list((tmp_path / "from-flags").rglob("result.json")) and not (tmp_path / "from-file").exists()
    [record] = list((tmp_path / "from-flags").rglob("result.json"))
    assert not list(record.parent.glob("*.pt"))  # the file's save_models: false held (no flag overrode it)


@pytest.mark.parametrize("text, message", [
    ("methods: [random]\nspeedupz: [2]\n", "speedupz: Extra inputs are not permitted"),
    ("- a\n- b\n", "a plan file must be a mapping"),
    ("methods: [random\n", "not valid YAML at line"),
])
def test_a_bad_plan_file_is_one_line_and_exit_2(text, message, tmp_path):
    plan_file = tmp_path / "plan.yaml"
    plan_file.write_text(text)
    res = CliRunner().invoke(app, ["sweep", "--plan", str(plan_file), "--out", str(tmp_path / "out")])
    assert res.exit_code == 2 and message in " ".join(res.output.split()), res.output
    assert not (tmp_path / "out").exists()


def test_listing_commands_do_not_import_torch():
    """`--help`, `methods`, `tracks`, `leaderboard` and `site` load neither torch nor torch_pruning, nor the
    statistics libraries (scipy, scikit-posthocs, statsmodels: the leaderboard imports them when it ranks)."""
    code = ("import sys\nfrom typer.testing import CliRunner\nfrom harness.cli import app\n"
            "for args in (['--help'], ['methods'], ['tracks'], ['leaderboard', '--help'], ['site', '--help'],"
            " ['sweep', '--help'], ['evaluate', '--help']):\n"
            "    assert CliRunner().invoke(app, args).exit_code == 0, args\n"
            "heavy = [m for m in ('torch', 'torch_pruning', 'timm', 'ultralytics', 'scipy', 'scikit_posthocs',\n"
            "                     'statsmodels')\n"
            "         if m in sys.modules]\n"
            "assert not heavy, heavy\n")
    res = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
