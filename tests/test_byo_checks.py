"""Bring your own model: what the harness checks before any training, each an attack an outside review
made (tests/fixtures/odd_models.py).

- a layer only training mode runs (an auxiliary head) or a backward only a pruned model breaks: the dry
  prune to the floor also runs a training-mode forward and backward, and refuses in one line naming the
  layer, instead of an internal error mid-run;
- an error that has nothing to do with the input size (a factory's signature, logits of the wrong width)
  stops the input-size probe after two sizes and is reported as what it is; a genuine size problem still
  probes on, and names ``dataset.image_size`` when no size works;
- a dict output without ``logits`` is refused naming its keys (no guessing which value is the logits).
"""

from __future__ import annotations

import copy
import time
from pathlib import Path

import pytest
import torch

from harness.errors import HarnessError
from harness.models import classifier_of, create_model, logits_of, prune_config_of
from harness.protocol.grouping import PruneConfig, Unprunable, apply_plan, check_groups, describe_groups, floor_plan
from harness.tracks import about_size, derive_track

FIXTURES = Path(__file__).resolve().parent / "fixtures"


@pytest.fixture(autouse=True)
def odd_models(monkeypatch):
    monkeypatch.syspath_prepend(str(FIXTURES))
    import odd_models
    odd_models.CALLS.clear()
    return odd_models


def _groups(ref: str):
    model = create_model(ref, num_classes=10, in_chans=1, image_size=8).eval()
    config = prune_config_of(model).merged(PruneConfig(ignored_layers=[classifier_of(model)]))
    x = torch.rand(1, 1, 8, 8)
    return model, x, config, describe_groups(model, x, config)


def derive(tiny_track, ref: str):
    t = time.perf_counter()
    with pytest.raises(HarnessError) as e:
        derive_track(tiny_track, ref)
    return str(e.value), time.perf_counter() - t


def test_a_training_mode_only_branch_is_refused_naming_its_layer(tiny_track):
    model, x, config, groups = _groups("odd_models:train_only_branch")
    dry = copy.deepcopy(model)
    apply_plan(dry, x, config, floor_plan(groups, 0.1))
    dry(x)  # eval mode runs pruned: an eval-only check would pass it
    with pytest.raises(RuntimeError):
        dry.train()(torch.rand(2, 1, 8, 8))  # what pretraining and retraining would then meet mid-run
    with pytest.raises(Unprunable) as e:
        check_groups(model, x, config, groups)
    assert str(e.value).startswith("cannot prune TrainOnlyBranch at layer 'aux': pruned to the floor it no longer "
                                   "runs a training-mode forward")
    assert "\n" not in str(e.value) and not model.training  # the model itself is untouched, in eval mode
    line, _ = derive(tiny_track, "odd_models:train_only_branch")  # before any training
    assert line.startswith("cannot prune TrainOnlyBranch at layer 'aux'")


def test_a_backward_only_a_pruned_model_breaks_is_refused(tiny_track):
    model, x, config, groups = _groups("odd_models:backward_only")
    dry = copy.deepcopy(model)
    apply_plan(dry, x, config, floor_plan(groups, 0.1))
    out = dry.train()(torch.rand(2, 1, 8, 8))  # forward runs in both modes
    with pytest.raises(RuntimeError):
        out.sum().backward()
    with pytest.raises(Unprunable) as e:
        check_groups(model, x, config, groups)
    assert "pruned to the floor it no longer runs a training-mode backward (RuntimeError: The size of tensor a" \
        in str(e.value)
    assert all(p.grad is None for p in model.parameters())


@pytest.mark.parametrize("factory, reason", [
    ("no_image_size", "raised TypeError: no_image_size() got an unexpected keyword argument 'image_size'"),
    ("wrong_width", "logits of shape [2, 16], not [batch, 10]"),
])
def test_an_error_that_is_not_about_size_stops_the_probe(tiny_track, odd_models, factory, reason):
    line, seconds = derive(tiny_track, f"odd_models:{factory}")
    assert line.startswith(f"odd_models:{factory} fails the same way at 8px and 16px, so not for its input size: ")
    assert reason in line and "\n" not in line and "dataset.image_size" not in line
    if factory in odd_models.CALLS:  # (the signature fails before the body runs)
        assert odd_models.CALLS[factory] == 2  # two sizes probed, not eight
    assert seconds < 20


