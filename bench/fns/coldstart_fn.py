"""The function the cold-start benchmark invokes: it says when it started and when its event arrived."""

import time

import mapemesh
from mapemesh import CloudEvent


@mapemesh.function
def probe(event: CloudEvent) -> CloudEvent:
    """Reply at once with the handler's start time and the event's arrival time at the broker."""
    started = time.time()
    return CloudEvent({"specversion": "1.0", "id": "re-" + event.id, "source": "/bench/probe",
                       "type": "io.mapemesh.bench.probed", "started": repr(started),
                       "arrived": str(event.attributes.get("knativearrivaltime", ""))})
