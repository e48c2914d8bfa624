"""Regularizer methods and the sparsify stage.

- every regularizer's gradients equal a hand computation on a tiny model, through the real
  harness path (link + apply) with the inprocess and subprocess runners, and through the
  spec-1.0 conversation (dense gradients expanded by the SDK);
- they equal Torch-Pruning's ``regularize()`` where Torch-Pruning is right; growing_reg's
  BatchNorm term is non-zero where Torch-Pruning's is a no-op;
- ``evaluate --regularizer`` end to end; hostile regularizers; bad input; sweep pairing;
- the spec-1.1 exchange stays readable by 1.0 peers and reuses its files.
"""

from __future__ import annotations

import copy
import json
import re
import textwrap

import pytest
import torch
import torch.nn as nn
import torch_pruning as tp
from typer.testing import CliRunner

from harness.cli import app
from harness.protocol.grouping import PruneConfig, describe_groups
from harness.methods import find_method, providing
from harness.models import classifier_of, create_model
from harness.protocol.observations import param_keys
from harness.store import read_record, run_key
from harness.store import find_records
from harness.runners import client_class
from harness.protocol.sparsify import make_grad_hook
from harness.runners.base import LegacyLink
from harness.runners.inprocess import InProcessLink
from harness.runners.socket_client import SocketLink
from specs.messages import RegularizeReply, RegularizeRequest, TensorFile
from specs.sdk import channel_sq_norms, member_rows

REGULARIZERS = [m.id for m in providing("regularizer")]  # every discovered one needs an entry in HP and hand()
#: non-default strengths so that every term is far above float noise
HP = {
    "group_lasso": {"reg": 1e-2},
    "group_norm": {"reg": 1e-2},
    "growing_reg": {"reg": 1e-3, "delta_reg": 1e-2, "update_interval": 2},
    "bn_scale_l1": {"reg": 1e-2},
}
GROWTH_UPDATES = 3  # growing_reg: steps 0 .. 3 * update_interval

cli = CliRunner()


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny models on a shared 2-core machine: one intra-op thread avoids OpenMP barrier stalls
    (10x slowdowns when other processes hold the cores); restored for the other test modules."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def invoke(*args):
    result = cli.invoke(app, [str(a) for a in args])
    assert "Traceback" not in result.output, result.output
    return result


# --------------------------------------------------------------------------- a tiny model, by hand


class Tiny(nn.Module):
    """conv1 -> bn1 -> conv2 -> bn2 -> pool -> fc: groups conv1 {conv1 out, bn1, conv2 in} and
    conv2 {conv2 out, bn2, fc in} (fc is the ignored classifier)."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(4)
        self.conv2 = nn.Conv2d(4, 5, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(5)
        self.fc = nn.Linear(5, 3)

    def forward(self, x):
        x = torch.relu(self.bn1(self.conv1(x)))
        x = torch.relu(self.bn2(self.conv2(x)))
        return self.fc(x.mean((2, 3)))


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    model = Tiny()
    with torch.no_grad():
        model.bn1.weight.copy_(torch.tensor([0.5, -1.0, 2.0, 0.1]))
        model.bn2.weight.copy_(torch.tensor([1.0, 0.3, -0.7, 1.5, 0.05]))
    groups = describe_groups(model, torch.randn(1, 3, 6, 6), PruneConfig(ignored_layers=[model.fc]))
    assert sorted(g.id for g in groups) == ["conv1", "conv2"]
    return model, groups


def slices(model):
    """Per group, the weight slices coupled to each channel: (tensor, dim) pairs."""
    return {"conv1": [(model.conv1.weight, 0), (model.bn1.weight, 0), (model.conv2.weight, 1)],
            "conv2": [(model.conv2.weight, 0), (model.bn2.weight, 0), (model.fc.weight, 1)]}


def hand(reg_id: str, model: nn.Module) -> dict[str, torch.Tensor]:
    """The expected gradients, channel by channel, straight from each method's definition."""
    hp = HP[reg_id]
    params = dict(model.named_parameters())
    name = {id(p): k for k, p in params.items()}
    out = {k: torch.zeros_like(p) for k, p in params.items()}
    if reg_id == "bn_scale_l1":
        for k in ("bn1.weight", "bn2.weight"):
            out[k] = hp["reg"] * torch.sign(params[k].detach())
        return out
    for members in slices(model).values():
        n = members[0][0].shape[0]
        theta = [torch.cat([w.detach().select(d, c).flatten() for w, d in members]) for c in range(n)]
        norm = torch.stack([t.norm() for t in theta])  # ||theta_c||: everything coupled to channel c
        if reg_id == "group_lasso":
            coef = hp["reg"] / (norm ** 2 + 1e-9).sqrt()
        elif reg_id == "group_norm":  # gamma from 1 (strongest) to 2^4 (weakest)
            coef = hp["reg"] * 16.0 ** ((norm.max() - norm) / (norm.max() - norm.min()))
        elif reg_id == "growing_reg":  # after GROWTH_UPDATES updates with these (constant) weights
            s = norm ** 2 / len(members)
            s = s / s.mean()
            coef = hp["reg"] + GROWTH_UPDATES * hp["delta_reg"] * (s.max() - s) / (s.max() - s.min() + 1e-8)
        else:
            raise KeyError(f"no hand computation for regularizer {reg_id!r}")
        for w, d in members:
            for c in range(n):
                out[name[id(w)]].select(d, c).add_(coef[c] * w.detach().select(d, c))
    return out


