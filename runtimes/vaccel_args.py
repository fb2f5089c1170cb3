"""`exec` arguments as vaccel-python passes them, for mapemesh's local exec backend and the real bindings alike.

One C function must read the same bytes whichever path calls it, so the local backend encodes exactly as
vaccel-python v0.3.0 does (`vaccel/arg.py`, `vaccel/_c_types/wrappers/*.py`):

| given                                 | vAccel type | bytes the C function gets                  | written back as   |
|---------------------------------------|-------------|--------------------------------------------|-------------------|
| `bytes`, `bytearray`                  | RAW (0)     | the bytes                                  | bytes (bytearray: |
|                                       |             |                                            | filled in place)  |
| `int` (and `bool`)                    | RAW (0)     | a C `int`, 4 bytes                         | int               |
| `float`                               | RAW (0)     | a C `float`, 4 bytes (rounded to float32)  | float             |
| `str`, `Path`                         | RAW (0)     | UTF-8 and a NUL                            | str, to the NUL   |
| non-empty list/tuple of ints, floats | RAW (0)     | a C array of them (`[1, 2]`: 8 bytes)      | list              |
| `Arg(value, ArgType.X)`, X numeric    | X           | X's C type (`INT64`: `int64_t`, `FLOAT64`: | X's Python value  |
| (INTn, UINTn, FLOAT32/64, arrays)     |             | `double`, `_ARRAY`: an array of it)        |                   |
| `Arg(value, ArgType.X)`, X any other  | X           | as the untyped value above                 | as above          |

Anything else (a dict, None, an empty list, a list of mixed types) is refused as vaccel-python refuses it ("No
CType wrapper registered for ...", "CList cannot be empty", "All elements must be of the same type"), as a
`ValueError` here that the session raises as `VaccelError` with EINVAL.
"""

from __future__ import annotations

import struct
from enum import IntEnum
from pathlib import Path
from typing import Any


class ArgType(IntEnum):
    """vAccel's `vaccel_arg_type` (libvaccel `src/include/vaccel/arg.h`; MAX is the enum's guard)."""

    RAW = 0
    INT8 = 1
    INT8_ARRAY = 2
    INT16 = 3
    INT16_ARRAY = 4
    INT32 = 5
    INT32_ARRAY = 6
    INT64 = 7
    INT64_ARRAY = 8
    UINT8 = 9
    UINT8_ARRAY = 10
    UINT16 = 11
    UINT16_ARRAY = 12
    UINT32 = 13
    UINT32_ARRAY = 14
    UINT64 = 15
    UINT64_ARRAY = 16
    FLOAT32 = 17
    FLOAT32_ARRAY = 18
    FLOAT64 = 19
    FLOAT64_ARRAY = 20
    BOOL = 21
    BOOL_ARRAY = 22
    CHAR = 23
    CHAR_ARRAY = 24
    UCHAR = 25
    UCHAR_ARRAY = 26
    STRING = 27
    BUFFER = 28
    CUSTOM = 29
    MAX = 30


SCALARS = {"INT8": "b", "INT16": "h", "INT32": "i", "INT64": "q", "UINT8": "B", "UINT16": "H", "UINT32": "I",
           "UINT64": "Q", "FLOAT32": "f", "FLOAT64": "d"}
"""The numeric ArgTypes (vaccel-python's `ArgTypeMapper._NUMERIC_TYPES`, their arrays too) and their C types as
`struct` codes (native sizes: int8_t .. uint64_t, float, double). Only these change how a value is encoded; any
other type (RAW, BUFFER, BOOL, CHAR, UCHAR, STRING, ...) tags the value, which is encoded as an untyped one is."""


def _numeric(kind: ArgType) -> str | None:
    return SCALARS.get(kind.name.removesuffix("_ARRAY"))


