"""BatchNorm re-estimation after pruning against a hand computation, and pruned_recal in a record."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from harness.protocol.batchnorm import recalibrate


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(2, 4, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(4)
        self.conv2 = nn.Conv2d(4, 3, 3)
        self.bn2 = nn.BatchNorm2d(3)
        self.drop = nn.Dropout(0.5)
        self.fc = nn.Linear(3, 2)
        self.bn3 = nn.BatchNorm1d(2)

    def forward(self, x):
        x = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
        return self.bn3(self.fc(self.drop(x.mean((2, 3)))))


def test_running_statistics_equal_the_calibration_sets():
    torch.manual_seed(0)
    model = Net()
    with torch.no_grad():  # stale statistics, as a pruned model has
        for bn in (model.bn1, model.bn2, model.bn3):
            bn.running_mean.fill_(5.0)
            bn.running_var.fill_(9.0)
    weights = copy.deepcopy(model.state_dict())
    batches = [torch.randn(n, 2, 6, 6) * 3 + 1 for n in (5, 7, 4)]  # unequal sizes

    assert recalibrate(model, batches, lambda m, x: m(x)) == 3
    assert not model.training and all(not m.training for m in model.modules())

    # by hand: each layer's inputs over every image and position; upstream layers normalize with the
    # statistics of their own batch (biased variance), as in training; dropout is off
    with torch.no_grad():
        ins1, ins2, ins3 = [], [], []
        for x in batches:
            a = model.conv1(x)
            ins1.append(a)
            mu, var = a.mean((0, 2, 3), keepdim=True), a.var((0, 2, 3), unbiased=False, keepdim=True)
            a = (a - mu) / torch.sqrt(var + model.bn1.eps) * model.bn1.weight.view(1, -1, 1, 1) \
                + model.bn1.bias.view(1, -1, 1, 1)
            b = model.conv2(F.relu(a))
            ins2.append(b)
            mu, var = b.mean((0, 2, 3), keepdim=True), b.var((0, 2, 3), unbiased=False, keepdim=True)
            b = (b - mu) / torch.sqrt(var + model.bn2.eps) * model.bn2.weight.view(1, -1, 1, 1) \
                + model.bn2.bias.view(1, -1, 1, 1)
            ins3.append(model.fc(b.mean((2, 3))))
    for bn, ins in ((model.bn1, ins1), (model.bn2, ins2)):
        flat = torch.cat([t.transpose(0, 1).reshape(t.shape[1], -1) for t in ins], 1).double()
        assert torch.allclose(bn.running_mean.double(), flat.mean(1), atol=1e-5)
        assert torch.allclose(bn.running_var.double(), flat.var(1, unbiased=True), rtol=1e-4)
    flat = torch.cat(ins3).double()
    assert torch.allclose(model.bn3.running_mean.double(), flat.mean(0), atol=1e-5)
    assert torch.allclose(model.bn3.running_var.double(), flat.var(0, unbiased=True), rtol=1e-4)
    assert int(model.bn1.num_batches_tracked) == 3

    # not an average of per-batch variances (what momentum=None in PyTorch gives)
    per_batch = torch.stack([t.var((0, 2, 3), unbiased=True) for t in ins1]).mean(0)
    assert not torch.allclose(model.bn1.running_var, per_batch, rtol=1e-3)
    # no parameter changed
    after = model.state_dict()
    for name, w in weights.items():
        if "running" not in name and "num_batches" not in name:
            assert torch.equal(after[name], w), name


def test_a_model_without_batchnorm_is_untouched():
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    before = copy.deepcopy(model.state_dict())
    assert recalibrate(model, [torch.randn(4, 3)], lambda m, x: m(x)) == 0
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


@pytest.mark.slow
def test_record_carries_pruned_recal_that_beats_chance(tiny_track, tmp_path):
    from harness.methods import find_method
    from harness.protocol.run import RunSpec, evaluate
    record, _ = evaluate(RunSpec(track=tiny_track, method=find_method("magnitude_l1"), speedup=2, seed=0,
                                 runner="inprocess", out=tmp_path, save_models=False, measure_latency=False))
    assert record.status == "ok", record.error
    m = record.metric
    assert m.pruned_recal is not None and m.pruned_recal != m.pruned
    assert m.pruned_recal > 20  # chance is 10%
