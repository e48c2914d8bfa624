"""Bring your own model: model references, derived tracks, and one-line errors for bad ones.

- every kind of reference builds the architecture it names (torchvision's and timm's own classes,
  a factory on PYTHONPATH, a whole pickled model checked by sha256), untrained, with the track's
  classes / channels / image size;
- bad references are one line: unknown names with close matches, weights kwargs, modules that do
  not import, factories that raise or return something else, missing files, digests that differ;
- ``--model X --dataset Y`` without a registered track derives one from the dataset's default track
  with the model replaced, says so, and its hash goes into the record (end to end through the CLI);
- a model Torch-Pruning cannot trace gets a one-line error naming the layer.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest
import torch
from pydantic import ValidationError
from torch import nn
from typer.testing import CliRunner

from harness.errors import HarnessError
from harness.models import build_model, classifier_of, create_model, prune_config_of
from harness.protocol.grouping import PruneConfig, Untraceable, describe_groups
from harness.tracks import default_track, derive_track, inapplicable, registry, resolve_track
from specs.track import ModelRef, TrackConfig

FIXTURES = Path(__file__).resolve().parent / "fixtures"


@pytest.fixture(autouse=True)
def factories_on_path(monkeypatch):
    monkeypatch.syspath_prepend(str(FIXTURES))  # zoo_factories, as a user's PYTHONPATH would hold it


def one_line(excinfo) -> str:
    text = str(excinfo.value)
    assert "\n" not in text and "Traceback" not in text
    return text


# --------------------------------------------------------------------------- references that build


def test_torchvision_reference_is_torchvisions_architecture_untrained():
    import torchvision

    model = create_model("torchvision:mobilenet_v2", num_classes=7, in_chans=1, image_size=32, width_mult=0.5)
    ref = torchvision.models.mobilenet_v2(weights=None, num_classes=7, width_mult=0.5)
    assert type(model) is type(ref) and classifier_of(model).out_features == 7
    assert model.features[0][0].in_channels == 1  # rebuilt for single-channel data, same geometry otherwise
    own = [(k, tuple(v.shape)) for k, v in model.state_dict().items()]
    assert own[1:] == [(k, tuple(v.shape)) for k, v in ref.state_dict().items()][1:]
    assert model(torch.rand(2, 1, 32, 32)).shape == (2, 7)
    # torchvision's ViT takes the track's image size
    vit = create_model("torchvision:vit_b_16", num_classes=3, image_size=64)
    assert vit.image_size == 64 and vit(torch.rand(1, 3, 64, 64)).shape == (1, 3)


def test_timm_reference_passes_kwargs_and_image_size():
    import timm

    model = create_model("timm:deit_tiny_patch16_224", num_classes=5, in_chans=3, image_size=32, depth=2)
    assert isinstance(model, timm.models.vision_transformer.VisionTransformer)
    assert len(model.blocks) == 2 and model.patch_embed.img_size == (32, 32)
    convnext = create_model("timm:convnext_atto", num_classes=5, in_chans=2, image_size=32, depths=[1, 1, 1, 1])
    assert convnext.stem[0].in_channels == 2 and convnext(torch.rand(1, 2, 32, 32)).shape == (1, 5)


def test_factory_reference_gets_the_data_shape():
    model = create_model("zoo_factories:resnext_tiny", num_classes=4, in_chans=1, image_size=32, groups=2)
    assert model.layer1[0].conv2.groups == 2 and model.conv1.in_channels == 1
    assert model(torch.rand(2, 1, 32, 32)).shape == (2, 4)


def test_file_reference_loads_the_whole_model_checked_by_digest(tmp_path):
    original = create_model("zoo_factories:densenet_tiny", num_classes=10, image_size=32).eval()
    path = tmp_path / "net.pt"
    torch.save(original, path)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    ref = ModelRef(name=f"file:{path}", sha256=digest)
    loaded = build_model(ref, num_classes=10, in_chans=3, image_size=32).eval()
    x = torch.rand(2, 3, 32, 32)
    assert torch.equal(loaded(x), original(x))
    with pytest.raises(HarnessError) as e:
        build_model(ref.model_copy(update={"sha256": "0" * 64}), num_classes=10, in_chans=3, image_size=32)
    assert one_line(e) == f"{path}: sha256 {digest} does not match the track's {'0' * 64}"
    with pytest.raises(HarnessError) as e:
        build_model(ref, num_classes=3, in_chans=3, image_size=32)
    assert "classifier has 10 outputs, the dataset has 3 classes" in one_line(e)
    state = tmp_path / "state.pt"
    torch.save(original.state_dict(), state)
    bad = ModelRef(name=f"file:{state}", sha256=hashlib.sha256(state.read_bytes()).hexdigest())
    with pytest.raises(HarnessError, match="not a whole nn.Module"):
        build_model(bad, num_classes=10, in_chans=3, image_size=32)


def test_model_refs_validate_and_keep_registered_track_hashes():
    with pytest.raises(ValidationError, match="needs its sha256"):
        ModelRef(name="file:net.pt")
    with pytest.raises(ValidationError, match="pins a file: model"):
        ModelRef(name="timm:resnet18", sha256="0" * 64)
    with pytest.raises(ValidationError, match="takes no kwargs"):
        ModelRef(name="file:net.pt", sha256="0" * 64, kwargs={"width": 1})
    for bad in ("ResNet18", "timm:", "a:b:c", "file:"):
        with pytest.raises(ValidationError):
            ModelRef(name=bad)
    assert ModelRef(name="timm:vit_tiny_patch16_224").slug() == "timm-vit_tiny_patch16_224"
    assert ModelRef(name="file:/x/my.net.pt", sha256="0" * 64).slug() == "file-my-net"
    # a model built from code serializes as before file: models existed (registered track hashes hold)
    assert "sha256" not in ModelRef(name="resnet18").model_dump()
    assert registry().get("digits-resnet18").hash().startswith("ed07862e4805")  # the committed digits records' track


# --------------------------------------------------------------------------- bad references: one line


@pytest.mark.parametrize("name, kwargs, message", [
    ("resnet19", {}, "unknown model 'resnet19'; did you mean 'resnet18'"),
    ("torchvision:mobilenetv2", {}, "unknown torchvision model 'mobilenetv2'; did you mean 'mobilenet_v2'"),
    ("timm:deit_tiny_patch16", {}, "unknown timm model 'deit_tiny_patch16'; did you mean 'deit_tiny_patch16_224'"),
    ("timm:resnet18", {"pretrained": True}, "kwargs 'pretrained' would load pretrained weights"),
    ("torchvision:resnet18", {"weights": "IMAGENET1K_V1"}, "kwargs 'weights' would load pretrained weights"),
    ("no_such_module:build", {}, "cannot import module 'no_such_module'"),
    ("zoo_factories:resnext_tiy", {}, "unknown function in zoo_factories 'resnext_tiy'; did you mean 'resnext_tiny'"),
    ("torchvision:resnet18", {"no_such": 1}, "model factory torchvision:resnet18 raised TypeError"),
    ("file:/no/such/net.pt", {}, "model file not found: /no/such/net.pt"),
])
def test_bad_references_are_one_line(name, kwargs, message):
    from harness.registry import UnknownName

    with pytest.raises((HarnessError, UnknownName)) as e:
        create_model(name, num_classes=10, image_size=32, sha256="0" * 64 if name.startswith("file:") else None,
                     **kwargs)
    assert message in one_line(e)


def test_a_factory_that_raises_or_returns_no_module(tmp_path, monkeypatch):
    (tmp_path / "bad_factory.py").write_text(
        "def build(num_classes, in_chans, image_size):\n    return 42\n\n"
        "def boom(num_classes, in_chans, image_size, width=1):\n    raise ValueError(f'width {width} is\\n too big')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(HarnessError) as e:
        create_model("bad_factory:build", num_classes=10)
    assert one_line(e) == "model factory bad_factory:build returned a int, not an nn.Module"
    with pytest.raises(HarnessError) as e:
        create_model("bad_factory:boom", num_classes=10, width=9)
    assert one_line(e) == "model factory bad_factory:boom raised ValueError: width 9 is too big"


# --------------------------------------------------------------------------- derived tracks


def test_registered_pairs_resolve_to_their_track():
    track, note = resolve_track(None, "resnet18", "digits")
    assert track.id == "digits-resnet18" and note is None
    assert resolve_track("digits-resnet18", None, None) == (registry().get("digits-resnet18"), None)
    with pytest.raises(HarnessError, match="is on digits, not cifar10"):
        resolve_track("digits-resnet18", None, "cifar10")


def test_a_model_without_a_track_derives_one_from_the_datasets_default():
    base = default_track("digits")
    track, note = resolve_track(None, "timm:test_resnet", "digits")
    assert base.id == "digits-resnet18" and track.id == "digits-timm-test_resnet"
    assert track.model == ModelRef(name="timm:test_resnet")
    # everything but the model (and the id/description) is the default track's
    same = {"id", "description", "model", "checkpoint"}
    assert track.model_dump(exclude=same) == base.model_dump(exclude=same)
    assert track.checkpoint == base.checkpoint.model_copy(update={"sha256": None})
    assert track.hash() != base.hash() and TrackConfig.model_validate(track.model_dump()).hash() == track.hash()
    assert note == (f"no registered track for timm:test_resnet on digits: derived track digits-timm-test_resnet "
                    f"from digits-resnet18 with the model replaced (trained once with the track's pretrain "
                    f"recipe, then reused); input size 8px (the dataset's own); track hash {track.hash()[:12]}")
    # digits-resnet18 pins its base's digest; that pin is resnet18's, never the derived model's
    assert base.checkpoint.sha256 and track.checkpoint.sha256 is None
    # a track file plus another model: derived from that track
    derived, note = resolve_track("cifar100-vgg19", "torchvision:mobilenet_v2", None)
    assert derived.id == "cifar100-torchvision-mobilenet_v2" and "from cifar100-vgg19" in note


def test_derivation_refuses_a_published_checkpoint_and_bad_names():
    with pytest.raises(HarnessError) as e:
        resolve_track(None, "timm:test_resnet", "imagenet")
    assert "starts from a published resnet18 checkpoint, which timm:test_resnet cannot load" in one_line(e)
    with pytest.raises(HarnessError) as e:
        resolve_track(None, "timm:test_resnt", "digits")
    assert "did you mean 'test_resnet'" in one_line(e)
    with pytest.raises(HarnessError) as e:
        resolve_track(None, "Not A Model", "digits")
    assert one_line(e).startswith("model 'Not A Model': name:")
    with pytest.raises(Exception, match="unknown dataset 'digit'"):
        resolve_track(None, "timm:test_resnet", "digit")


def test_a_model_file_is_its_own_base_and_gets_its_digest_pinned(tmp_path):
    path = tmp_path / "mine.pt"
    torch.save(create_model("resnet18", num_classes=10, in_chans=1, image_size=8, width=0.125), path)
    track, note = resolve_track(None, f"file:{path}", "digits")
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    assert track.id == "digits-file-mine" and track.model.sha256 == digest
    assert track.checkpoint.pretrain.epochs == 0  # the file's own weights are the base: nothing trains
    assert f"pinned the file's sha256 {digest[:12]}" in note and "its own weights are the base" in note
    # even on a dataset whose default track has a published checkpoint
    assert resolve_track(None, f"file:{path}", "imagenet")[0].checkpoint.path is None


# --------------------------------------------------------------------------- applicability up front


def test_inapplicable_methods_are_named_before_anything_runs(tiny_track):
    from harness.methods import find_method

    sources = [find_method(m) for m in ("bn_scale", "hrank", "magnitude_l2")]
    assert inapplicable(tiny_track, sources) == {}
    track, _ = derive_track(tiny_track, "timm:test_vit")
    track = track.model_copy(update={"dataset": track.dataset.model_copy(update={"image_size": 32})})
    refused = inapplicable(track, sources)
    assert sorted(refused) == ["bn_scale", "hrank"]
    assert refused["bn_scale"].startswith("bn_scale cannot score VisionTransformer meaningfully: it needs batchnorm")
    assert "hrank cannot score VisionTransformer" in refused["hrank"] and "Linear output" in refused["hrank"]


def test_the_plan_leaves_out_methods_that_cannot_score_the_model(tiny_track, tmp_path):
    from harness.plan import Plan, PlanError

    track = tmp_path / "digits32.yaml"  # ViTs need 32 px (two 16 px patches a side)
    data = tiny_track.model_dump(mode="json")
    data["dataset"]["image_size"] = 32
    track.write_text(json.dumps(data))
    resolved = Plan.build(track=str(track), model="timm:test_vit", methods=["hrank", "lamp"],
                          regularizers=["-", "bn_scale_l1"], speedups=[2], seeds=[0]).resolve()
    assert [m.id for m in resolved.methods] == ["lamp"]
    assert {(s.method.id, s.regularizer) for s in resolved.specs} == {("lamp", None)}
    derived, skipped_hrank, skipped_l1 = resolved.notes
    assert derived.startswith("no registered track for timm:test_vit on digits: derived track digits-timm-test_vit")
    assert skipped_hrank.startswith("skipped: hrank cannot score VisionTransformer meaningfully")
    assert skipped_l1.startswith("skipped: bn_scale_l1 cannot score VisionTransformer meaningfully: it needs batchnorm")
    with pytest.raises(PlanError) as e:
        Plan.build(track=str(track), model="timm:test_vit", methods=["bn_scale"]).resolve()
    assert e.value.field == "methods" and one_line(e).startswith("bn_scale cannot score VisionTransformer")
    # the registered ResNet has what they need: nothing is left out
    assert not Plan.build(track=str(track), methods=["hrank", "bn_scale"]).resolve().notes


# --------------------------------------------------------------------------- untraceable models


class Broken(nn.Module):
    """A model whose ``head.proj`` cannot run on the example input (a shape error mid-forward)."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU())
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(8 * 6 * 6, 16))
        self.head.add_module("proj", nn.Linear(15, 10))

    def forward(self, x):
        return self.head(self.stem(x))