def test_a_size_problem_keeps_probing_and_names_image_size(tiny_track, odd_models):
    line, _ = derive(tiny_track, "odd_models:exact_size")
    assert odd_models.CALLS["exact_size"] == 8  # every candidate size
    assert line.startswith("odd_models:exact_size does not run on digits at 8px, 16px, 32px, 64px, 96px, 128px, "
                           "160px, 224px")
    assert "set dataset.image_size in a track file" in line and "\n" not in line
    track, note = derive_track(tiny_track, "odd_models:strided")  # "Output size is too small" below 63 px
    assert track.dataset.image_size == 64 and "input size 64px (the smallest probed size that works" in note


def test_size_words():
    assert about_size("RuntimeError: Given input size: (8x1x1). Calculated output size: (8x0x0). Output size is "
                      "too small")
    assert about_size("AssertionError: Input height (8) doesn't match model (224).")
    assert about_size("RuntimeError: mat1 and mat2 shapes cannot be multiplied (2x64 and 784x10)")
    assert not about_size("HarnessError: logits of shape [2, 16], not [batch, 10]")
    assert not about_size("TypeError: f() got an unexpected keyword argument 'image_size'")


def test_a_dict_output_without_logits_is_refused_naming_its_keys(tiny_track):
    from transformers.modeling_outputs import ImageClassifierOutput

    t = torch.randn(2, 10)
    assert logits_of({"logits": t, "features": t}) is t
    assert logits_of(ImageClassifierOutput(logits=t)) is t
    assert logits_of((t, t * 2)) is t
    with pytest.raises(HarnessError, match=r"^the model returned a dict with keys \['embedding', 'scores'\] and no "
                                           r"'logits': return the logits tensor"):
        logits_of({"embedding": t, "scores": t})
    with pytest.raises(HarnessError, match="keys \\[\\] and no 'logits'"):
        logits_of({})
    line, _ = derive(tiny_track, "odd_models:dict_no_logits")  # before any training
    assert "the model returned a dict with keys ['embedding', 'scores'] and no 'logits'" in line


