"""Framing of messages on the exchange socket (both sides use this module).

A frame is an 8-byte big-endian length followed by that many bytes: UTF-8 JSON
for messages (:func:`send` / :func:`recv`), or raw bytes for the tensors of a
spec-1.3 inline reply (:func:`send_blob` / :func:`recv_blob`). The reader
enforces a size limit *before* reading the body (:class:`FrameTooLarge`), so a
hostile peer cannot make the other side allocate without bound.
"""

from __future__ import annotations

import json
import socket
import struct
import time

#: the socket the harness listens on, in the exchange directory
SOCKET_NAME = "pbench.sock"
MAX_FRAME_BYTES = 64 * 1024 * 1024  # JSON only; tensors travel in files
_HEADER = struct.Struct(">Q")


class WireError(Exception):
    """The peer broke the framing: closed early, sent too much, or sent non-JSON."""


class WireTimeout(WireError):
    """The peer did not answer before the deadline."""


class FrameTooLarge(WireError):
    """The peer announced a frame above the reader's limit; its body was not read."""

    def __init__(self, size: int, limit: int):
        super().__init__(f"message of {size} bytes exceeds the {limit}-byte limit")
        self.size, self.limit = size, limit


def send(sock: socket.socket, payload: dict) -> None:
    body = json.dumps(payload, separators=(",", ":"), allow_nan=False).encode()
    sock.sendall(_HEADER.pack(len(body)) + body)


def send_blob(sock: socket.socket, data: bytes) -> None:
    sock.sendall(_HEADER.pack(len(data)))
    sock.sendall(data)


def _recv_exact(sock: socket.socket, n: int, deadline: float | None) -> bytes:
    buf = bytearray(n)
    view, got = memoryview(buf), 0
    while got < n:
        if deadline is not None:
            left = deadline - time.monotonic()
            if left <= 0:
                raise WireTimeout("no reply before the deadline")
            sock.settimeout(left)
        try:
            k = sock.recv_into(view[got:], min(n - got, 1 << 20))
        except socket.timeout:
            raise WireTimeout("no reply before the deadline") from None
        except OSError as e:
            raise WireError(f"connection broken ({e.strerror or e})") from None
        if not k:
            raise WireError("peer closed the connection")
        got += k
    return bytes(buf)


def recv_blob(sock: socket.socket, timeout: float | None = None, max_bytes: int = MAX_FRAME_BYTES) -> bytes:
    """Read one raw frame of at most ``max_bytes``; raises FrameTooLarge before reading a larger body."""
    deadline = None if timeout is None else time.monotonic() + timeout
    (size,) = _HEADER.unpack(_recv_exact(sock, _HEADER.size, deadline))
    if size > max_bytes:
        raise FrameTooLarge(size, max_bytes)
    return _recv_exact(sock, size, deadline)


def recv(sock: socket.socket, timeout: float | None = None, max_bytes: int = MAX_FRAME_BYTES) -> dict:
    """Read one JSON frame; raises WireTimeout / WireError with a one-line reason."""
    body = recv_blob(sock, timeout, max_bytes)
    try:
        payload = json.loads(body.decode("utf-8"), parse_constant=_reject_constant)
    except (UnicodeDecodeError, ValueError) as e:
        raise WireError(f"message is not valid JSON ({str(e).splitlines()[0][:120]})") from None
    if not isinstance(payload, dict):
        raise WireError("message is not a JSON object")
    return payload


def _reject_constant(name: str):
    raise ValueError(f"{name} is not allowed in messages")