def test_a_forward_that_fails_names_the_layer():
    model = Broken().eval()
    with pytest.raises(Untraceable) as e:
        describe_groups(model, torch.rand(1, 3, 8, 8), PruneConfig(ignored_layers=[model.head.proj]))
    assert one_line(e).startswith("Torch-Pruning cannot trace Broken at layer 'head.proj' (Linear): RuntimeError:")


def test_a_graph_torch_pruning_cannot_map_names_the_layer():
    """torchvision's ShuffleNetV2 without its prune adapter (harness.models.shufflenet): channel shuffle
    (reshape/transpose) is beyond Torch-Pruning 1.6.1."""
    model = create_model("torchvision:shufflenet_v2_x0_5", num_classes=10, image_size=32).eval()
    config = PruneConfig(ignored_layers=[classifier_of(model)])
    with pytest.raises(Untraceable) as e:
        describe_groups(model, torch.rand(1, 3, 32, 32), config)
    assert one_line(e).startswith("Torch-Pruning cannot trace ShuffleNetV2 in a ReshapeOp after layer 'stage")
    assert "ZeroDivisionError" in str(e.value)


# --------------------------------------------------------------------------- the CLI, end to end


@pytest.mark.slow
def test_evaluate_a_timm_model_on_a_derived_track(tiny_track_file, tmp_path):
    from harness.cli import app

    res = CliRunner().invoke(app, ["evaluate", "--method", "magnitude_l2", "--track", str(tiny_track_file),
                                   "--model", "timm:test_resnet", "--speedup", "2", "--runner", "inprocess",
                                   "--out", str(tmp_path / "results"), "--no-models"])
    assert res.exit_code == 0, res.output
    assert "derived track digits-timm-test_resnet from tiny-digits" in res.output
    (run,) = (tmp_path / "results" / "digits-timm-test_resnet").iterdir()
    record = json.loads((run / "result.json").read_text())
    derived, _ = resolve_track(str(tiny_track_file), "timm:test_resnet", None)
    assert record["status"] == "ok" and record["model"] == "timm:test_resnet"
    assert record["track"] == {"id": "digits-timm-test_resnet", "hash": derived.hash()}
    assert record["speedup"]["achieved"] >= 2


