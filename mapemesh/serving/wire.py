"""Frames between the local host and a function process: a JSON header and raw data bytes.

Frame: 8-byte big-endian lengths (header, data), then the header (JSON) and the data. A request's header is
`{"id": N, "attrs": {...}}`; an answer's is `{"id": N, "ok": true, "attrs": {...} | null}` or
`{"id": N, "ok": false, "error": "..."}`.
"""

from __future__ import annotations

import asyncio
import socket
import struct
from typing import Any

import orjson

_LENGTHS = struct.Struct(">II")


def encode(header: dict[str, Any], data: bytes | None) -> bytes:
    """One frame."""
    head = orjson.dumps(header)
    body = data or b""
    return _LENGTHS.pack(len(head), len(body)) + head + body


async def read(reader: asyncio.StreamReader) -> tuple[dict[str, Any], bytes] | None:
    """The next frame, or None when the stream ended or broke."""
    try:
        lengths = await reader.readexactly(_LENGTHS.size)
        head_len, data_len = _LENGTHS.unpack(lengths)
        head = await reader.readexactly(head_len)
        data = await reader.readexactly(data_len) if data_len else b""
        return orjson.loads(head), data
    except (asyncio.IncompleteReadError, ConnectionError, OSError, orjson.JSONDecodeError):
        return None  # the other side is gone (or mangled the stream): the same for the caller


def read_blocking(sock: socket.socket) -> tuple[dict[str, Any], bytes] | None:
    """`read` on a blocking socket (a function process that serves on its main thread), reading no byte past the
    frame; None when the stream ended or broke."""
    try:
        head_len, data_len = _LENGTHS.unpack(_exactly(sock, _LENGTHS.size))
        head = _exactly(sock, head_len)
        return orjson.loads(head), _exactly(sock, data_len) if data_len else b""
    except (EOFError, OSError, orjson.JSONDecodeError):
        return None


def _exactly(sock: socket.socket, size: int) -> bytes:
    buffer = bytearray(size)
    view, got = memoryview(buffer), 0
    while got < size:
        n = sock.recv_into(view[got:], size - got)
        if n == 0:
            raise EOFError
        got += n
    return bytes(buffer)
