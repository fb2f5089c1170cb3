"""Test functions served by the local host (and by functions-framework)."""

import asyncio
import os
import time

import mapemesh
from mapemesh import CloudEvent


@mapemesh.function
def echo(event: CloudEvent) -> CloudEvent | None:
    """Reply with the same data; some event types misbehave on purpose."""
    if event.type == "crash":
        os._exit(3)
    if event.type.endswith("crash-once"):
        marker = event.attributes.get("marker")
        if marker and not os.path.exists(str(marker)):
            open(str(marker), "w").close()
            os._exit(3)
    if event.type == "slow":
        time.sleep(float(str(event.attributes.get("seconds", "1"))))
    if event.type == "boom":
        raise RuntimeError("boom")
    if event.type == "quiet":
        return None
    return CloudEvent({"specversion": "1.0", "id": "re-" + event.id, "source": "/echo", "type": "echoed",
                       "pid": str(os.getpid()), "started": repr(time.time())}, event.data)


@mapemesh.function
async def aecho(event: CloudEvent) -> CloudEvent:
    """An async function."""
    await asyncio.sleep(0)
    return CloudEvent({"specversion": "1.0", "id": "a-" + event.id, "source": "/aecho", "type": "echoed"})
