"""The function the cold-start benchmark invokes: it says when it started and when its event arrived.

Written for functions-framework (the CloudEvents SDK's event in and out), as a user writes one: the figures
include mapemesh's conversion at the boundary. `native` is the same on the invocation path mapemesh had before
functions took the SDK's event (mapemesh's own event, the sync function in the process's worker thread), the
baseline `bench/coldstart.py` measures beside it in the same run."""

import time

from cloudevents.http import CloudEvent


def probe(event: CloudEvent) -> CloudEvent:
    """Reply at once with the handler's start time and the event's arrival time at the broker."""
    started = time.time()
    return CloudEvent({"id": "re-" + event["id"], "source": "/bench/probe", "type": "io.mapemesh.bench.probed",
                       "started": repr(started), "arrived": event.get("knativearrivaltime", "")})


class _Native:
    """The same probe on the previous invocation path: mapemesh's own event (no conversion at the boundary), the
    sync function run in the process's thread pool, the process serving on an event loop (an `Invocable` that is
    not a `Function` gets `zygote.serve`), as every function process did before."""

    name = "native"

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        return None

    async def call(self, event, executor=None):  # type: ignore[no-untyped-def]
        # In the process's thread pool, as a sync function ran before.
        if executor is None:
            return self._probe(event)
        import asyncio

        return await asyncio.get_running_loop().run_in_executor(executor, self._probe, event)

    @staticmethod
    def _probe(event):  # type: ignore[no-untyped-def]
        from mapemesh import CloudEvent as Native

        started = time.time()
        return Native({"specversion": "1.0", "id": "re-" + event.id, "source": "/bench/probe",
                       "type": "io.mapemesh.bench.probed", "started": repr(started),
                       "arrived": str(event.attributes.get("knativearrivaltime", ""))})


native = _Native()
