"""The base classes a method subclasses, and the observations it is given."""

from __future__ import annotations

import torch

from specs.manifest import MethodManifest
from specs.messages import Group
from specs.sdk.members import expand_compact

class Observations(dict):
    """``kind -> {key -> tensor}`` for the kinds the manifest declared.

    ``obs.weights`` etc. are shortcuts; an undeclared kind raises a KeyError that
    names the manifest field to fix.
    """

    def _kind(self, kind: str) -> dict[str, torch.Tensor]:
        try:
            return self[kind]
        except KeyError:
            raise KeyError(f"observation {kind!r} was not provided: declare it in manifest.json 'observations'") from None

    @property
    def weights(self) -> dict[str, torch.Tensor]:
        return self._kind("weights")

    @property
    def gradients(self) -> dict[str, torch.Tensor]:
        return self._kind("gradients")

    @property
    def sq_gradients(self) -> dict[str, torch.Tensor]:
        return self._kind("sq_gradients")

    @property
    def inputs(self) -> dict[str, torch.Tensor]:
        """``layer -> [N*P, C_in, kh*kw]`` (conv patches) or ``[N*P, C_in]`` (linear); see ObservationKind."""
        return self._kind("inputs")

    @property
    def outputs(self) -> dict[str, torch.Tensor]:
        """``layer -> [N, C, H, W]`` (conv/bn) or ``[N, ..., F]`` (linear) feature maps."""
        return self._kind("outputs")

    @property
    def output_gradients(self) -> dict[str, torch.Tensor]:
        """``layer -> [N*P, C_out]``, rows aligned with ``inputs`` (sampled labels, scaled by sqrt(T))."""
        return self._kind("output_gradients")


# --------------------------------------------------------------------------- base classes


class MethodBase:
    """Common constructor. ``self.hp`` holds the resolved hyperparameters (defaults
    from the manifest, overridden by the harness); ``self.generator`` is seeded."""

    def __init__(self, manifest: MethodManifest, hyperparameters: dict, seed: int, device: str = "cpu"):
        self.manifest = manifest
        self.hp = manifest.resolve_hyperparameters(hyperparameters)
        self.seed = seed
        self.device = device
        self.generator = torch.Generator().manual_seed(seed)


class ImportanceMethod(MethodBase):
    """An importance criterion.

    Override :meth:`score_group` (one group at a time) or :meth:`score` (all at
    once). Contract: for every group return a 1-D float tensor of length
    ``group.n_channels``, finite; higher = more important; the harness removes
    the lowest-scoring channels. Do not modify the observations.
    """

    def score(self, groups: list[Group], obs: Observations) -> dict[str, torch.Tensor]:
        return {g.id: self.score_group(g, obs) for g in groups}

    def score_group(self, group: Group, obs: Observations) -> torch.Tensor:
        raise NotImplementedError("implement score_group(group, obs) or score(groups, obs)")


class RegularizerMethod(MethodBase):
    """A sparsity regularizer used during the harness's sparse-training stage.

    Called once per training step, after ``loss.backward()``, with the current
    weights of every group member (``weights[key]``, float32). Implement one of:

    - :meth:`regularize`: return ``{param_key: tensor}``, each the shape of
      ``weights[param_key]``; the harness adds them to the gradients before
      ``optimizer.step()``.
    - :meth:`regularize_compact`: the same, and/or per-channel scales
      ``{"<param_key>@<dim>": s}`` (1-D, ``weights[param_key].shape[dim]`` entries)
      meaning ``grad += s (broadcast along dim) * weight``. Group-norm style
      regularizers are exactly this; build it with :func:`scale_members`. The
      harness expands it in-process, so a step exchanges kilobytes instead of a
      copy of the model (spec 1.1; with a 1.0 harness the SDK expands it).

    Groups are fixed during sparse training (the SDK caches them between steps).
    A method may keep state between calls (e.g. growing penalties); ``step == 0``
    starts a new sparse-training run.
    """

    def regularize(self, step: int, total_steps: int, groups: list[Group],
                   weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        if type(self).regularize_compact is RegularizerMethod.regularize_compact:
            raise NotImplementedError("implement regularize() or regularize_compact()")
        return expand_compact(weights, self.regularize_compact(step, total_steps, groups, weights))

    def regularize_compact(self, step: int, total_steps: int, groups: list[Group],
                           weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return self.regularize(step, total_steps, groups, weights)
