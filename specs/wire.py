"""Framing of messages on the exchange socket (both sides use this module).

A frame is an 8-byte big-endian length followed by that many bytes of UTF-8
JSON. The reader enforces a size limit *before* reading the body, so a
hostile peer cannot make the other side allocate without bound.
"""

from __future__ import annotations

import json
import socket
import struct
import time

MAX_FRAME_BYTES = 64 * 1024 * 1024  # JSON only; tensors travel in files
_HEADER = struct.Struct(">Q")


class WireError(Exception):
    """The peer broke the framing: closed early, sent too much, or sent non-JSON."""


class WireTimeout(WireError):
    """The peer did not answer before the deadline."""


def send(sock: socket.socket, payload: dict) -> None:
    body = json.dumps(payload, separators=(",", ":"), allow_nan=False).encode()
    sock.sendall(_HEADER.pack(len(body)) + body)


def _recv_exact(sock: socket.socket, n: int, deadline: float | None) -> bytes:
    chunks, got = [], 0
    while got < n:
        if deadline is not None:
            left = deadline - time.monotonic()
            if left <= 0:
                raise WireTimeout("no reply before the deadline")
            sock.settimeout(left)
        try:
            chunk = sock.recv(min(n - got, 1 << 20))
        except socket.timeout:
            raise WireTimeout("no reply before the deadline") from None
        except OSError as e:
            raise WireError(f"connection broken ({e.strerror or e})") from None
        if not chunk:
            raise WireError("peer closed the connection")
        chunks.append(chunk)
        got += len(chunk)
    return b"".join(chunks)


def recv(sock: socket.socket, timeout: float | None = None, max_bytes: int = MAX_FRAME_BYTES) -> dict:
    """Read one frame; raises WireTimeout / WireError with a one-line reason."""
    deadline = None if timeout is None else time.monotonic() + timeout
    (size,) = _HEADER.unpack(_recv_exact(sock, _HEADER.size, deadline))
    if size > max_bytes:
        raise WireError(f"message of {size} bytes exceeds the {max_bytes}-byte limit")
    body = _recv_exact(sock, size, deadline)
    try:
        payload = json.loads(body.decode("utf-8"), parse_constant=_reject_constant)
    except (UnicodeDecodeError, ValueError) as e:
        raise WireError(f"message is not valid JSON ({str(e).splitlines()[0][:120]})") from None
    if not isinstance(payload, dict):
        raise WireError("message is not a JSON object")
    return payload


def _reject_constant(name: str):
    raise ValueError(f"{name} is not allowed in messages")