def test_cli_bad_model_is_exit_2_in_one_line(tmp_path):
    from harness.cli import app

    res = CliRunner().invoke(app, ["evaluate", "--method", "magnitude_l2", "--model", "timm:test_resnt",
                                   "--dataset", "digits", "--speedup", "2", "--out", str(tmp_path)])
    assert res.exit_code == 2 and "did you mean 'test_resnet'" in res.output
    assert "Traceback" not in res.output and not any(tmp_path.iterdir())


# --------------------------------------------------------------------------- bring your own model, for real


def test_a_derived_track_picks_an_input_size_the_model_accepts():
    """SqueezeNet's and GoogLeNet's pooling stacks do not fit 8x8 digits: the derived track probes larger
    sides and says which it took; ResNet-style models keep the native size."""
    track, note = resolve_track(None, "torchvision:squeezenet1_1", "digits")
    assert track.dataset.image_size == 32  # 8 and 16 px: "Output size is too small"
    assert "input size 32px (the smallest probed size that works; 8px failed: RuntimeError:" in note
    assert "Output size is too small" in note and "set dataset.image_size" in note
    assert resolve_track(None, "timm:test_resnet", "digits")[0].dataset.image_size is None


def test_a_model_that_fits_no_size_is_refused_before_training(tmp_path, monkeypatch):
    (tmp_path / "fixed_input.py").write_text(
        "from torch import nn\n"
        "def build(num_classes, in_chans, image_size):\n"
        "    return nn.Sequential(nn.Conv2d(in_chans, 4, 3), nn.Flatten(), nn.Linear(4 * 1000 * 1000, num_classes))\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(HarnessError) as e:
        resolve_track(None, "fixed_input:build", "digits")
    text = one_line(e)
    assert text.startswith("fixed_input:build does not run on digits at 8px, 16px, 32px") and "224px" in text
    assert text.endswith("set dataset.image_size in a track file (--track FILE) to a size the model accepts")


def test_one_adapter_turns_every_output_into_logits():
    from collections import namedtuple

    from harness.models import logits_of
    from transformers.modeling_outputs import ImageClassifierOutput

    x = torch.randn(2, 3)
    assert logits_of(x) is x
    assert logits_of(namedtuple("Out", "logits aux")(x, x + 1)) is x
    assert logits_of((x, None)) is x and logits_of({"aux": x + 1, "logits": x}) is x
    assert logits_of(ImageClassifierOutput(logits=x)) is x
    googlenet = create_model("torchvision:googlenet", num_classes=10, image_size=32, aux_logits=True,
                             init_weights=False).train()
    out = googlenet(torch.rand(2, 3, 64, 64))
    assert type(out).__name__ == "GoogLeNetOutputs" and logits_of(out) is out.logits
    with pytest.raises(HarnessError) as e:
        logits_of("not a tensor")
    assert one_line(e).startswith("the model returned a str, which holds no logits")


@pytest.mark.slow
def test_a_namedtuple_model_trains_prunes_and_scores(tiny_track_file, tmp_path, monkeypatch):
    import os

    from harness.cli import app

    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(FIXTURES), os.environ.get("PYTHONPATH", "")]))  # pretraining

    res = CliRunner().invoke(app, ["evaluate", "--method", "magnitude_l2", "--track", str(tiny_track_file),
                                   "--model", "zoo_factories:namedtuple_tiny", "--speedup", "2", "--runner",
                                   "inprocess", "--out", str(tmp_path / "results"), "--no-models"])
    assert res.exit_code == 0, res.output
    (run,) = (tmp_path / "results" / "digits-zoo_factories-namedtuple_tiny").iterdir()
    record = json.loads((run / "result.json").read_text())
    assert record["status"] == "ok" and record["speedup"]["achieved"] >= 2
    assert record["metric"]["base"] > 50 and record["metric"]["final"] > 10  # it learned


