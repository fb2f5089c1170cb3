"""The ingress body-size limit: 413 above it, at least 64 KiB always accepted."""

from __future__ import annotations

import uuid

import httpx
import pytest

from mapemesh.eventing.log import read_all
from mapemesh.settings import Settings


def headers() -> dict[str, str]:
    return {"ce-specversion": "1.0", "ce-id": str(uuid.uuid4()), "ce-source": "/t", "ce-type": "t",
            "content-type": "application/octet-stream"}


def test_default_limit_is_one_mebibyte(shared_broker):
    ok = headers()
    assert httpx.post(shared_broker.ingress, headers=ok, content=b"x" * (1024 * 1024)).status_code == 202
    big = headers()
    r = httpx.post(shared_broker.ingress, headers=big, content=b"x" * (1024 * 1024 + 1))
    assert r.status_code == 413
    assert not [e for e in read_all(shared_broker.log_file) if e.event.id == big["ce-id"]]


def test_configured_limit_and_chunked_bodies(broker_factory):
    b = broker_factory("--max-event-bytes", str(64 * 1024))
    assert httpx.post(b.ingress, headers=headers(), content=b"x" * (64 * 1024)).status_code == 202
    assert httpx.post(b.ingress, headers=headers(), content=b"x" * (64 * 1024 + 1)).status_code == 413

    def chunks(n: int):
        for _ in range(n):
            yield b"y" * 1024

    # No Content-Length: the limit still holds while the body streams in.
    assert httpx.post(b.ingress, headers=headers(), content=chunks(64)).status_code == 202
    assert httpx.post(b.ingress, headers=headers(), content=chunks(65)).status_code == 413


def test_limit_below_64k_is_refused():
    with pytest.raises(ValueError, match="64 KiB"):
        Settings.load(environ={}, max_event_bytes=1000)
