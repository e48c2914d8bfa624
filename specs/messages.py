"""Wire messages between the harness and a running method.

Every message is a small JSON object, validated by these models on both sides.
Bulk tensors never travel inside JSON. From the harness to the method they are
safetensors files in the exchange directory, referenced by :class:`TensorFile`
(the method only reads them: under the docker runner the directory may be mounted
read-only). From the method to the harness they are either files the method
writes there (spec 1.0-1.2), or, when the request sets ``inline_reply`` (spec
1.3), safetensors blobs sent on the socket right after the reply message
(:class:`InlineTensors`), which the harness size-checks before reading.

Conversation (the harness always speaks first, the method answers each message once)::

    harness -> Hello            method -> HelloReply (echoes its manifest)
    harness -> ScoreRequest     method -> ScoreReply   | ErrorReply      (importance)
    harness -> RegularizeRequest method -> RegularizeReply | ErrorReply  (regularizer, every step)
    harness -> Shutdown         method -> (closes)

Shapes and units
----------------
A *group* is one set of coupled channels found by Torch-Pruning's DepGraph
(e.g. a conv's output channels, the next BN, and the next conv's input
channels). Pruning root channel ``i`` of a group removes, from every member
``m``, the entries ``m.idxs[j]`` for which ``m.root_idxs[j] == i`` along that
member's pruning dimension. A method returns ONE score per root channel
(``n_channels`` floats per group, float32, finite); the harness removes the
lowest-scoring channels. Scores are compared across groups under global
strategies, so a method normalizes them as its paper prescribes.
"""

from __future__ import annotations

from typing import Annotated, Literal, Optional, Union

from pydantic import Field, TypeAdapter, model_serializer, model_validator

from specs.base import ExchangeFile, Scalar, Strict, Versioned
from specs.manifest import MethodManifest, ObservationKind

MemberKind = Literal["conv", "linear", "bn", "layernorm", "groupnorm", "embedding", "parameter", "other"]


class TensorFile(Strict):
    """A safetensors file in the exchange directory; ``keys`` lists the tensors it holds."""

    file: ExchangeFile
    keys: list[str] = Field(default_factory=list)


class InlineTensors(Strict):
    """Spec 1.3: tensors sent on the socket after the reply message, as one frame each (an 8-byte
    big-endian length, then a safetensors blob), in the order the reply's fields list them
    (``grads`` before ``scales``). ``keys`` lists the tensors the blob holds."""

    inline: Literal[True] = True
    keys: list[str] = Field(default_factory=list)


#: where a reply's tensors are: a file in the exchange directory, or inline on the socket (spec 1.3)
ReplyTensors = Union[TensorFile, InlineTensors]

INLINE_REPLY_DESCRIPTION = ("spec 1.3: answer with InlineTensors on the socket, not files (the exchange "
                            "directory may be read-only); reply_file and scales_file are then unused")


class Member(Strict):
    """One layer (or bare parameter) touched when the group is pruned."""

    layer: str = Field(description="qualified module name, e.g. 'layer1.0.conv1'")
    module_type: str = Field(description="torch class name, e.g. 'Conv2d'")
    kind: MemberKind
    dim: Literal["out", "in"] = Field(description="out: output channels/features are pruned; in: inputs")
    weight: Optional[str] = Field(None, description="key of the weight in the 'weights' observation")
    bias: Optional[str] = Field(None, description="key of the bias in the 'weights' observation")
    transposed: bool = Field(False, description="ConvTranspose: weight is [in, out, ...]")
    conv_groups: int = Field(1, ge=1, description="the conv's `groups` attribute")
    depthwise: bool = Field(False, description="conv with groups == in_channels (inputs tied to outputs)")
    idxs: list[int] = Field(description="indices pruned along `dim` of this member")
    root_idxs: list[int] = Field(description="root channel of each entry of idxs")

    @model_validator(mode="after")
    def _same_length(self) -> "Member":
        if len(self.idxs) != len(self.root_idxs):
            raise ValueError(f"member {self.layer}: idxs and root_idxs differ in length")
        return self


class Group(Strict):
    id: str = Field(pattern=r"^[A-Za-z0-9_.:\-]{1,200}$")
    root: str = Field(description="layer whose output channels define the group")
    n_channels: int = Field(ge=1, description="number of prunable root channels = length of the score vector")
    ch_groups: int = Field(1, ge=1, description="channels come in this many interleaved groups (group convs)")
    members: list[Member] = Field(min_length=1)


class Hello(Versioned):
    type: Literal["hello"] = "hello"
    harness_version: str
    seed: int
    device: Literal["cpu", "cuda"] = "cpu"
    hyperparameters: dict[str, Scalar] = Field(default_factory=dict)


class HelloReply(Versioned):
    type: Literal["hello_reply"] = "hello_reply"
    manifest: MethodManifest


