"""Activation observations (inputs, outputs, output_gradients) equal a hand computation.

A tiny conv net (conv-BN-ReLU(inplace)-conv(stride 2)-BN-ReLU-pool-linear, random BN statistics)
is run by hand here: sampled input rows must be the ``F.unfold`` columns of the layer's real
input, output gradients must be autograd's on the same sampled labels, outputs must be the real
(pre-ReLU) maps; everything float32 CPU, deterministic for a seed, bounded by the track's budget.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from harness.errors import HarnessError
from harness.protocol.grouping import PruneConfig, describe_groups
from harness.protocol.observations import collect, label_generator, position_generator, sample_positions
from specs.track import Calibration

N, BATCH, SIDE = 12, 5, 6  # three batches (5, 5, 2): positions and labels are drawn batch by batch
CAL = Calibration(num_samples=N, batch_size=BATCH, positions_per_sample=4, activation_samples=N, output_samples=5)
KINDS = ["inputs", "outputs", "output_gradients"]


def tiny_model() -> nn.Sequential:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(2, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(inplace=True),
        nn.Conv2d(4, 6, 3, stride=2, padding=1), nn.BatchNorm2d(6), nn.ReLU(inplace=True),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, 5))
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.3, 0.3)
    return model.eval()


@pytest.fixture(scope="module")
def setup():
    model = tiny_model()
    g = torch.Generator().manual_seed(1)
    x = torch.randn(N, 2, SIDE, SIDE, generator=g)
    batches = [(x[i:i + BATCH], torch.zeros(len(x[i:i + BATCH]), dtype=torch.long)) for i in range(0, N, BATCH)]
    groups = describe_groups(model, x[:1], PruneConfig(ignored_layers=[model[8]]))
    obs = collect(KINDS, model, groups, batches, seed=3, calibration=CAL)
    return model, x, batches, groups, obs


def by_hand(model, x):
    """Every intermediate, with leaf copies of the conv/linear outputs so autograd reports their gradients."""
    h0 = model[0](x)
    a1 = F.relu(model[1](h0))
    h3 = model[3](a1)
    a4 = F.relu(model[4](h3))
    feats = a4.mean((2, 3))
    return {"0": (x, h0), "3": (a1, h3), "8": (feats, model[8](feats))}


def positions_for(seed, layer, total):
    gen = position_generator(seed, layer)
    return torch.cat([sample_positions(gen, len(b), total, CAL.positions_per_sample)
                      for b in torch.arange(N).split(BATCH)])


def test_layout_dtype_and_budget(setup):
    _, _, _, _, obs = setup
    p = CAL.positions_per_sample
    assert set(obs) == set(KINDS)
    assert {k: tuple(v.shape) for k, v in obs["inputs"].items()} == {
        "0": (N * p, 2, 9), "3": (N * p, 4, 9), "8": (N, 6)}  # linear: one row per image
    assert {k: tuple(v.shape) for k, v in obs["output_gradients"].items()} == {
        "0": (N * p, 4), "3": (N * p, 6), "8": (N, 5)}
    assert {k: tuple(v.shape) for k, v in obs["outputs"].items()} == {
        "0": (5, 4, 6, 6), "1": (5, 4, 6, 6), "3": (5, 6, 3, 3), "4": (5, 6, 3, 3)}  # output_samples = 5
    for kind in obs.values():
        for t in kind.values():
            assert t.dtype == torch.float32 and t.device.type == "cpu" and torch.isfinite(t).all()


def test_inputs_are_unfold_of_the_real_input_at_the_sampled_positions(setup):
    model, x, _, _, obs = setup
    with torch.no_grad():
        hand = by_hand(model, x)
    for layer, (conv, T) in {"0": (model[0], 36), "3": (model[3], 9)}.items():
        cols = F.unfold(hand[layer][0], 3, padding=1, stride=conv.stride)  # [N, C*9, T]
        assert cols.shape[2] == T
        rows = obs["inputs"][layer].reshape(N, CAL.positions_per_sample, -1)
        # independent of the sampler: each row is a column of this image's unfold, no position twice
        for n in range(N):
            match = (rows[n][:, :, None] - cols[n][None]).abs().amax(1) < 1e-5  # [P, T]
            assert match.any(1).all()
            hits = match.float().argmax(1)
            assert len(set(hits.tolist())) == len(hits)
        # and exactly the documented draw
        idx = positions_for(3, layer, T)
        expected = cols.gather(2, idx[:, None, :].expand(-1, cols.shape[1], -1)).transpose(1, 2)
        torch.testing.assert_close(rows, expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(obs["inputs"]["8"], hand["8"][0], rtol=1e-5, atol=1e-6)


def test_rows_reproduce_the_layer_output(setup):
    """a . w + b at a row is the layer's output at that row's position (rows of inputs and gradients align)."""
    model, x, _, _, obs = setup
    with torch.no_grad():
        h3 = by_hand(model, x)["3"][1].flatten(2)  # [N, 6, 9]
    w = model[3].weight.flatten(2)
    s = torch.einsum("rck,ock->ro", obs["inputs"]["3"], w) + model[3].bias
    idx = positions_for(3, "3", 9)
    expected = h3.gather(2, idx[:, None, :].expand(-1, 6, -1)).transpose(1, 2).reshape(-1, 6)
    torch.testing.assert_close(s, expected, rtol=1e-5, atol=1e-5)


def test_output_gradients_equal_autograd_on_sampled_labels(setup):
    model, x, _, _, obs = setup
    labels = label_generator(3)
    expected = {k: [] for k in ("0", "3", "8")}
    for xb in x.split(BATCH):
        hand = by_hand(model, xb)
        outs = {k: v[1] for k, v in hand.items()}
        logits = outs["8"]
        y = torch.multinomial(torch.softmax(logits.detach().double(), 1), 1, generator=labels).squeeze(1)
        # per-sample loss -log p(y_n | x_n); its gradient w.r.t. each layer output
        grads = torch.autograd.grad(F.cross_entropy(logits, y, reduction="sum"), list(outs.values()))
        for (k, out), g in zip(outs.items(), grads):
            expected[k].append(g)
    for layer, T in (("0", 36), ("3", 9)):
        g = torch.cat(expected[layer]).flatten(2)  # [N, C, T]
        idx = positions_for(3, layer, T)
        g = g.gather(2, idx[:, None, :].expand(-1, g.shape[1], -1)).transpose(1, 2).reshape(-1, g.shape[1])
        torch.testing.assert_close(obs["output_gradients"][layer], g * math.sqrt(T), rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(obs["output_gradients"]["8"], torch.cat(expected["8"]), rtol=1e-4, atol=1e-6)


def test_outputs_are_the_maps_before_the_inplace_relu(setup):
    model, x, _, _, obs = setup
    with torch.no_grad():
        h0 = model[0](x[:5])
        h3 = model[3](F.relu(model[1](h0)))
        expected = {"0": h0, "1": model[1](h0), "3": h3, "4": model[4](h3)}
    assert (obs["outputs"]["1"] < 0).any()  # the ReLU(inplace=True) that follows did not touch the capture
    for k, v in expected.items():
        torch.testing.assert_close(obs["outputs"][k], v, rtol=1e-5, atol=1e-6)


def test_deterministic_for_a_seed_and_seeded_by_it(setup):
    model, _, batches, groups, obs = setup
    again = collect(KINDS, model, groups, batches, seed=3, calibration=CAL)
    other = collect(["inputs"], model, groups, batches, seed=4, calibration=CAL)
    for kind in KINDS:
        assert all(torch.equal(obs[kind][k], again[kind][k]) for k in obs[kind])
    assert torch.equal(other["inputs"]["3"], obs["inputs"]["3"]) is False
    # inputs alone (a no-grad pass) are the very rows that come with the gradients
    alone = collect(["inputs"], model, groups, batches, seed=3, calibration=CAL)
    assert all(torch.equal(alone["inputs"][k], obs["inputs"][k]) for k in obs["inputs"])


def test_budget_caps_images_and_positions(setup):
    model, _, batches, groups, _ = setup
    cal = CAL.model_copy(update={"activation_samples": 7, "positions_per_sample": 100})
    obs = collect(["inputs", "output_gradients"], model, groups, batches, seed=3, calibration=cal)
    assert obs["inputs"]["0"].shape == (7 * 36, 2, 9)  # all 36 positions when fewer than asked
    assert obs["output_gradients"]["3"].shape == (7 * 9, 6)


def test_works_under_no_grad_and_restores_the_mode(setup):
    model, _, batches, groups, obs = setup
    model.train()
    try:
        with torch.no_grad():
            again = collect(["output_gradients"], model, groups, batches, seed=3, calibration=CAL)
        assert model.training
    finally:
        model.eval()
    assert torch.equal(again["output_gradients"]["3"], obs["output_gradients"]["3"])


def test_output_gradients_need_logits():
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU())
    groups = describe_groups(model, torch.randn(1, 1, 5, 5), PruneConfig())
    with pytest.raises(HarnessError, match="logits"):
        collect(["output_gradients"], model, groups, [(torch.randn(2, 1, 5, 5), torch.zeros(2))])


def test_output_gradients_of_a_conv_followed_by_an_inplace_relu():
    """The gradient is w.r.t. the conv's own output, not the ReLU(inplace=True) that overwrites it."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(2, 3, 3, padding=1), nn.ReLU(inplace=True), nn.AdaptiveAvgPool2d(1),
                          nn.Flatten(), nn.Linear(3, 4)).eval()
    x = torch.randn(4, 2, 5, 5)
    groups = describe_groups(model, x[:1], PruneConfig(ignored_layers=[model[4]]))
    cal = CAL.model_copy(update={"positions_per_sample": 25})  # all 25 positions, in order
    obs = collect(["output_gradients"], model, groups, [(x, torch.zeros(4))], seed=0, calibration=cal)
    h = model[0](x)
    logits = model[4](F.relu(h).mean((2, 3)))
    y = torch.multinomial(torch.softmax(logits.detach().double(), 1), 1, generator=label_generator(0)).squeeze(1)
    g, = torch.autograd.grad(F.cross_entropy(logits, y, reduction="sum"), [h])
    assert (g == 0).any()  # where the ReLU was off
    torch.testing.assert_close(obs["output_gradients"]["0"], g.flatten(2).transpose(1, 2).reshape(-1, 3) * 5.0)


