"""Test functions served by the local host and by functions-framework, written as functions-framework users write
them: the CloudEvents SDK's event in, an SDK event (or None) out."""

import asyncio
import os
import time

from cloudevents.http import CloudEvent

import mapemesh


@mapemesh.function
def echo(event: CloudEvent) -> CloudEvent | None:
    """Reply with the same data; some event types misbehave on purpose."""
    kind = event["type"]
    if kind == "crash":
        os._exit(3)
    if kind.endswith("crash-once"):
        marker = event.get("marker")
        if marker and not os.path.exists(marker):
            open(marker, "w").close()
            os._exit(3)
    if kind == "slow":
        time.sleep(float(event.get("seconds", "1")))
    if kind == "boom":
        raise RuntimeError("boom")
    if kind == "busy":
        raise mapemesh.TemporaryError("busy", delay=2.5)
    if kind == "quiet":
        return None
    return CloudEvent({"id": "re-" + event["id"], "source": "/echo", "type": "echoed", "pid": str(os.getpid()),
                       "started": repr(time.time())}, event.data)


async def aecho(event: CloudEvent) -> CloudEvent:
    """An async function (no decorator: a plain callable is a function too)."""
    await asyncio.sleep(0)
    return CloudEvent({"id": "a-" + event["id"], "source": "/aecho", "type": "echoed"})