def harness_grads(link, model, groups, steps) -> dict[str, torch.Tensor]:
    """What the harness adds to zero gradients at the last of ``steps`` (weights unchanged)."""
    hook = make_grad_hook(model, groups, link)
    for step in steps:
        for p in model.parameters():
            p.grad = torch.zeros_like(p)
        hook(step, 100)
    return {k: p.grad.clone() for k, p in model.named_parameters()}


def last_step(reg_id):
    return GROWTH_UPDATES * HP[reg_id]["update_interval"] if reg_id == "growing_reg" else 0


@pytest.mark.parametrize("reg_id", REGULARIZERS)
def test_every_regularizer_has_a_hand_entry(reg_id, tiny):
    assert reg_id in HP, f"{reg_id}: add its strengths to HP and its definition to hand() in {__name__}.py"
    hand(reg_id, copy.deepcopy(tiny[0]))


@pytest.mark.parametrize("runner", ["inprocess", "subprocess"])
@pytest.mark.parametrize("reg_id", REGULARIZERS)
def test_gradients_equal_a_hand_computation(reg_id, runner, tiny):
    model, groups = copy.deepcopy(tiny[0]), tiny[1]
    expected = hand(reg_id, model)
    with client_class(runner)(find_method(reg_id), HP[reg_id], seed=0) as client:
        link = client.regularizer_link(groups)
        assert isinstance(link, InProcessLink if runner == "inprocess" else SocketLink)
        try:
            got = harness_grads(link, model, groups, range(last_step(reg_id) + 1))
            if runner == "subprocess":  # files are reused, nothing piles up in the exchange directory
                assert sorted(p.name for p in client.exchange.iterdir()) == ["pbench.sock", "reg-weights.safetensors"]
        finally:
            link.close()
        if runner == "subprocess" and reg_id != "growing_reg":
            # the spec-1.0 conversation (groups and dense gradients every step) gives the same answer
            weights = {k: p.detach().clone() for k, p in model.named_parameters() if k in param_keys(groups)}
            dense = LegacyLink(client, groups)(0, 100, weights).dense
            for k, g in dense.items():
                torch.testing.assert_close(g, expected[k], rtol=1e-5, atol=1e-9, msg=f"{reg_id} 1.0 {k}")
    for k, g in expected.items():
        torch.testing.assert_close(got[k], g, rtol=1e-5, atol=1e-9, msg=f"{reg_id} {k}")
    assert any(g.abs().sum() > 0 for g in got.values())


