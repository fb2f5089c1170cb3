"""mapemesh: an autonomic control plane for the cloud-edge continuum."""

__version__ = "0.1.0"