def test_a_versioned_state_dict_survives_the_checkpoint_round_trip(tmp_path):
    """MNASNet refuses a state dict without its version; the cached checkpoint keeps it. A model of torch.nn
    layers and unversioned blocks is still saved as a plain dict (the digests of existing bases hold)."""
    from harness.protocol.checkpoints import load_state, state_of, write_state

    net = create_model("torchvision:mnasnet0_5", num_classes=10, in_chans=1, image_size=8).eval()
    path = tmp_path / "base.pt"
    write_state(net, path)
    stripped = {k: v for k, v in torch.load(path, weights_only=True).items()}  # what was saved before
    with pytest.raises(ValueError, match="version should be set to 1 or 2 instead of None"):
        create_model("torchvision:mnasnet0_5", num_classes=10, in_chans=1, image_size=8).load_state_dict(stripped)
    again = create_model("torchvision:mnasnet0_5", num_classes=10, in_chans=1, image_size=8).eval()
    load_state(again, path)
    x = torch.rand(2, 1, 8, 8)
    assert torch.equal(again(x), net(x))
    resnet = create_model("resnet18", num_classes=10, width=0.125)
    assert type(state_of(resnet)) is dict and not hasattr(state_of(resnet), "_metadata")


@pytest.mark.slow
def test_a_base_at_chance_is_a_failed_base(tiny_track_file, tmp_path):
    """No training (pretrain epochs 0): the base sits at chance, which is one line and no record - also for a
    published base read from a file."""
    from harness.cli import app
    from harness.protocol.checkpoints import write_state

    track = tmp_path / "untrained.yaml"
    track.write_text(tiny_track_file.read_text().replace("id: tiny-digits", "id: untrained-digits").replace(
        "pretrain: {epochs: 4,", "pretrain: {epochs: 0,"))
    args = ["evaluate", "--method", "magnitude_l2", "--speedup", "2", "--runner", "inprocess", "--no-models",
            "--out", str(tmp_path / "results")]
    res = CliRunner().invoke(app, [*args, "--track", str(track)])
    assert res.exit_code != 0 and "Traceback" not in res.output
    line = res.output.strip()
    assert "\n" not in line and "failed base:" in line and "does not beat chance (10.00)" in line
    assert "checkpoint.chance_margin (5 points)" in line
    assert not list((tmp_path / "results").rglob("result.json"))
    # the same check on a published base: an untrained model's weights in a file
    weights = tmp_path / "published.pt"
    model = create_model("resnet18", num_classes=10, in_chans=1, image_size=8, width=0.25)
    write_state(model, weights)
    digest = hashlib.sha256(weights.read_bytes()).hexdigest()
    published = tmp_path / "published.yaml"
    published.write_text(tiny_track_file.read_text().replace("id: tiny-digits", "id: published-digits").replace(
        "  pretrain: {epochs: 4, batch_size: 64, lr: 0.05, schedule: cosine}",
        f"  path: {weights}\n  sha256: {digest}"))
    res = CliRunner().invoke(app, [*args, "--track", str(published)])
    assert res.exit_code != 0 and "failed base: published.pt of track published-digits" in res.output
    assert not list((tmp_path / "results").rglob("result.json"))