# --------------------------------------------------------------------------- against Torch-Pruning

TP_MODELS = [("resnet18", 0.25, 8), ("vgg19", 0.125, 16)]


def tp_setup(name, width, size):
    torch.manual_seed(0)
    model = create_model(name, num_classes=10, in_chans=3, image_size=size, width=width).eval()
    with torch.no_grad():  # non-trivial BN scales, some negative (sign matters for L1)
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.uniform_(-1.0, 2.0)
    example = torch.randn(1, 3, size, size)
    groups = describe_groups(model, example, PruneConfig(ignored_layers=[classifier_of(model)]))
    return model, example, groups


def tp_grads(model, example, pruner_cls, regularize, **kwargs) -> dict[str, torch.Tensor]:
    """Gradients Torch-Pruning adds to zero gradients. Fresh dicts for its mutable defaults."""
    model = copy.deepcopy(model)
    pruner = pruner_cls(model, example, importance=tp.importance.GroupMagnitudeImportance(p=2),
                        ignored_layers=[classifier_of(model)], in_channel_groups={}, out_channel_groups={},
                        num_heads={}, channel_groups={}, **kwargs)
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    regularize(pruner, model)
    return {k: p.grad for k, p in model.named_parameters()}


def ours(reg_id, model, groups, hp, steps=(0,)):
    with client_class("inprocess")(find_method(reg_id), hp, seed=0) as client:
        return harness_grads(client.regularizer_link(groups), copy.deepcopy(model), groups, steps)


@pytest.mark.parametrize("name, width, size", TP_MODELS)
def test_equal_torch_pruning(name, width, size):
    model, example, groups = tp_setup(name, width, size)
    cases = {
        # keyword arguments only: a positional second argument would become the strength
        "group_norm": (ours("group_norm", model, groups, {"reg": 1e-3}),
                       tp_grads(model, example, tp.pruner.GroupNormPruner,
                                lambda p, m: p.regularize(m, alpha=2 ** 4, bias=False), reg=1e-3)),
        "bn_scale_l1": (ours("bn_scale_l1", model, groups, {"reg": 1e-3}),
                        tp_grads(model, example, tp.pruner.BNScalePruner, lambda p, m: p.regularize(m, reg=1e-3))),
        "group_lasso(bn, mean)": (ours("group_lasso", model, groups,
                                       {"reg": 1e-3, "members": "bn", "reduction": "mean"}),
                                  tp_grads(model, example, tp.pruner.BNScalePruner,
                                           lambda p, m: p.regularize(m, reg=1e-3), group_lasso=True)),
    }
    for what, (got, ref) in cases.items():
        assert set(got) == set(ref)
        for k in ref:
            torch.testing.assert_close(got[k], ref[k], rtol=1e-4, atol=1e-9, msg=f"{name} {what} {k}")
        assert sum(int(g.abs().sum() > 0) for g in ref.values()) > 0


@pytest.mark.parametrize("name, width, size", TP_MODELS)
def test_growing_reg_regularizes_batchnorm_where_torch_pruning_does_not(name, width, size):
    model, example, groups = tp_setup(name, width, size)
    hp = {"reg": 1e-4, "delta_reg": 1e-3, "update_interval": 5}

    def grow_then_regularize(pruner, m):
        for _ in range(GROWTH_UPDATES):
            pruner.update_reg()
        pruner.regularize(m, bias=False)

    ref = tp_grads(model, example, tp.pruner.GrowingRegPruner, grow_then_regularize,
                   reg=hp["reg"], delta_reg=hp["delta_reg"])
    got = ours("growing_reg", model, groups, hp, steps=range(0, GROWTH_UPDATES * 5 + 1, 5))
    modules = dict(model.named_modules())
    bn_scales = [f"{n}.weight" for n, m in modules.items() if isinstance(m, nn.BatchNorm2d)]
    classifier = f"{[n for n, m in modules.items() if m is classifier_of(model)][0]}.weight"
    assert bn_scales
    for k in ref:
        if k in bn_scales:
            # Torch-Pruning's `grad.data[idxs].add_(...)` adds to a copy: its BN term never lands
            assert ref[k].abs().sum() == 0, k
            assert (got[k].abs() > 0).float().mean() > 0.9, f"{k}: BN scales must be regularized"
            gamma = dict(model.named_parameters())[k].detach()
            assert (got[k] / gamma).min() >= hp["reg"] - 1e-9  # lambda_c * gamma, lambda_c >= reg
        elif k != classifier:  # Torch-Pruning skips the ignored classifier's inputs; we do not (README)
            torch.testing.assert_close(got[k], ref[k], rtol=1e-4, atol=1e-10, msg=f"{name} {k}")