def test_outputs_stay_within_the_memory_budget():
    model = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                          nn.Flatten(), nn.Linear(16, 3)).eval()
    x = torch.randn(5, 1, 64, 64)  # conv + bn outputs: 2 * 16 * 64 * 64 * 4 bytes = 512 KiB per image
    groups = describe_groups(model, x[:1], PruneConfig(ignored_layers=[model[5]]))
    cal = Calibration(num_samples=5, batch_size=5, output_samples=5, output_budget_mb=1)
    obs = collect(["outputs"], model, groups, [(x, torch.zeros(5))], calibration=cal)
    assert obs["outputs"]["0"].shape == (2, 16, 64, 64) and obs["outputs"]["1"].shape == (2, 16, 64, 64)


@pytest.mark.parametrize("conv", [
    nn.Conv2d(2, 3, (3, 2), stride=(2, 1), padding=(1, 0), dilation=(1, 2)),
    nn.Conv2d(2, 3, 3, padding=1, padding_mode="reflect"),
    nn.Conv2d(4, 4, 3, padding=1, groups=2),
    nn.Conv1d(2, 3, 3, stride=2, padding=1, dilation=2),
], ids=["strided-dilated", "reflect", "grouped", "conv1d"])
def test_inputs_of_other_conv_shapes_equal_unfold(conv):
    """Every position (P >= T): rows are F.unfold of the padded input; a . w + b is the conv's output."""
    torch.manual_seed(0)
    one_d = isinstance(conv, nn.Conv1d)
    model = nn.Sequential(conv, nn.ReLU(), nn.AdaptiveAvgPool1d(1) if one_d else nn.AdaptiveAvgPool2d(1),
                          nn.Flatten(), nn.Linear(conv.out_channels, 2)).eval()
    x = torch.randn(3, conv.in_channels, 9) if one_d else torch.randn(3, conv.in_channels, 7, 8)
    groups = describe_groups(model, x[:1], PruneConfig(ignored_layers=[model[4]]))
    obs = collect(["inputs"], model, groups, [(x, torch.zeros(3))],
                  calibration=CAL.model_copy(update={"positions_per_sample": 4096}))
    rows, out = obs["inputs"]["0"], conv(x).detach()
    xp = F.pad(x, conv._reversed_padding_repeated_twice,
               mode="constant" if conv.padding_mode == "zeros" else conv.padding_mode)
    if one_d:
        cols = F.unfold(xp.unsqueeze(2), (1, conv.kernel_size[0]), dilation=(1, conv.dilation[0]),
                        stride=(1, conv.stride[0]))
    else:
        cols = F.unfold(xp, conv.kernel_size, dilation=conv.dilation, stride=conv.stride)
    T = out[0, 0].numel()
    assert rows.shape == (3 * T, conv.in_channels, cols.shape[1] // conv.in_channels)
    torch.testing.assert_close(rows, cols.transpose(1, 2).reshape(rows.shape))
    # grouped: output o sees only its group's input channels
    w = conv.weight.flatten(2)
    g, o_g, c_g = conv.groups, conv.out_channels // conv.groups, conv.in_channels // conv.groups
    s = torch.cat([torch.einsum("rck,ock->ro", rows[:, j * c_g:(j + 1) * c_g], w[j * o_g:(j + 1) * o_g])
                   for j in range(g)], 1) + conv.bias
    torch.testing.assert_close(s, out.flatten(2).transpose(1, 2).reshape(-1, conv.out_channels), rtol=1e-5, atol=1e-5)
