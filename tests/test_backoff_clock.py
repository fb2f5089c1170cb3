"""The dispatcher waits exactly the DeliverySpec's backoff between retries (checked with a fake clock)."""

from __future__ import annotations

import asyncio
import shutil

import pytest
import yaml
from aiohttp import web

from mapemesh.eventing.brokers import BrokerRegistry
from mapemesh.eventing.cloudevent import CloudEvent
from mapemesh.eventing.delivery import Dispatcher
from mapemesh.eventing.ingress import Ingress
from mapemesh.eventing.log import EventLog
from mapemesh.eventing.stats import BrokerMetrics
from mapemesh.eventing.triggers import Resolver

from .conftest import REPO
from .subscriber import Subscriber


class FakeClock:
    """Virtual time that only moves when the dispatcher sleeps."""

    def __init__(self) -> None:
        self.now = 1_000_000.0
        self.sleeps: list[float] = []

    def time(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(round(seconds, 6))
        self.now += seconds
        await asyncio.sleep(0)


@pytest.mark.parametrize(("policy", "expected"), [
    ("exponential", [1.0, 2.0, 4.0]),  # delay * 2^(n-1) before retry n
    ("linear", [1.0, 2.0]),  # delay * (n-1): the first retry does not wait
])
def test_backoff_between_retries(tmp_path, policy, expected):
    sub = Subscriber(handlers={"/down": lambda rec: web.Response(status=503)})
    manifests = tmp_path / "knative"
    shutil.copytree(REPO / "knative", manifests)
    (manifests / "t.yaml").write_text(yaml.safe_dump({
        "apiVersion": "eventing.knative.dev/v1", "kind": "Trigger",
        "metadata": {"name": "down", "namespace": "default"},
        "spec": {"broker": "default", "subscriber": {"uri": sub.url + "/down"},
                 "delivery": {"retry": 3, "backoffPolicy": policy, "backoffDelay": "PT1S"}}}))
    clock = FakeClock()

    async def main():
        log = EventLog(tmp_path / "log.db")
        registry = BrokerRegistry(manifests)
        metrics = BrokerMetrics()
        dispatcher = Dispatcher(log, Ingress(registry, log), registry, Resolver(tmp_path, ""), metrics, clock)
        await dispatcher.start()
        event = CloudEvent({"specversion": "1.0", "id": "e1", "source": "/s", "type": "t",
                            "knativebrokerttl": 255})
        routes = dispatcher.routes("default/default", [event])
        assert routes == [["default/down"]]
        seqs = await log.append("default/default", [event], routes)
        dispatcher.accepted("default/default", [event], seqs, routes)
        for _ in range(500):
            if metrics.snapshot().get("default/down", {}).get("dropped"):
                break
            await asyncio.sleep(0.01)
        counts = metrics.snapshot()["default/down"]
        await dispatcher.stop()
        await log.close()
        return counts

    try:
        counts = asyncio.run(main())
    finally:
        sub.close()
    assert clock.sleeps == expected
    assert counts["retried"] == 3 and counts["dropped"] == 1
    assert len(sub.at("/down")) == 4
