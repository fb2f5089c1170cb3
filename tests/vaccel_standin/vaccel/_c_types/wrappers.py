"""vaccel/_c_types/wrappers/*.py: int, float, str, bytes and list as C memory (ctypes here, CFFI there)."""

import ctypes
from pathlib import Path

from .types import CType, to_ctype

C_TYPES = {"int": ctypes.c_int, "int8_t": ctypes.c_int8, "int16_t": ctypes.c_int16, "int32_t": ctypes.c_int32,
           "int64_t": ctypes.c_int64, "uint8_t": ctypes.c_uint8, "uint16_t": ctypes.c_uint16,
           "uint32_t": ctypes.c_uint32, "uint64_t": ctypes.c_uint64, "float": ctypes.c_float,
           "double": ctypes.c_double, "bool": ctypes.c_bool, "char": ctypes.c_byte, "unsigned char": ctypes.c_ubyte}


class CInt(CType):
    def __init__(self, value: int, precision: str = "int"):
        self._value = int(value)
        self._precision = precision
        self._buffer = C_TYPES[precision](self._value)

    @property
    def value(self):
        return int(self._buffer.value)


class CFloat(CType):
    def __init__(self, value: float, precision: str = "float"):
        if precision not in ("float", "double"):
            raise ValueError(f"Unsupported precision: {precision}")
        self._buffer = C_TYPES[precision](float(value))

    @property
    def value(self):
        return float(self._buffer.value)


class CStr(CType):
    def __init__(self, value):
        self._buffer = ctypes.create_string_buffer(str(value).encode())

    @property
    def value(self):
        return self._buffer.value.decode()


class CBytes(CType):
    def __init__(self, data):
        self._data = data
        if isinstance(data, bytearray):
            self._buffer = (ctypes.c_char * len(data)).from_buffer(data)  # the object's own memory
        else:
            self._buffer = ctypes.create_string_buffer(bytes(data), len(data))

    @property
    def value(self):
        return self._data if isinstance(self._data, bytearray) else bytes(self._buffer.raw)


class CList(CType):
    def __init__(self, items, precision=None):
        if not items:
            raise ValueError("CList cannot be empty")
        self._items = [to_ctype(i) if precision is None else to_ctype(i, precision=precision) for i in items]
        self._item_type = type(self._items[0])
        if not all(isinstance(i, self._item_type) for i in self._items):
            raise TypeError("All elements must be of the same type")
        element = type(self._items[0]._buffer)
        if issubclass(element, ctypes.Structure):  # a list of Args: `struct vaccel_arg[n]`
            self._buffer = (element * len(self._items))(*[i._buffer for i in self._items])
        else:
            self._buffer = (element * len(self._items))(*[i._buffer.value for i in self._items])

    def __len__(self):
        return len(self._items)

    @property
    def value(self):
        return [self._buffer[i] for i in range(len(self._items))]


@to_ctype.register
def _(value: int, *, precision="int"):
    return CInt(value, precision)


@to_ctype.register
def _(value: float, *, precision="float"):
    return CFloat(value, precision)


@to_ctype.register(str)
@to_ctype.register(Path)
def _(value, *, precision=None):
    return CStr(value)


@to_ctype.register(bytes)
@to_ctype.register(bytearray)
def _(value, *, precision=None):
    return CBytes(value)


@to_ctype.register(list)
@to_ctype.register(tuple)
def _(value, *, precision=None):
    return CList(value, precision)
