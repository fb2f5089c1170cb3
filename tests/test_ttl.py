"""Re-published replies carry the parent's TTL minus one; a reply whose TTL reaches 0 is dropped."""

from __future__ import annotations

import asyncio

from mapemesh.eventing.brokers import BrokerRegistry
from mapemesh.eventing.cloudevent import CloudEvent
from mapemesh.eventing.ingress import ARRIVAL, TTL, Ingress
from mapemesh.eventing.log import EventLog, read_all

from .conftest import REPO


def event(i: str, **ext) -> CloudEvent:
    return CloudEvent({"specversion": "1.0", "id": i, "source": "/s", "type": "t", **ext})


def test_republish_decrements_ttl_and_drops_at_zero(tmp_path):
    async def main():
        log = EventLog(tmp_path / "log.db")
        ingress = Ingress(BrokerRegistry(REPO / "knative"), log)
        seq = await ingress.republish("default/default", event("r1"), event("p1", knativebrokerttl=255))
        default = await ingress.republish("default/default", event("r2"), event("p2"))
        dropped = await ingress.republish("default/default", event("r3"), event("p3", knativebrokerttl="1"))
        await log.close()
        return seq, default, dropped

    seq, default, dropped = asyncio.run(main())
    assert seq is not None and default is not None and dropped is None
    stored = {e.event.id: e.event for e in read_all(tmp_path / "log.db")}
    assert stored["r1"].get(TTL) == 254 and stored["r2"].get(TTL) == 254
    assert stored["r1"].get(ARRIVAL)
    assert "r3" not in stored
