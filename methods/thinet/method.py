"""ThiNet (Luo, Wu, Lin, ICCV 2017): a channel matters as much as the next layer needs it.

For every consumer of the group (a member conv/linear pruned along its inputs), the
``inputs`` observation gives, per sampled output position, each input channel's patch.
Input channel c contributes ``z_c = sum_k W[o, c, k] * x[c, k]`` to output o, so removing a
set T of channels perturbs the output by ``sum_{c in T} z_c``. ThiNet removes channels
greedily, each time the one that least increases ``sum_(rows, o) (sum_{c in T} z_c)^2``.
The objective only needs the Gram matrix ``Q[c, d] = sum z_c z_d`` (see ``contribution_gram``).
A channel's score is its position in that removal order, scaled to [0, 1] (first removed = 0),
averaged over the group's consumers.
"""

import torch

from specs.sdk import ImportanceMethod, contribution_gram, input_consumers, root_filter_norms


def greedy_removal_order(q: torch.Tensor) -> list[int]:
    """ThiNet's greedy: repeatedly remove the channel that least increases ``1^T Q[T, T] 1``."""
    n = q.shape[0]
    removed = torch.zeros(n, dtype=torch.bool)
    cross = torch.zeros(n, dtype=torch.float64)  # sum over removed t of Q[t, c]
    diag = q.diagonal()
    order = []
    for _ in range(n):
        cost = (2 * cross + diag).masked_fill(removed, float("inf"))
        c = int(cost.argmin())  # ties: lowest index
        order.append(c)
        removed[c] = True
        cross += q[c]
    return order


def rank_scores(order: list[int]) -> torch.Tensor:
    """Position in the removal order scaled to [0, 1]: first removed 0, last removed 1."""
    n = len(order)
    out = torch.empty(n, dtype=torch.float64)
    out[torch.as_tensor(order)] = torch.arange(n, dtype=torch.float64) / max(1, n - 1)
    return out


def fallback(group, obs) -> torch.Tensor:
    """No observed consumer: rank of the root filters' L2 norm (documented deviation)."""
    norms = root_filter_norms(group, obs.weights)
    if norms is None:
        return torch.ones(group.n_channels)
    return rank_scores(norms.double().argsort(stable=True).tolist()).float()


class Method(ImportanceMethod):
    def score_group(self, group, obs):
        total = torch.zeros(group.n_channels, dtype=torch.float64)
        count = torch.zeros(group.n_channels, dtype=torch.float64)
        for m in input_consumers(group, obs.inputs):
            q, roots = contribution_gram(m, obs.inputs[m.layer], obs.weights[m.weight])
            total[roots] += rank_scores(greedy_removal_order(q))
            count[roots] += 1
        if not count.any():
            return fallback(group, obs)
        return (total / count.clamp(min=1)).float()
