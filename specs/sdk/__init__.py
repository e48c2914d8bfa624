"""Method-side runtime: base classes for method authors and the server loop.

A method is a folder with ``manifest.json`` and a module (default ``method.py``)
defining a class (default ``Method``) that subclasses :class:`ImportanceMethod`
and/or :class:`RegularizerMethod`. The harness starts it as::

    python -m specs.sdk --method-dir DIR --exchange EXCHANGE_DIR

The server (:mod:`specs.sdk.server`) connects to ``EXCHANGE_DIR/pbench.sock``, answers the harness's
messages (see :mod:`specs.messages`), reads tensors from safetensors files in ``EXCHANGE_DIR`` and
sends its replies' tensors back on the socket (spec 1.3, ``inline_reply``) or as files there. This package needs torch + safetensors; it never
imports the harness.

Modules: :mod:`specs.sdk.members` (tensor helpers for groups and members), :mod:`specs.sdk.methods`
(the base classes and :class:`Observations`), :mod:`specs.sdk.server` (the server loop). Everything
a method imports comes from ``specs.sdk`` itself.
"""

from __future__ import annotations

import random

import torch

SOCKET_NAME = "pbench.sock"

#: named tensors: parameter keys, layer names or group ids -> tensor
Tensors = dict[str, torch.Tensor]


def seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)
    try:
        import numpy as np
        np.random.seed(seed % (2**32))
    except ImportError:  # pragma: no cover - numpy ships with torch images
        pass


def one_line(err: BaseException) -> str:
    text = " ".join(str(err).split())
    return f"{type(err).__name__}: {text}"[:500]


from specs.sdk.members import (PARAM_KINDS, broadcast_scale, channel_sq_norms, contribution_gram,  # noqa: E402
                               counted, dense_weight, expand_compact, group_sq_norms, grouped, input_consumers,
                               member_coefficients, member_dim, member_keys, member_positions, member_rows,
                               normalize, reduce_to_root, root_filter_norms, scale_members, split_compact,
                               split_scale_key)
from specs.sdk.methods import ImportanceMethod, MethodBase, Observations, RegularizerMethod  # noqa: E402

__all__ = ["SOCKET_NAME", "Tensors", "one_line", "seed_everything", "PARAM_KINDS", "broadcast_scale",
           "channel_sq_norms", "contribution_gram", "counted", "dense_weight", "expand_compact", "group_sq_norms",
           "grouped", "input_consumers", "member_coefficients", "member_dim", "member_keys", "member_positions",
           "member_rows", "normalize",
           "reduce_to_root", "root_filter_norms", "scale_members", "split_compact", "split_scale_key",
           "ImportanceMethod", "MethodBase", "Observations", "RegularizerMethod"]