def test_batchnorm_statistics_the_recipe_cannot_move_are_refused_before_training(tiny_track):
    """momentum 0.001 over the tiny track's pretraining (4 epochs of 64-image batches) leaves the running
    statistics at 0.999**steps of their initial values: refused up front, with the steps that would do."""
    from harness.data import load_track_dataset

    n = len(load_track_dataset(tiny_track.dataset, None).train)
    steps = 4 * (n // 64)
    assert 0.999 ** steps > 0.5
    with pytest.raises(HarnessError) as e:
        derive_track(tiny_track, "odd_models:slow_batchnorm")
    line = str(e.value)
    assert line.startswith(f"odd_models:slow_batchnorm's BatchNorm layer 'features.1' has momentum 0.001: after the "
                           f"pretrain recipe's {steps} steps its running statistics would still weigh their "
                           f"initial values (mean 0, variance 1) at {0.999 ** steps:.0%}")
    assert "pretrain for at least 693 steps" in line and "\n" not in line  # 0.999**693 < 0.5 < 0.999**692
    assert 0.999 ** 693 < 0.5 < 0.999 ** 692
    track, _ = derive_track(tiny_track, "odd_models:slow_batchnorm", kwargs={"momentum": 0.1})  # moves: accepted
    assert track.model.kwargs == {"momentum": 0.1}


def test_the_cli_refuses_a_training_only_branch_before_pretraining(tmp_path, pbench_cache):
    """The outside review's end-to-end attack: ``evaluate --model <training-only branch> --dataset digits`` failed
    mid-run with an internal error; now exit 2, one line naming the layer, nothing trained, nothing written."""
    from typer.testing import CliRunner

    from harness.cli import app

    res = CliRunner().invoke(app, ["evaluate", "--method", "magnitude_l2", "--model", "odd_models:train_only_branch",
                                   "--dataset", "digits", "--speedup", "2", "--runner", "inprocess",
                                   "--out", str(tmp_path / "results")])
    assert res.exit_code == 2 and "Traceback" not in res.output, res.output
    assert "cannot prune TrainOnlyBranch at layer 'aux'" in res.output and "internal error" not in res.output
    assert len(res.output.strip().splitlines()) == 1
    assert not list(pbench_cache.rglob("*train_only_branch*")) and not (tmp_path / "results").exists()


def test_a_tied_weight_is_observed_under_both_names_and_scored():
    """A classifier weight tied to a second head (``fc2.weight = fc.weight``): the group members name both, so
    the observations carry both (a KeyError, an "internal error" record, before), as distinct tensors that can
    be written side by side, and a method out of process scores the groups."""
    from harness.methods import find_method
    from harness.protocol.observations import collect
    from harness.runners import client_class

    class Tied(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(1, 8, 3, padding=1)
            self.fc, self.fc2 = torch.nn.Linear(8, 10), torch.nn.Linear(8, 10)
            self.fc2.weight = self.fc.weight

        def forward(self, x):
            f = torch.relu(self.conv(x)).mean((2, 3))
            return self.fc(f) + self.fc2(f)

    torch.manual_seed(0)
    model, x = Tied().eval(), torch.randn(2, 1, 8, 8)
    groups = describe_groups(model, x, PruneConfig(ignored_layers=[model.fc, model.fc2]))
    batches = [(x, torch.tensor([1, 2]))]
    loss = lambda m, b: torch.nn.functional.cross_entropy(m(b[0]), b[1])  # noqa: E731
    obs = collect(["weights", "gradients"], model, groups, batches, loss)
    assert torch.equal(obs["weights"]["fc2.weight"], model.fc.weight) and \
        obs["weights"]["fc2.weight"].data_ptr() != obs["weights"]["fc.weight"].data_ptr()
    with client_class("subprocess")(find_method("taylor"), {}, 0) as client:
        scores = client.score(0, groups, obs)
    assert {g.id: scores[g.id].shape[0] for g in groups} == {g.id: g.n_channels for g in groups}


def _cache_entries(cache, part):
    """What the checkpoint cache holds for one model or base (its checkpoint, lock, temporary and metric files):
    the cache is shared by the whole test session, so other workers' bases may appear in it meanwhile."""
    return sorted(cache.rglob(f"*{part}*"))


@pytest.mark.parametrize("command", ["evaluate", "pretrain"])
@pytest.mark.parametrize("model, refusal", [
    ("odd_models:train_only_branch", "cannot prune TrainOnlyBranch at layer 'aux'"),
    ("odd_models:slow_batchnorm", "odd_models:slow_batchnorm's BatchNorm layer 'features.1' has momentum 0.001")])
def test_a_track_files_model_is_refused_before_pretraining(tmp_path, pbench_cache, monkeypatch, command, model,
                                                           refusal):
    """A model given in a track file (not by ``--model``) got the group and BatchNorm checks only after its base was
    pretrained; now the same one-line refusals as ``--model`` before it: exit 2, and nothing written to the
    checkpoint cache (no base trained) or to the results. (Pretraining runs in a process of its own: the fixtures
    are on its PYTHONPATH too, so without the check the base would be trained and cached.)"""
    import os

    from typer.testing import CliRunner

    from conftest import TINY_TRACK
    from harness.cli import app

    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(FIXTURES), os.environ.get("PYTHONPATH")])))
    track = tmp_path / "own.yaml"
    track.write_text(TINY_TRACK.replace("id: tiny-digits", "id: own-digits")
                     .replace("{name: resnet18, kwargs: {width: 0.25}}", f"{{name: '{model}'}}"))
    before = _cache_entries(pbench_cache, model.split(":")[1])
    args = (["evaluate", "--method", "magnitude_l2", "--track", str(track), "--speedup", "2", "--runner", "inprocess",
             "--out", str(tmp_path / "results")] if command == "evaluate" else ["pretrain", str(track)])
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 2 and "Traceback" not in res.output, res.output
    assert refusal in res.output and len(res.output.strip().splitlines()) == 1, res.output
    assert _cache_entries(pbench_cache, model.split(":")[1]) == before and not (tmp_path / "results").exists()


@pytest.mark.parametrize("factory, reason", [
    ("key_error", "KeyError: 'logits'"),
    ("exits", "the model's code called sys.exit(0)"),
    ("lambda_activation", "cannot be saved: a run saves its pruned model whole and torch.save cannot pickle it"),
    ("lambda_hook", "cannot be saved: a run saves its pruned model whole and torch.save cannot pickle it"),
    ("detached_logits", "logits in training mode are detached from the parameters"),
    ("integer_logits", "logits in training mode are of dtype torch.int64"),
])
def test_what_a_models_own_code_gets_wrong_is_refused_in_one_line_before_training(tiny_track, factory, reason):
    """(review) A forward raising what the probe did not list (a traceback before), a factory calling sys.exit
    (a silent exit 0), a model torch.save cannot pickle and logits pretraining cannot move (both failed only
    after the base was trained): one line, before any training."""
    line, _ = derive(tiny_track, f"odd_models:{factory}")
    assert reason in line and "\n" not in line


def _with(track, **pruning):
    return track.model_copy(update={"pruning": track.pruning.model_copy(update=pruning)})


