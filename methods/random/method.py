"""Random importance: uniform scores in [0, 1) drawn from the seeded generator.
Same seed -> same scores -> same pruned architecture."""

import torch

from specs.sdk import ImportanceMethod


class Method(ImportanceMethod):
    def score_group(self, group, obs):
        return torch.rand(group.n_channels, generator=self.generator)