def test_the_chance_margin_is_a_track_setting_that_keeps_hashes():
    from specs.track import CHANCE_MARGIN, Checkpoint

    track = registry().get("digits-resnet18")
    assert track.checkpoint.chance_margin == CHANCE_MARGIN == 5.0
    assert "chance_margin" not in track.checkpoint.model_dump()  # at its default: hashes as before
    stricter = track.model_copy(update={"checkpoint": track.checkpoint.model_copy(update={"chance_margin": 20.0})})
    assert stricter.hash() != track.hash()
    with pytest.raises(ValidationError):
        Checkpoint(pretrain=track.retrain, chance_margin=-1)


def test_mis_described_group_members_are_refused_before_any_method_call(tiny_track, tmp_path, monkeypatch,
                                                                        make_method):
    """A synthetic mis-description (one member's indices beyond its tensor): check_groups names the layer in
    one line, and an evaluate stops there, before the method is ever asked for scores."""
    import harness.protocol.run as run
    from harness.protocol.grouping import Unprunable, check_groups
    from harness.protocol.run import RunSpec, evaluate

    model = create_model("resnet18", num_classes=10, in_chans=1, image_size=8, width=0.25).eval()
    config = prune_config_of(model).merged(PruneConfig(ignored_layers=[classifier_of(model)]))
    x = torch.rand(1, 1, 8, 8)
    groups = describe_groups(model, x, config)
    check_groups(model, x, config, groups)  # the real description passes

    def miswired(model, example, config, graph=None):
        groups = describe_groups(model, example, config, graph)
        g = groups[0]
        member = g.members[-1].model_copy(update={"idxs": [i + 10_000 for i in g.members[-1].idxs]})
        return [g.model_copy(update={"members": [*g.members[:-1], member]}), *groups[1:]]

    with pytest.raises(Unprunable) as e:
        check_groups(model, x, config, miswired(model, x, config))
    layer = groups[0].members[-1].layer
    assert one_line(e).startswith(f"cannot prune CifarResNet at layer {layer!r}: group {groups[0].id} prunes")
    marker = tmp_path / "called"
    method = make_method(f"""
        from specs.sdk import ImportanceMethod
        class Method(ImportanceMethod):
            def score(self, groups, observations):
                open({str(marker)!r}, "w").close()
                raise RuntimeError("must not be called")
    """)
    monkeypatch.setattr(run, "describe_groups", miswired)
    monkeypatch.setattr(run, "_GROUPS_CHECKED", set())  # (an earlier run of this track in the process checked it)
    with pytest.raises(Unprunable) as e:
        evaluate(RunSpec(track=tiny_track, method=method, speedup=2, seed=0, runner="inprocess", out=tmp_path / "r"))
    assert "cannot prune CifarResNet at layer" in one_line(e)
    assert not marker.exists() and not list((tmp_path / "r").rglob("result.json"))


