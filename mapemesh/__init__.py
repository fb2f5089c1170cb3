"""mapemesh: an autonomic control plane for the cloud-edge continuum.

A function is what functions-framework runs: a callable that takes the CloudEvents SDK's event and returns
one, or None (sync or async); no decorator needed:

    from cloudevents.http import CloudEvent

    def handle(event):
        return CloudEvent({"type": "com.example.pong", "source": "/echo"}, {"echo": event.data})

mapemesh's own stages are typed handlers, the framework owning parsing, the state store and the replies:

    import mapemesh
    from mapemesh import events

    @mapemesh.on(events.KnobApplied)
    def applied(data: events.KnobApplied, *, event, store): ...

    monitor = mapemesh.stage(__name__, source="/mapemesh/monitor")
"""

from mapemesh.eventing.cloudevent import CloudEvent
from mapemesh.serving.errors import PermanentError, TemporaryError
from mapemesh.serving.function import function
from mapemesh.serving.handlers import Reply, on, stage

__version__ = "0.1.0"
__all__ = ["CloudEvent", "PermanentError", "Reply", "TemporaryError", "__version__", "function", "on", "stage"]
