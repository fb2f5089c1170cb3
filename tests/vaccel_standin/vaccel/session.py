"""vaccel/session.py: Session(flags) and its operations (vaccel/ops/*.py mixins), over the simulated libvaccel."""

import errno
import itertools

from . import _libvaccel
from .error import FFIError
from .plugin import PluginType

_ids = itertools.count(1)


class BaseSession:
    def __init__(self, flags=0):
        self._flags = PluginType(flags)
        self._plugin = _libvaccel.plugin_find(int(flags))
        if self._plugin is None:  # "No plugins registered": VACCEL_ENOTSUP
            raise FFIError(errno.ENOTSUP, "Could not init session")
        self._id = next(_ids)
        self._registered = []

    @property
    def id(self):
        return self._id

    @property
    def remote_id(self):
        return 0

    @property
    def flags(self):
        return self._flags

    @property
    def is_remote(self):
        return self._plugin[2]

    def has_resource(self, resource) -> bool:
        return resource in self._registered

    def _op(self, *plugins, message):
        if self._plugin[0] not in plugins:  # the session's plugin does not implement the op
            raise FFIError(errno.ENOTSUP, message)


from .ops.exec import ExecMixin  # noqa: E402
from .ops.image import ImageMixin  # noqa: E402
from .ops.noop import NoopMixin  # noqa: E402
from .ops.torch import TorchMixin  # noqa: E402


class Session(BaseSession, NoopMixin, ExecMixin, ImageMixin, TorchMixin):
    """vaccel/session.py: a session with every op mixin."""
