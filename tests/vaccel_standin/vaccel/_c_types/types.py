"""vaccel/_c_types/types.py: the wrapper registry (`to_ctype`, a singledispatch) and `CAny`."""

from functools import singledispatch
from typing import Any


class CType:
    """A Python value held as C memory: `_c_ptr` (its address), `c_size`, `value` (read back)."""

    _buffer: Any = None

    @property
    def _c_ptr(self):
        return None if self._buffer is None else __import__("ctypes").addressof(self._buffer)

    @property
    def c_size(self):
        return __import__("ctypes").sizeof(self._buffer)


class CAny(CType):
    def __init__(self, obj, *, precision=None):
        self._wrapped = to_ctype(obj) if precision is None else to_ctype(obj, precision=precision)

    @property
    def _c_ptr(self):
        return self._wrapped._c_ptr

    @property
    def c_size(self):
        return self._wrapped.c_size

    @property
    def value(self):
        return self._wrapped.value


@singledispatch
def to_ctype(value: Any, *, precision: str | None = None):
    _ = precision
    msg = f"No CType wrapper registered for {type(value)}"
    raise TypeError(msg)


@to_ctype.register
def _(value: CType, *, precision=None):
    return value
