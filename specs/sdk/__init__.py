"""Method-side runtime: base classes for method authors and the server loop.

A method is a folder with ``manifest.json`` and a module (default ``method.py``)
defining a class (default ``Method``) that subclasses :class:`ImportanceMethod`
and/or :class:`RegularizerMethod`. The harness starts it as::

    python -m specs.sdk --method-dir DIR --exchange EXCHANGE_DIR

The server (:mod:`specs.sdk.server`) connects to ``EXCHANGE_DIR/pbench.sock``, answers the harness's
messages (see :mod:`specs.messages`), reads tensors from safetensors files in ``EXCHANGE_DIR`` and
sends its replies' tensors back on the socket (spec 1.3, ``inline_reply``) or as files there. This package
needs torch + safetensors; it never imports the harness.

Modules: :mod:`specs.sdk.members` (tensor helpers for groups and members), :mod:`specs.sdk.methods`
(the base classes and :class:`Observations`), :mod:`specs.sdk.server` (the server loop). Everything
a method imports comes from ``specs.sdk`` itself: what the harness shares with it (:data:`Tensors`,
:func:`one_line`, the compact scales' keys, ``SOCKET_NAME``) lives in the contract (:mod:`specs.tensors`,
:mod:`specs.base`, :mod:`specs.wire`) and is re-exported here; the harness never imports this package.
"""

from __future__ import annotations

from specs.base import one_line
from specs.tensors import (Tensors, broadcast_scale, grouped, member_dim, seed_everything, split_compact,
                           split_scale_key)
from specs.wire import SOCKET_NAME
from specs.sdk.members import (PARAM_KINDS, channel_sq_norms, contribution_gram, counted, dense_weight,
                               expand_compact, group_sq_norms, input_consumers, member_coefficients, member_keys,
                               member_positions, member_rows, normalize, reduce_to_root, root_filter_norms,
                               scale_members)
from specs.sdk.methods import ImportanceMethod, MethodBase, Observations, RegularizerMethod

__all__ = ["SOCKET_NAME", "Tensors", "one_line", "seed_everything", "PARAM_KINDS", "broadcast_scale",
           "channel_sq_norms", "contribution_gram", "counted", "dense_weight", "expand_compact", "group_sq_norms",
           "grouped", "input_consumers", "member_coefficients", "member_dim", "member_keys", "member_positions",
           "member_rows", "normalize",
           "reduce_to_root", "root_filter_norms", "scale_members", "split_compact", "split_scale_key",
           "ImportanceMethod", "MethodBase", "Observations", "RegularizerMethod"]
