"""Stand-in for vaccel-python v0.3.0 (see ../README.md)."""

from ._version import __version__
from .arg import Arg, ArgType
from .config import Config
from .op import OpType
from .plugin import PluginType
from .resource import Resource, ResourceType
from .session import Session
from .vaccel import bootstrap, cleanup

__all__ = ["Arg", "ArgType", "Config", "OpType", "PluginType", "Resource", "ResourceType", "Session", "__version__",
           "bootstrap", "cleanup"]
