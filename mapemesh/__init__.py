"""mapemesh: an autonomic control plane for the cloud-edge continuum.

A function is a plain callable that takes a CloudEvent and returns a reply CloudEvent or None:

    import mapemesh

    @mapemesh.function
    def monitor(event: mapemesh.CloudEvent) -> mapemesh.CloudEvent | None: ...
"""

from mapemesh.eventing.cloudevent import CloudEvent
from mapemesh.serving.function import PermanentError, function

__version__ = "0.1.0"
__all__ = ["CloudEvent", "PermanentError", "__version__", "function"]
