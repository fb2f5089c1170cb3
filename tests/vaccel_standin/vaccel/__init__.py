"""Stand-in for vaccel-python v0.3.0 (see ../README.md)."""

from ._version import __version__
from .arg import Arg, ArgType
from .plugin import PluginType
from .resource import Resource, ResourceType
from .session import Session

__all__ = ["Arg", "ArgType", "PluginType", "Resource", "ResourceType", "Session", "__version__"]
