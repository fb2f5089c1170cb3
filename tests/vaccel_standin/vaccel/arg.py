"""vaccel/arg.py: ArgType (libvaccel's VACCEL_ARG_*), ArgTypeMapper and Arg."""

import ctypes
from enum import IntEnum

from ._c_types import CAny, CType
from ._libvaccel import Struct

_NAMES = ["RAW", "INT8", "INT8_ARRAY", "INT16", "INT16_ARRAY", "INT32", "INT32_ARRAY", "INT64", "INT64_ARRAY",
          "UINT8", "UINT8_ARRAY", "UINT16", "UINT16_ARRAY", "UINT32", "UINT32_ARRAY", "UINT64", "UINT64_ARRAY",
          "FLOAT32", "FLOAT32_ARRAY", "FLOAT64", "FLOAT64_ARRAY", "BOOL", "BOOL_ARRAY", "CHAR", "CHAR_ARRAY", "UCHAR",
          "UCHAR_ARRAY", "STRING", "BUFFER", "CUSTOM", "MAX"]
ArgType = IntEnum("ArgType", {name: value for value, name in enumerate(_NAMES)})


class ArgTypeMapper:
    _ARG_TYPE_TO_C = {"INT8": "int8_t", "INT16": "int16_t", "INT32": "int32_t", "INT64": "int64_t",
                      "UINT8": "uint8_t", "UINT16": "uint16_t", "UINT32": "uint32_t", "UINT64": "uint64_t",
                      "FLOAT32": "float", "FLOAT64": "double", "BOOL": "bool", "CHAR": "char",
                      "UCHAR": "unsigned char", "STRING": "char *", "BUFFER": "void *"}
    _NUMERIC_TYPES = frozenset(n for n in _ARG_TYPE_TO_C if n not in ("BOOL", "CHAR", "UCHAR", "STRING", "BUFFER"))

    @classmethod
    def is_numeric(cls, arg_type) -> bool:
        return ArgType(arg_type).name.removesuffix("_ARRAY") in cls._NUMERIC_TYPES

    @classmethod
    def type_to_c_type(cls, arg_type) -> str:
        name = ArgType(arg_type).name.removesuffix("_ARRAY")
        if name not in cls._ARG_TYPE_TO_C:
            raise ValueError(f"Unsupported ArgType: {arg_type}")
        return cls._ARG_TYPE_TO_C[name]


class Arg(CType):
    def __init__(self, data, type_=ArgType.RAW, custom_type_id: int = 0):
        self._type = ArgType(type_)
        self._custom_type_id = custom_type_id
        if self._type != ArgType.RAW and ArgTypeMapper.is_numeric(self._type):
            self._c_data = CAny(data, precision=ArgTypeMapper.type_to_c_type(self._type))
        else:
            self._c_data = CAny(data)
        self._buffer = Struct(self._c_data._c_ptr, self._c_data.c_size, int(self._type), custom_type_id, False)

    @property
    def value(self):
        return self._buffer

    @property
    def buf(self):
        return self._c_data.value

    @property
    def type(self):
        return ArgType(self._buffer.type)

    def __repr__(self):
        return f"<Arg size={self._buffer.size} type={self.type.name} at {hex(ctypes.addressof(self._buffer))}>"
