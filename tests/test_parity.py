"""Reference methods through the real wire protocol equal Torch-Pruning's own importances."""

from __future__ import annotations

import pytest
import torch
import torch_pruning as tp

from harness.protocol.grouping import PruneConfig, ROOT_TYPES, build_graph, describe_groups
from harness.methods import find_method
from harness.models import classifier_of, create_model
from harness.protocol.observations import collect
from harness.runners import client_class

MODELS = [("resnet18", 0.25, 8), ("vgg19", 0.125, 16), ("resnet50", 0.0625, 16)]


def torch_pruning_scores(model, example, config, importance) -> dict[str, torch.Tensor]:
    names = {m: n for n, m in model.named_modules()}
    DG = build_graph(model, example, config)
    return {names[g[0].dep.target.module]: importance(g)
            for g in DG.get_all_groups(ignored_layers=config.ignored_layers, root_module_types=ROOT_TYPES)}


@pytest.mark.parametrize("method, p", [("magnitude_l1", 1), ("magnitude_l2", 2)])
@pytest.mark.parametrize("runner", ["subprocess", "inprocess"])
def test_magnitude_equals_torch_pruning(method, p, runner):
    source = find_method(method)
    with client_class(runner)(source, {}, seed=0) as client:
        for name, width, size in MODELS:
            torch.manual_seed(0)
            model = create_model(name, num_classes=10, in_chans=3, image_size=size, width=width).eval()
            with torch.no_grad():  # non-trivial BN affine parameters, so BN members matter
                for m in model.modules():
                    if isinstance(m, torch.nn.BatchNorm2d):
                        m.weight.uniform_(0.2, 2.0)
            example = torch.randn(1, 3, size, size)
            config = PruneConfig(ignored_layers=[classifier_of(model)])
            groups = describe_groups(model, example, config)
            obs = collect(source.manifest.observations, model, groups, batches=[])
            ours = client.score(0, groups, obs)
            ref = torch_pruning_scores(model, example, config, tp.importance.MagnitudeImportance(p=p))
            assert sorted(ours) == sorted(ref) and len(ours) == len(groups)
            for gid, expected in ref.items():
                torch.testing.assert_close(ours[gid].float(), expected.float(), rtol=1e-5, atol=1e-7,
                                           msg=f"{name} group {gid}")
