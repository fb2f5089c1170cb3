"""vaccel/ops/exec.py: exec and exec_with_resource, through the exec plugin."""

import ctypes
import errno

from .. import _libvaccel
from .._c_types import CList
from ..arg import Arg
from ..error import FFIError
from ..resource import ResourceType


class ExecMixin:
    def exec(self, library, symbol, arg_read=None, arg_write=None):
        self._op("noop", "exec", message="Exec operation failed")
        return self._exec(str(library), symbol, arg_read, arg_write, "Exec operation failed")

    def exec_with_resource(self, resource, symbol, arg_read=None, arg_write=None):
        self._op("noop", "exec", message="Exec with resource operation failed")
        if resource._type != ResourceType.LIB:
            raise FFIError(errno.EINVAL, "Exec with resource operation failed")
        if not resource.is_registered(self):
            raise FFIError(errno.EPERM, "Exec with resource operation failed")
        return self._exec(resource._paths[0], symbol, arg_read, arg_write, "Exec with resource operation failed")

    def _exec(self, library, symbol, arg_read, arg_write, message):
        rd = CList([a if isinstance(a, Arg) else Arg(a) for a in arg_read]) if arg_read is not None else None
        wr = CList([a if isinstance(a, Arg) else Arg(a) for a in arg_write]) if arg_write is not None else None
        if self._plugin[0] == "exec":
            ret = _libvaccel.exec_plugin(library, symbol, _structs(rd), len(rd or ()),
                                         _structs(wr), len(wr or ()))
            if ret:
                raise FFIError(ret, message)
        if wr is None:
            return None
        return [a.buf for a in wr._items]


def _structs(clist):
    """The address of the contiguous `struct vaccel_arg[n]` vaccel-python's CList of Args is (NULL for None)."""
    return None if clist is None else ctypes.addressof(clist._buffer)