def test_channel_norms_equal_member_rows():
    for name, width, size in TP_MODELS + [("resnet50", 0.0625, 16)]:
        model, _, groups = tp_setup(name, width, size)
        params = dict(model.named_parameters())
        for g in groups:
            for m in g.members:
                if m.weight:
                    w = params[m.weight].detach()
                    torch.testing.assert_close(channel_sq_norms(m, w), member_rows(m, w).pow(2).sum(1))


# --------------------------------------------------------------------------- end to end


def test_evaluate_with_regularizer_end_to_end(tiny_track_file, tiny_track, tmp_path):
    res = invoke("evaluate", "--method", "magnitude_l2", "--regularizer", "bn_scale_l1", "--reg-hp", "reg=0.2",
                 "--track", tiny_track_file, "--speedup", 2, "--seed", 0, "--out", tmp_path)
    assert res.exit_code == 0, res.output
    assert "magnitude_l2+bn_scale_l1 2x seed 0" in res.output and "sparsify" in res.output
    [path] = find_records(tmp_path)
    record = read_record(path)
    assert record.status == "ok"
    assert path.parent.name.startswith("magnitude_l2+bn_scale_l1-2x-protected_global-s0-")
    reg = record.regularizer
    assert (reg.id, reg.version, reg.runner, reg.hyperparameters) == ("bn_scale_l1", "1.0.0", "subprocess",
                                                                       {"reg": 0.2})
    assert record.timing.reg_s > 0 and record.timing.step_s > 0
    hp, version = record.method.hyperparameters, find_method("magnitude_l2").manifest.version
    base = record.provenance.checkpoint_sha256
    assert record.run_key == run_key(tiny_track.hash(), "magnitude_l2", version, None, "bn_scale_l1@1.0.0", 2.0,
                                     "protected_global", 0, hp, reg.hyperparameters, base_sha256=base)
    assert record.run_key != run_key(tiny_track.hash(), "magnitude_l2", version, None, None, 2.0,
                                     "protected_global", 0, hp, base_sha256=base)
    assert record.run_key != run_key(tiny_track.hash(), "magnitude_l2", version, None, "bn_scale_l1@1.0.0", 2.0,
                                     "protected_global", 0, hp, {"reg": 0.1}, base_sha256=base)  # hp are identity
    assert {"sparse.pt", "pruned.pt", "final.pt"} == set(record.files)

    # the same sparse training without the regularizer (same recipe, same seed)
    from harness.tasks import task_for
    task = task_for(tiny_track)
    control = copy.deepcopy(task.base_model().model)
    task.train(control, tiny_track.sparsify, seed=0)
    sparse = torch.load(path.parent / "sparse.pt", weights_only=False)

    def gammas(m):
        return torch.cat([x.weight.detach().abs() for x in m.modules() if isinstance(x, nn.BatchNorm2d)])

    assert gammas(sparse).mean() < 0.85 * gammas(control).mean(), (gammas(sparse).mean(), gammas(control).mean())