@pytest.mark.parametrize("strategy, round_to", [("protected_global", 1), ("global", 4)])
def test_the_largest_reachable_speedup_is_known_before_training_and_is_the_prune_stages(tiny_track, tmp_path,
                                                                                     strategy, round_to):
    """What a freshly built model says is the most a plan reaches (every group at its floor, with the track's
    strategy and rounding) is what the prune stage of a trained base reports when a target is out of reach."""
    from harness.methods import find_method
    from harness.protocol.pruning import max_speedup
    from harness.protocol.run import RunSpec, evaluate
    from harness.tasks import task_for

    track = _with(tiny_track, strategy=strategy, round_to=round_to)
    task = task_for(track)
    task.base_model()  # trained (once per test session), so that the run reaches its prune stage
    torch.manual_seed(0)
    most = max_speedup(task.architecture().eval(), task.example_inputs(), task.prune_config, strategy,
                       track.pruning.min_channel_fraction, round_to)
    assert 4 < most < 1000
    record, _ = evaluate(RunSpec(track=track, method=find_method("magnitude_l1"), speedup=round(most * 1.01, 2),
                                 seed=0, runner="inprocess", out=tmp_path, measure_latency=False, save_models=False))
    assert record.status == "failed" and f"unreachable with strategy {strategy}: at most {most:.2f}x" in record.error


def test_no_base_is_trained_for_targets_no_plan_reaches(tiny_track, tmp_path, pbench_cache):
    """``evaluate`` (one run) and a sweep (every run of a base) whose targets are all out of reach stop in one
    line before the base is trained (it used to be trained, minutes to hours, for runs that then all failed);
    nothing is written, and the method process launched as the run began is gone."""
    from harness.methods import find_method
    from harness.orchestration.sweep import run_sweep
    from harness.protocol.checkpoints import cache_path
    from harness.protocol.pruning import Unreachable
    from harness.protocol.run import RunSpec, evaluate
    from harness.runners import spares

    recipe = tiny_track.checkpoint.pretrain.model_copy(update={"epochs": 3})  # a base no other test trains
    track = tiny_track.model_copy(update={"checkpoint": tiny_track.checkpoint.model_copy(update={"pretrain": recipe})})
    before = _cache_entries(pbench_cache, cache_path(track).stem)

    def spec(speedup):
        return RunSpec(track=track, method=find_method("magnitude_l1"), speedup=speedup, seed=0, runner="subprocess",
                       out=tmp_path / "results", measure_latency=False, save_models=False)

    with pytest.raises(Unreachable, match=r"^speedup 500x is unreachable on track tiny-digits with strategy "
                                          r"protected_global: at most \d+\.\d\dx .*its base was not trained$"):
        evaluate(spec(500))
    assert spares.current() is None
    with pytest.raises(Unreachable, match=r"^speedups 400x, 500x are unreachable"):
        run_sweep([spec(500), spec(400)], tmp_path / "results")
    assert not cache_path(track).exists() and _cache_entries(pbench_cache, cache_path(track).stem) == before
    assert not (tmp_path / "results").exists() or not list((tmp_path / "results").rglob("*.json"))


@pytest.mark.parametrize("model, reason", [
    ({"name": "timm:resnet18", "kwargs": {"in_chans": 3}},
     "model timm:resnet18: kwargs 'in_chans' is set by the harness from the dataset"),
    ({"name": "resnet18", "kwargs": {"width": 0.25, "image_size": 16}},
     "model resnet18: kwargs 'image_size' is set by the harness from the dataset"),
    ({"name": "odd_models:train_only_branch", "kwargs": {"num_classes": 3}},
     "model odd_models:train_only_branch: kwargs 'num_classes' is set by the harness"),
    ({"name": "file:{dir}/model.pt", "sha256": "a" * 64}, "does not match the track's " + "a" * 64),
])
def test_what_is_wrong_with_the_reference_is_refused_as_that_not_as_its_input_size(tiny_track, tmp_path, model,
                                                                                    reason):
    """(review) A model file whose digest is not the track's, or kwargs that set what the harness passes the
    builder itself, were refused as "does not run on digits at the dataset's own size (...); set
    dataset.image_size": now as what they are, in one line, before any model is built."""
    from harness.tracks import check_track_file

    torch.save(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10)), tmp_path / "model.pt")
    model = {**model, "name": model["name"].format(dir=tmp_path)}
    track = tiny_track.model_copy(update={"model": tiny_track.model.model_copy(update={"kwargs": {}, **model})})
    with pytest.raises(HarnessError) as e:
        check_track_file(track)
    line = str(e.value)
    assert reason in line and "\n" not in line and "image_size to a size" not in line, line
