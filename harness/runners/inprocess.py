"""``inprocess``: the method class runs inside the harness (debugging, fastest).

Same validation as the other runners, but no isolation and no deadline.
"""

from __future__ import annotations

import torch

from harness.errors import MethodFailure
from harness.runners.base import MethodClient, RegGrads, RegularizerLink, Tensors, validate_reg
from specs.messages import Group, Hello
from specs.base import one_line
from specs.sdk import MethodBase, Observations
from specs.sdk.server import instantiate
from specs.tensors import split_compact


class InProcessClient(MethodClient):
    runner = "inprocess"
    #: instantiating the method is quick, and it runs in the harness's process (its random state too):
    #: :meth:`begin` starts it at once, not on a thread
    starts_in_background = False

    def start(self) -> None:
        hello = Hello(harness_version="inprocess", seed=self.seed, device=self.device,
                      hyperparameters=self.hyperparameters)
        try:
            self.method: MethodBase = instantiate(self.source.path, hello)
        except Exception as e:
            raise MethodFailure(f"method failed to start: {one_line(e)}") from None
        self._check_manifest(self.method.manifest)

    def _call(self, fn, *args):
        try:
            return fn(*args)
        except Exception as e:
            raise MethodFailure(f"method error: {one_line(e)}") from None

    def _score(self, round: int, groups: list[Group], observations: dict[str, Tensors]) -> object:
        obs = Observations({k: {n: t.clone() for n, t in v.items()} for k, v in observations.items()})
        with torch.no_grad():
            return self._call(self.method.score, groups, obs)

    def _regularize(self, step: int, total_steps: int, groups: list[Group], weights: Tensors) -> object:
        return self._call(self.method.regularize, step, total_steps, groups,
                          {k: t.detach().clone() for k, t in weights.items()})

    def close(self) -> None:
        self.method = None


class InProcessLink(RegularizerLink):
    """The ``"compact"`` regularizer dialect (spec 1.1) in process: the method object lives here, so its
    compact form is called directly."""

    client: InProcessClient

    def __call__(self, step: int, total_steps: int, weights: Tensors) -> RegGrads:
        # copies: the method cannot touch the model; float32 on CPU, as over the wire
        copies = {k: t.detach().to("cpu", torch.float32, copy=True) for k, t in weights.items()}
        try:
            out = self.client.method.regularize_compact(step, total_steps, self.groups, copies)
        except Exception as e:
            raise MethodFailure(f"method error during 'regularize': {one_line(e)}") from None
        if not isinstance(out, dict):
            raise MethodFailure(f"regularize_compact() returned {type(out).__name__}, expected dict")
        dense, scales = split_compact(out)
        return validate_reg(weights, dense, scales)


#: the link class of each regularizer dialect (set here: the compact link is defined after the client)
InProcessClient.links = {**MethodClient.links, "compact": InProcessLink}
