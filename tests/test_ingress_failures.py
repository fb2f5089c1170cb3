"""When the log cannot store an event, the sender learns it (503) and may retry; nothing is half-stored."""

from __future__ import annotations

import asyncio

import aiohttp
from aiohttp import web

from mapemesh.eventing.brokers import BrokerRegistry
from mapemesh.eventing.ingress import Ingress

from .conftest import REPO


class BrokenLog:
    appended = commits = 0

    async def append(self, broker, events):
        raise OSError("disk full")


def test_storage_failure_answers_503_with_retry_after():
    async def main():
        ingress = Ingress(BrokerRegistry(REPO / "knative"), BrokenLog())  # type: ignore[arg-type]
        runner = web.ServerRunner(ingress.server())
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = runner.addresses[0][1]
        headers = {"ce-specversion": "1.0", "ce-id": "1", "ce-source": "/s", "ce-type": "t"}
        try:
            async with aiohttp.ClientSession() as http, \
                    http.post(f"http://127.0.0.1:{port}/default/default", headers=headers) as r:
                return r.status, r.headers.get("Retry-After"), await r.json()
        finally:
            await runner.cleanup()

    status, retry_after, body = asyncio.run(main())
    assert status == 503 and retry_after == "1" and "retry" in body["error"]
