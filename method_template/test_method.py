"""Quick checks an author runs before `make submit` (the full conformance suite is
`pbench-harness check-method PATH`). Run: python -m pytest method_template/test_method.py"""

from pathlib import Path

import torch

from specs.messages import Group, Member
from specs.manifest import load_manifest
from specs.sdk import Observations
from specs.sdk.server import load_method_class

HERE = Path(__file__).resolve().parent


def make_method():
    manifest = load_manifest(HERE)
    return load_method_class(HERE, manifest)(manifest, {}, seed=0)


def test_scores_follow_filter_norms():
    # a conv with 3 output channels whose filters have L1 norms 3, 0 and 6
    w = torch.zeros(3, 1, 1, 2)
    w[0] = 1.5
    w[2] = -3.0
    root = Member(layer="conv", module_type="Conv2d", kind="conv", dim="out", weight="conv.weight",
                  idxs=[0, 1, 2], root_idxs=[0, 1, 2])
    group = Group(id="conv", root="conv", n_channels=3, members=[root])
    scores = make_method().score([group], Observations(weights={"conv.weight": w}))["conv"]
    assert scores.shape == (3,)
    assert torch.isfinite(scores).all()
    assert scores.argsort().tolist() == [1, 0, 2]
    torch.testing.assert_close(scores, torch.tensor([3.0, 0.0, 6.0]) / 3.0)
