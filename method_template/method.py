"""Template method: score each channel by the L1 norm of its filter in the group's root layer.

The harness calls ``score_group`` once per dependency group and removes the
channels with the lowest scores. Contract (see specs/sdk/methods.py):

- ``group.n_channels``: how many scores to return (one per root channel);
- ``group.members``: every layer coupled to those channels; the root's own
  output channels are the member with ``layer == group.root`` and ``dim == "out"``;
- ``obs.weights[key]``: the current weights (declare "weights" in manifest.json);
- return a 1-D float tensor, finite, higher = more important.
"""

import torch

from specs.sdk import ImportanceMethod, member_rows, reduce_to_root


class Method(ImportanceMethod):
    def score_group(self, group, obs):
        root = next(m for m in group.members if m.layer == group.root and m.dim == "out")
        filters = member_rows(root, obs.weights[root.weight])  # [n_channels, in * kh * kw]
        scores = reduce_to_root(group, [(root, filters.abs().sum(1))], "sum")
        if self.hp["normalize"]:
            scores = scores / scores.mean().clamp_min(torch.finfo(scores.dtype).tiny)
        return scores
