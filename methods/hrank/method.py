"""HRank (Lin et al., CVPR 2020): filters whose feature maps have high average rank matter.

A channel's score is the matrix rank of its feature map (``torch.linalg.matrix_rank`` of the
H x W map, default tolerance) averaged over the images of the ``outputs`` observation. The map
is the root conv's output, or (``feature_map = "bn_relu"``, the default) ReLU of its BatchNorm's
output - the activation HRank's reference code hooks. The root's BatchNorm is recognised from
the data, not from names: it is the group's BN member whose outputs are an exact per-channel
affine function of the root's outputs (BN in eval mode is ``gamma * (x - mu) / sigma + beta``).
"""

import torch

from specs.sdk import ImportanceMethod, normalize


def channel_maps(member, t: torch.Tensor, n_channels: int) -> torch.Tensor:
    """``[N, n_channels, ...]``: the member's output channels in root-channel order."""
    if member.kind == "linear":
        t = t.movedim(-1, 1)  # linear outputs are [N, ..., F]
    out = t.new_zeros(t.shape[0], n_channels, *t.shape[2:])
    out[:, torch.as_tensor(member.root_idxs)] = t[:, torch.as_tensor(member.idxs)]
    return out


def is_affine_of(x: torch.Tensor, y: torch.Tensor, rtol: float = 1e-3) -> bool:
    """Whether every channel of ``y`` is ``a_c * x_c + b_c`` (both ``[N, C, ...]``, same shape)."""
    if x.shape != y.shape:
        return False
    x = x.transpose(0, 1).reshape(x.shape[1], -1).double()
    y = y.transpose(0, 1).reshape(y.shape[1], -1).double()
    x = x - x.mean(1, keepdim=True)
    y = y - y.mean(1, keepdim=True)
    xx = (x * x).sum(1)
    a = torch.where(xx > 0, (x * y).sum(1) / xx.clamp(min=1e-300), torch.zeros_like(xx))
    resid = (y - a[:, None] * x).norm(dim=1)
    return bool((resid <= rtol * y.norm(dim=1) + 1e-6 * (1 + y.abs().max())).all())


def average_rank(maps: torch.Tensor) -> torch.Tensor:
    """``[C]``: mean over images of the rank of each channel's map (1-D maps are columns, scalars 1x1)."""
    while maps.dim() < 4:
        maps = maps.unsqueeze(-1)
    if maps.dim() > 4:
        maps = maps.flatten(3)
    return torch.linalg.matrix_rank(maps.float()).double().mean(0)


class Method(ImportanceMethod):
    def feature_maps(self, group, obs) -> torch.Tensor:
        root = next(m for m in group.members if m.layer == group.root and m.dim == "out")
        maps = channel_maps(root, obs.outputs[root.layer], group.n_channels)
        if self.hp["feature_map"] == "bn_relu":
            for m in group.members:
                if m.kind == "bn" and m.dim == "out" and m.layer in obs.outputs:
                    bn = channel_maps(m, obs.outputs[m.layer], group.n_channels)
                    if is_affine_of(maps, bn):
                        return bn.clamp(min=0)
        return maps

    def score_group(self, group, obs):
        scores = average_rank(self.feature_maps(group, obs))
        if not scores.any():
            return scores.float()
        return normalize(scores, self.hp["normalizer"]).float()