def test_an_hf_vit_prunes_heads_and_stays_consistent():
    """transformers' ViT from a config (nothing downloaded): the adapter splits q/k/v into head slices, so
    every head of q, k and v keeps one head dim, and the pruned model runs with its updated head_dim."""
    from harness.protocol.grouping import apply_plan, floor_plan
    from transformers import ViTForImageClassification

    model = create_model("hf:vit", num_classes=10, in_chans=1, image_size=8, hidden_size=32, num_hidden_layers=2,
                         num_attention_heads=4, intermediate_size=64, patch_size=4).eval()
    assert isinstance(model, ViTForImageClassification) and model.config.num_labels == 10
    config = prune_config_of(model).merged(PruneConfig(ignored_layers=[classifier_of(model)]))
    x = torch.rand(1, 1, 8, 8)
    groups = describe_groups(model, x, config)
    attention = [g for g in groups if g.root.endswith("v_proj")]
    assert len(attention) == 2 and all(g.ch_groups == 4 for g in attention)
    members = {m.layer.rpartition(".")[2] for m in attention[0].members}
    assert {"q_proj", "k_proj", "v_proj", "o_proj"} <= members
    plan = {g.id: idxs for g, idxs in zip(attention, floor_plan(attention, 0.5).values())}  # half of each head
    apply_plan(model, x, config, plan)
    for layer in model.vit.layers:
        a = layer.attention
        assert a.q_proj.out_features == a.k_proj.out_features == a.v_proj.out_features == a.o_proj.in_features == 16
        assert a.head_dim == 4 and a.num_attention_heads == 4 and a.scaling == 4 ** -0.5
    assert model(torch.rand(3, 1, 8, 8)).logits.shape == (3, 10)