class ScoreRequest(Versioned):
    """Ask for one score per root channel of every group.

    ``observations`` maps each kind the manifest declared to the file holding it.
    ``reply_file`` is the name the method must write its scores to, unless ``inline_reply``
    (spec 1.3, left out of the JSON when unset) asks for them on the socket.
    """

    type: Literal["score"] = "score"
    round: int = Field(ge=0)
    groups: list[Group]
    observations: dict[ObservationKind, TensorFile] = Field(default_factory=dict)
    reply_file: ExchangeFile
    inline_reply: bool = Field(False, description=INLINE_REPLY_DESCRIPTION)

    @model_serializer(mode="wrap")
    def _omit_unset(self, handler):
        return _omit(handler(self), inline_reply=False)


class ScoreReply(Versioned):
    """Scores: one 1-D float tensor per group, keyed by group id, length n_channels (in a file, or
    inline on the socket when the request set ``inline_reply``)."""

    type: Literal["scores"] = "scores"
    scores: ReplyTensors


class RegularizeRequest(Versioned):
    """Sparse-training step ``step``: the harness has called ``loss.backward()``.

    ``weights`` holds the current parameters of every group member (keys as in
    :class:`Member`). The method returns tensors to ADD to those parameters'
    gradients before ``optimizer.step()``.

    Spec 1.1 (used only with methods whose manifest declares ``spec_version`` >= 1.1;
    both fields are left out of the JSON when unset, so a 1.0 method never sees them):

    - ``same_groups``: the groups did not change since the previous request (they never
      do during sparse training), so ``groups`` is empty; use the ones sent last.
    - ``scales_file``: the method may also answer in the compact form of
      :class:`RegularizeReply` (``scales``), written to this file.

    Spec 1.3: ``inline_reply`` (left out when unset) asks for ``grads`` (and ``scales``, when
    ``scales_file`` is set) as :class:`InlineTensors` on the socket.
    """

    type: Literal["regularize"] = "regularize"
    step: int = Field(ge=0)
    total_steps: int = Field(ge=1)
    groups: list[Group]
    weights: TensorFile
    reply_file: ExchangeFile
    same_groups: bool = Field(False, description="spec 1.1: groups omitted, unchanged since the last request")
    scales_file: Optional[ExchangeFile] = Field(None, description="spec 1.1: where compact per-channel scales may go")
    inline_reply: bool = Field(False, description=INLINE_REPLY_DESCRIPTION)

    @model_validator(mode="after")
    def _groups_or_same(self) -> "RegularizeRequest":
        if self.same_groups and self.groups:
            raise ValueError("same_groups is set: groups must be empty")
        return self

    @model_serializer(mode="wrap")
    def _omit_unset(self, handler):
        return _omit(handler(self), same_groups=False, scales_file=None, inline_reply=False)


class RegularizeReply(Versioned):
    """``grads`` holds tensors keyed by parameter key, each the shape of that parameter.

    Spec 1.1 compact form (only when the request named a ``scales_file``): ``scales``
    holds 1-D tensors keyed ``"<param key>@<dim>"``; ``s = scales["w@d"]`` has
    ``w.shape[d]`` entries and adds ``s[i] * w[..., i, ...]`` (index ``i`` along dim
    ``d``) to the gradient of ``w``, i.e. ``grad += s.view(broadcast along d) * w``.
    Group-norm style regularizers are exactly this (one coefficient per channel), so a
    step costs a few kilobytes instead of a copy of the model. ``grads`` and ``scales``
    add up; either may be empty.
    """

    type: Literal["reg_grads"] = "reg_grads"
    grads: ReplyTensors
    scales: Optional[ReplyTensors] = Field(None, description="spec 1.1: per-channel scales, keys '<param>@<dim>'")

    @model_serializer(mode="wrap")
    def _omit_unset(self, handler):
        return _omit(handler(self), scales=None)


def _omit(data, **unset):
    """Drop fields newer than 1.0 that hold their default: a 1.0 peer (extra="forbid") then accepts the message."""
    if isinstance(data, dict):
        for name, default in unset.items():
            if name in data and data[name] == default:
                del data[name]
    return data


class Shutdown(Versioned):
    type: Literal["shutdown"] = "shutdown"


class ErrorReply(Versioned):
    """The method could not answer; ``message`` is one line for the result record."""

    type: Literal["error"] = "error"
    message: str = Field(max_length=2000)


HarnessMessage = Annotated[Union[Hello, ScoreRequest, RegularizeRequest, Shutdown], Field(discriminator="type")]
MethodMessage = Annotated[Union[HelloReply, ScoreReply, RegularizeReply, ErrorReply], Field(discriminator="type")]

harness_message = TypeAdapter(HarnessMessage)
method_message = TypeAdapter(MethodMessage)
