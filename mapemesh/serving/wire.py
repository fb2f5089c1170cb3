"""Frames between the local host and a function process: a JSON header and raw data bytes.

Frame: 8-byte big-endian lengths (header, data), then the header (JSON) and the data. A request's header is
`{"id": N, "attrs": {...}}`; an answer's is `{"id": N, "ok": true, "attrs": {...} | null}` or
`{"id": N, "ok": false, "error": "..."}`.
"""

from __future__ import annotations

import asyncio
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
    """The next frame, or None at end of stream."""
    try:
        lengths = await reader.readexactly(_LENGTHS.size)
    except asyncio.IncompleteReadError:
        return None
    head_len, data_len = _LENGTHS.unpack(lengths)
    try:
        head = await reader.readexactly(head_len)
        data = await reader.readexactly(data_len) if data_len else b""
    except asyncio.IncompleteReadError:
        return None
    return orjson.loads(head), data