@pytest.mark.parametrize("model_type, kwargs", [
    ("vit", dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=4, intermediate_size=64, patch_size=4)),
    ("swin", dict(embed_dim=16, depths=[2], num_heads=[2], window_size=2, patch_size=2)),
    ("convnext", dict(hidden_sizes=[8, 16], depths=[1, 1], num_stages=2)),
    ("resnet", dict(embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], layer_type="basic")),
])
def test_hf_models_derive_a_track_offline(tiny_track, model_type, kwargs):
    track, note = derive_track(tiny_track, f"hf:{model_type}", kwargs=kwargs)
    assert track.id == f"digits-hf-{model_type}" and "input size 8px" in note


def test_an_unknown_hf_model_type_is_one_line():
    with pytest.raises(HarnessError) as e:
        create_model("hf:vitt", num_classes=10)
    assert one_line(e).startswith("unknown transformers image classifier 'vitt'; did you mean 'vit'")


def _pinned(tiny_track_file, tmp_path) -> Path:
    """A default track that pins its own (resnet18) base, as digits-resnet18 does."""
    pinned = tmp_path / "pinned.yaml"
    pinned.write_text(tiny_track_file.read_text().replace("id: tiny-digits", "id: pinned-digits").replace(
        "schedule: cosine}\npruning", f"schedule: cosine}}\n  sha256: {'ab' * 32}\npruning"))
    return pinned