HOSTILE = {
    "wrong_shape_1_0": ("1.0", """
        class Method(RegularizerMethod):
            def regularize(self, step, total_steps, groups, weights):
                return {k: torch.zeros(3) for k in list(weights)[:1]}
        """, r"regularizer gradient '[^']+': expected shape \(.*\), got \(3,\)"),
    "nan": ("1.1", """
        class Method(RegularizerMethod):
            def regularize(self, step, total_steps, groups, weights):
                return {k: torch.full_like(w, float("nan")) for k, w in weights.items()}
        """, r"regularizer gradient '[^']+' has NaN or infinite values"),
    "unknown_key": ("1.1", """
        class Method(RegularizerMethod):
            def regularize(self, step, total_steps, groups, weights):
                return {"not.a.param": torch.zeros(2)}
        """, r"regularizer gradients for unknown parameter 'not.a.param'"),
    "wrong_scale_length": ("1.1", """
        class Method(RegularizerMethod):
            def regularize_compact(self, step, total_steps, groups, weights):
                k = next(k for k, w in weights.items() if w.dim() == 4)
                return {k + "@0": torch.ones(weights[k].shape[0] + 1)}
        """, r"regularizer scale '[^']+@0': expected shape \(\d+,\), got \(\d+,\)"),
    "crash": ("1.1", """
        import os
        class Method(RegularizerMethod):
            def regularize(self, step, total_steps, groups, weights):
                os._exit(3)
        """, r"method process ended \(exit code 3\) during 'regularize'"),
    "raises": ("1.1", """
        class Method(RegularizerMethod):
            def regularize(self, step, total_steps, groups, weights):
                raise ValueError("boom")
        """, r"method error during 'regularize': ValueError: boom"),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_regularizer_is_a_failed_record(case, make_method, tiny_track, tmp_path):
    from harness.protocol.run import RunSpec, evaluate
    version, body, pattern = HOSTILE[case]
    code = "import torch\nfrom specs.sdk import RegularizerMethod\n" + textwrap.dedent(body)
    source = make_method(code, provides=["regularizer"], observations=[], spec_version=version)
    record, run_dir = evaluate(RunSpec(track=tiny_track, method=find_method("magnitude_l2"), speedup=2, seed=0,
                                       out=tmp_path, regularizer=source))
    assert record.status == "failed"
    assert re.search(pattern, record.error), record.error
    assert "\n" not in record.error
    assert record.regularizer.id == "hostile" and record.metric.final is None
    assert [p.name for p in run_dir.iterdir()] == ["result.json"]
    assert sorted(p.name for p in run_dir.parent.iterdir()) == [run_dir.name]  # no staging left behind


def test_spec_1_0_regularizer_uses_the_1_0_conversation(make_method, tiny):
    model, groups = copy.deepcopy(tiny[0]), tiny[1]
    source = make_method("""
        import torch
        from specs.sdk import RegularizerMethod
        class Method(RegularizerMethod):
            def regularize(self, step, total_steps, groups, weights):
                assert groups, "a 1.0 method gets the groups every step"
                return {k: torch.full_like(w, 0.5) for k, w in weights.items() if k.startswith("bn")}
        """, provides=["regularizer"], observations=[])
    with client_class("subprocess")(source, {}, seed=0) as client:
        link = client.regularizer_link(groups)
        assert isinstance(link, LegacyLink)
        got = harness_grads(link, model, groups, range(3))
    assert got["bn1.weight"].eq(0.5).all() and got["conv1.weight"].eq(0).all()


# --------------------------------------------------------------------------- bad input, sweep, spec


@pytest.mark.parametrize("args, message", [
    (["--method", "magnitude_l2", "--regularizer", "magnitude_l1"], "method 'magnitude_l1' provides no regularizer"),
    (["--method", "magnitude_l2", "--regularizer", "group_nrom"], "unknown method 'group_nrom'"),
    (["--method", "magnitude_l2", "--regularizer", "group_norm", "--reg-hp", "alpha=99"],
     "hyperparameter 'alpha' 99.0 is above the maximum 16.0"),
    (["--method", "magnitude_l2", "--reg-hp", "reg=1"], "regularizer hyperparameters given without a regularizer"),
    (["--method", "group_norm"], "method 'group_norm' provides no importance scores"),
])
def test_bad_regularizer_input_is_exit_2(args, message, tiny_track_file, tmp_path):
    res = invoke("evaluate", *args, "--track", tiny_track_file, "--speedup", 2, "--out", tmp_path)
    assert res.exit_code == 2, res.output
    assert message in " ".join(res.output.split()), res.output
    assert list(tmp_path.iterdir()) == []


def test_sweep_pairs_every_method_with_every_regularizer(monkeypatch, tiny_track_file, tmp_path):
    import harness.orchestration.sweep as sweep_module
    from specs.result import MethodInfo, MetricInfo, Provenance, ResultRecord, Speedup, TrackInfo
    calls = []

    def fake_run(spec, progress=None):
        calls.append((spec.method.id, spec.regularizer.id if spec.regularizer else None))
        info = lambda m: MethodInfo(id=m.id, version=m.manifest.version, runner="subprocess")  # noqa: E731
        return ResultRecord(
            status="failed", error="not run", run_key="k", method=info(spec.method),
            regularizer=info(spec.regularizer) if spec.regularizer else None,
            track=TrackInfo(id=spec.track.id, hash=spec.track.hash()), model="m", dataset="d", seed=spec.seed,
            strategy="local", speedup=Speedup(target=spec.speedup), metric=MetricInfo(name="top1"),
            provenance=Provenance(harness_version="x", spec_version="1.1"), started_at="", finished_at=""), tmp_path

    monkeypatch.setattr(sweep_module, "evaluate", fake_run)
    res = invoke("sweep", "--methods", "magnitude_l1,magnitude_l2", "--regularizers", "-,bn_scale_l1",
                 "--track", tiny_track_file, "--speedups", 2, "--seeds", 0, "--out", tmp_path)
    assert res.exit_code == 1, res.output  # every (fake) run failed
    assert calls == [("magnitude_l1", None), ("magnitude_l1", "bn_scale_l1"),
                     ("magnitude_l2", None), ("magnitude_l2", "bn_scale_l1")]
    assert "magnitude_l2+bn_scale_l1 2x seed 0: FAILED" in res.output
    calls.clear()
    res = invoke("sweep", "--methods", "magnitude_l2", "--regularizers", "all", "--track", tiny_track_file,
                 "--speedups", 2, "--seeds", 0, "--out", tmp_path)
    assert sorted(r for _, r in calls) == sorted(REGULARIZERS)
    res = invoke("sweep", "--methods", "magnitude_l2", "--regularizers", "magnitude_l1", "--track",
                 tiny_track_file, "--out", tmp_path)
    assert res.exit_code == 2 and "provides no regularizer" in res.output


def test_spec_1_1_fields_stay_out_of_1_0_messages():
    """A 1.0 method (extra="forbid") must still accept what a 1.1 harness sends it by default."""
    ref = TensorFile(file="w.safetensors", keys=["a"])
    plain = RegularizeRequest(step=0, total_steps=2, groups=[], weights=ref, reply_file="r.safetensors")
    assert set(json.loads(plain.model_dump_json())) == {"spec_version", "type", "step", "total_steps", "groups",
                                                        "weights", "reply_file"}
    assert set(RegularizeReply(grads=ref).model_dump(mode="json")) == {"spec_version", "type", "grads"}
    compact = RegularizeRequest(step=1, total_steps=2, groups=[], weights=ref, reply_file="r.safetensors",
                                same_groups=True, scales_file="s.safetensors")
    assert RegularizeRequest.model_validate_json(compact.model_dump_json()) == compact
    with pytest.raises(ValueError, match="groups must be empty"):
        RegularizeRequest(step=1, total_steps=2, groups=describe_groups(Tiny(), torch.randn(1, 3, 6, 6),
                                                                        PruneConfig())[:1],
                          weights=ref, reply_file="r.safetensors", same_groups=True)