class Arg:
    """An `exec` argument: a plain value (encoded as vaccel-python encodes untyped values, table above) or, with
    `type_`, a value of that vAccel type on both paths."""

    __slots__ = ("data", "type", "typed")

    def __init__(self, data: Any, type_: ArgType | int | None = None):
        self.data = data
        self.typed = type_ is not None
        self.type = ArgType(type_) if type_ is not None else ArgType.RAW
        if self.type in (ArgType.CUSTOM, ArgType.MAX):
            raise ValueError(f"argument type {self.type.name} is not supported")

    def __repr__(self) -> str:
        return f"Arg({self.data!r:.40}{', ArgType.' + self.type.name if self.typed else ''})"


def as_arg(value: Any) -> Arg:
    return value if isinstance(value, Arg) else Arg(value)


def _code(value: Any) -> str:
    """vaccel-python's wrapper for an untyped value, as a `struct` code ('s' for bytes, 'z' for a string)."""
    if isinstance(value, bytes | bytearray):
        return "s"
    if isinstance(value, int):  # bool too: vaccel-python wraps it as the int it is
        return "i"
    if isinstance(value, float):
        return "f"
    if isinstance(value, str | Path):
        return "z"
    raise ValueError(f"No CType wrapper registered for {type(value)}")


def _list_code(items: Any) -> str:
    if not items:
        raise ValueError("CList cannot be empty")
    codes = {_code(item) for item in items}
    if len(codes) != 1:
        raise ValueError("All elements must be of the same type")
    (code,) = codes
    if code not in "if":
        raise ValueError(f"a list of {type(items[0]).__name__} cannot be passed as a C array (numbers only)")
    return code


def encode(arg: Arg) -> bytes:
    """The bytes the C function gets for `arg` (ValueError: vaccel-python would refuse it too)."""
    data, kind = arg.data, arg.type
    code = _numeric(kind) if arg.typed else None
    if code is None:
        return _encode_untyped(data)
    try:
        if kind.name.endswith("_ARRAY"):
            return struct.pack(f"={len(data)}{code}", *data)
        return struct.pack(f"={code}", data)
    except (struct.error, TypeError) as exc:
        raise ValueError(f"{data!r:.40} is not a {kind.name} value: {exc}") from None


def _encode_untyped(data: Any) -> bytes:
    if isinstance(data, list | tuple):
        return struct.pack(f"={len(data)}{_list_code(data)}", *data)
    code = _code(data)
    if code == "s":
        return bytes(data)
    if code == "z":
        return str(data).encode() + b"\0"
    return struct.pack(f"={code}", data)


def decode(arg: Arg, raw: bytes) -> Any:
    """The Python value vaccel-python gives back for write argument `arg` whose buffer now holds `raw`."""
    data, kind = arg.data, arg.type
    code = _numeric(kind) if arg.typed else None
    if code is None:
        return _decode_untyped(data, raw)
    if kind.name.endswith("_ARRAY"):
        return list(struct.unpack(f"={len(raw) // struct.calcsize(code)}{code}", raw))
    return struct.unpack(f"={code}", raw)[0]


def _decode_untyped(data: Any, raw: bytes) -> Any:
    if isinstance(data, list | tuple):
        return list(struct.unpack(f"={len(data)}{_list_code(data)}", raw))
    code = _code(data)
    if code == "s":
        if isinstance(data, bytearray):
            data[:] = raw
            return data
        return bytes(raw)
    if code == "z":
        return raw.split(b"\0", 1)[0].decode(errors="replace")
    return struct.unpack(f"={code}", raw)[0]


def to_real(arg: Any, vaccel: Any) -> Any:
    """`arg` for the real bindings: a plain value as it is (vaccel-python wraps it as RAW), a typed `Arg` as
    `vaccel.Arg(data, vaccel.ArgType.X)`."""
    if not isinstance(arg, Arg):
        return arg
    if not arg.typed:
        return arg.data
    return vaccel.Arg(arg.data, getattr(vaccel.ArgType, arg.type.name))