@pytest.mark.slow
def test_a_derived_base_is_trained_once_and_reused(tiny_track_file, tmp_path):
    """The derived track of a pinned track (a narrow MobileNetV2): two runs on one cache, both ok, one digest."""
    from harness.methods import find_method
    from harness.protocol.run import RunSpec, evaluate
    from harness.tracks import load_track

    track, _ = derive_track(load_track(str(_pinned(tiny_track_file, tmp_path))), "torchvision:mobilenet_v2",
                            kwargs={"width_mult": 0.25, "inverted_residual_setting": [  # the zoo's narrow, short one
                                [1, 16, 1, 1], [6, 24, 2, 2], [6, 32, 1, 2], [6, 64, 1, 2], [6, 96, 1, 1]]})
    assert track.checkpoint.sha256 is None
    records = [evaluate(RunSpec(track=track, method=find_method("magnitude_l2"), speedup=2, seed=0, runner="inprocess",
                                out=tmp_path / f"r{i}", cache_dir=tmp_path / "cache", save_models=False,
                                measure_latency=False))[0] for i in (1, 2)]
    assert [r.status for r in records] == ["ok", "ok"], [r.error for r in records]
    assert records[0].provenance.checkpoint_sha256 == records[1].provenance.checkpoint_sha256 != "ab" * 32


@pytest.mark.slow
@pytest.mark.skipif(os.environ.get("PBENCH_ZOO_FULL") != "1", reason="full-width MobileNetV2 (~8 min on a shared "
                                                                      "2-core machine): PBENCH_ZOO_FULL=1 runs it")
def test_the_readme_example_passes_twice_on_one_cache(tiny_track_file, tmp_path):
    """The README's command on a pinned track: the first run trains the derived base, the second reuses it;
    both ok, same base digest, which `pretrain` then prints as the line that pins it."""
    from harness.cli import app

    pinned = _pinned(tiny_track_file, tmp_path)
    assert load_pin(pinned) == "ab" * 32
    cache = tmp_path / "cache"
    digests = []
    for run in (1, 2):
        out = tmp_path / f"results{run}"
        res = CliRunner().invoke(app, ["evaluate", "--method", "magnitude_l2", "--track", str(pinned), "--model",
                                       "torchvision:mobilenet_v2", "--speedup", "2", "--runner", "inprocess",
                                       "--cache-dir", str(cache), "--out", str(out), "--no-models"])
        assert res.exit_code == 0, res.output
        (record,) = [json.loads(p.read_text()) for p in out.rglob("result.json")]
        assert record["status"] == "ok", record.get("error")
        digests.append(record["provenance"]["checkpoint_sha256"])
    assert digests[0] == digests[1] and digests[0] != "ab" * 32
    res = CliRunner().invoke(app, ["pretrain", str(pinned), "--model", "torchvision:mobilenet_v2", "--cache-dir",
                                   str(cache)])
    assert res.exit_code == 0, res.output
    assert f"under checkpoint:\n  sha256: {digests[0]}" in res.output


def load_pin(path: Path):
    from harness.tracks import load_track
    return load_track(str(path)).checkpoint.sha256
