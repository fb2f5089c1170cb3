"""CESQL values: types, errors, implicit casts, LIKE patterns and the built-in functions."""

from __future__ import annotations

import base64
import datetime as _dt
import operator
import re
from collections.abc import Callable, Mapping
from typing import Literal, NamedTuple

ErrorKind = Literal["parse", "math", "cast", "missingFunction", "functionEvaluation", "missingAttribute", "generic"]
Value = bool | int | str


class CesqlError(Exception):
    """A CESQL error: raised by `parse` (kind "parse"), returned by evaluation (every other kind)."""

    kind: ErrorKind
    message: str

    def __init__(self, kind: ErrorKind, message: str) -> None:
        super().__init__(kind, message)
        self.kind = kind
        self.message = message

    def __str__(self) -> str:
        return f"{self.kind} error: {self.message}"


_Result = tuple[Value, CesqlError | None]
_Eval = Callable[[Mapping[str, object]], _Result]
_Type = type[bool] | type[int] | type[str] | None  # None: not known before evaluation (an attribute)
_Out = tuple[Value, tuple[ErrorKind, str] | None]  # a built-in function's value and problem, if any

_INT_MIN, _INT_MAX = -(2**31), 2**31 - 1
_MAX_NEST = 50  # parentheses, unary operators and argument lists nested in one another
_MAX_DEPTH = 150  # height of the compiled tree (chains of AND or of OR are flattened and don't count)
_REQUIRED = frozenset({"id", "source", "specversion", "type"})  # EXISTS is always true for these (3.4.4)
_KEYWORDS = frozenset({"AND", "OR", "XOR", "NOT", "LIKE", "IN", "EXISTS", "TRUE", "FALSE"})
_LEVELS = (frozenset({"=", "!=", "<>", "<", "<=", ">", ">="}), frozenset("+-"), frozenset("*/%"))
_INT_RE = re.compile(r"[+-]?[0-9]+")
_LIKE_TOKEN = re.compile(r"(\\(?=[%_]))?(.)", re.DOTALL)  # a character, and whether a backslash escapes it
_TOKEN = re.compile(r"""[ \t\r\n]+|(?P<word>[A-Za-z0-9_]+)|(?P<str>'(?:\\.|[^'\\])*'|"(?:\\.|[^"\\])*")
                       |(?P<op>!=|<>|<=|>=|[()+\-*/%=<>,])""", re.VERBOSE | re.DOTALL)
_IDENT_RE = re.compile(r"[A-Za-z0-9]+")
_FUNC_RE = re.compile(r"[A-Za-z][A-Za-z_]*")
# Unicode White_Space; str.strip() would also remove U+001C..U+001F, which are control characters (3.5.1).
_WHITESPACE = "\t\n\x0b\x0c\r \x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008\u2009\u200a" \
              "\u2028\u2029\u202f\u205f\u3000"
_ZERO: dict[_Type, Value] = {bool: False, int: 0, str: "", None: False}
_NOCONST = object()
_EMPTY: Mapping[str, object] = {}


# ---------------------------------------------------------------------------------------------- values and casts

def _cast(value: Value, target: _Type) -> tuple[Value, str | None]:
    """Cast a CESQL value to `target` (3.7); on failure return the zero value and a message."""
    kind = type(value)
    if target is None or kind is target:
        return value, None
    if target is str:
        return ("true" if value else "false") if kind is bool else str(value), None
    if target is int:
        if kind is bool:
            return int(value), None
        if not _INT_RE.fullmatch(value):
            return 0, f"cannot cast string {value!r} to Integer"
        number = _int32(value)
        return (0, f"string {value!r} is out of the 32-bit Integer range") if number is None else (number, None)
    if kind is int:
        return value != 0, None
    lowered = value.lower()
    if lowered in ("true", "false"):
        return lowered == "true", None
    return False, f"cannot cast string {value!r} to Boolean"


def _int32(digits: str) -> int | None:
    """The value of an optionally signed run of decimal digits, or None outside the 32-bit range."""
    if len(digits.lstrip("+-0")) > 10:  # also keeps int() away from its 4300-digit limit
        return None
    number = int(digits)
    return number if _INT_MIN <= number <= _INT_MAX else None


def _coerce(value: object) -> Value:
    """Represent an attribute value that is not exactly str or bool as a CESQL value (3.2)."""
    if isinstance(value, bool):
        return bool(value)
    if isinstance(value, int):
        return int(value) if _INT_MIN <= value <= _INT_MAX else str(int(value))
    if isinstance(value, str):
        return str.__str__(value)
    if isinstance(value, bytes | bytearray | memoryview):
        return base64.b64encode(bytes(value)).decode("ascii")
    if isinstance(value, _dt.datetime):
        return value.isoformat()
    return str(value)


def _checked(number: int) -> tuple[int, str | None]:
    return (number, None) if _INT_MIN <= number <= _INT_MAX else (0, "integer overflow")


def _quotient(x: int, y: int) -> int:
    """Division truncated towards zero (so the remainder takes the dividend's sign)."""
    return -(abs(x) // abs(y)) if (x < 0) != (y < 0) else abs(x) // abs(y)


_ARITHMETIC: dict[str, Callable[[int, int], tuple[int, str | None]]] = {
    "+": lambda x, y: _checked(x + y), "-": lambda x, y: _checked(x - y), "*": lambda x, y: _checked(x * y),
    "/": lambda x, y: (0, "division by zero") if y == 0 else _checked(_quotient(x, y)),
    "%": lambda x, y: (0, "modulo by zero") if y == 0 else (x - y * _quotient(x, y), None),
}
_ORDERINGS: dict[str, Callable[[int, int], bool]] = {"<": operator.lt, "<=": operator.le, ">": operator.gt,
                                                    ">=": operator.ge}


# ------------------------------------------------------------------------------------------------------ LIKE

def _compile_like(pattern: str) -> Callable[[str], bool]:
    """Compile a LIKE pattern (`%` any run, `_` one character, `\\%` and `\\_` literal) into a matcher.

    Between `%`s the pattern has fixed-length pieces, so matching each piece at its leftmost place is exact and
    runs in O(len(value) * len(pattern)); no backtracking regular expression is built.
    """
    pieces: list[list[str]] = [[]]  # each piece as regex fragments, one per character
    for escaped, char in _LIKE_TOKEN.findall(pattern):
        if char == "%" and not escaped:
            pieces.append([])
        else:
            pieces[-1].append("." if char == "_" and not escaped else re.escape(char))
    regexes = [re.compile("".join(piece), re.DOTALL) for piece in pieces]
    if len(regexes) == 1:
        return lambda value: regexes[0].fullmatch(value) is not None
    first, last, middle, head, tail = regexes[0], regexes[-1], regexes[1:-1], len(pieces[0]), len(pieces[-1])

    def match(value: str) -> bool:
        start, end = head, len(value) - tail
        if end < start or first.match(value) is None or last.match(value, end) is None:
            return False
        for piece in middle:
            hit = piece.search(value, start, end)
            if hit is None:
                return False
            start = hit.end()
        return True

    return match


# ------------------------------------------------------------------------------------------------- functions

def _abs(x: int) -> _Out:
    return (_INT_MAX, ("math", "the absolute value of -2147483648 overflows")) if x == _INT_MIN else (abs(x), None)


def _left(x: str, n: int) -> _Out:
    return (x, ("functionEvaluation", f"negative length {n}")) if n < 0 else (x[:n], None)


def _right(x: str, n: int) -> _Out:
    if n < 0:
        return x, ("functionEvaluation", f"negative length {n}")
    return (x, None) if n >= len(x) else (x[len(x) - n:], None)


def _substring(x: str, pos: int, length: int | None = None) -> _Out:
    if pos > len(x) or pos < -len(x):
        return "", ("functionEvaluation", f"position {pos} is outside a string of length {len(x)}")
    if length is not None and length < 0:
        return "", ("functionEvaluation", f"negative length {length}")
    if pos == 0:
        return "", None
    begin = pos - 1 if pos > 0 else len(x) + pos
    return (x[begin:] if length is None else x[begin:begin + length]), None


def _caster(target: _Type) -> Callable[[Value], _Out]:
    def cast(x: Value) -> _Out:
        value, problem = _cast(x, target)
        return value, None if problem is None else ("cast", problem)
    return cast


def _pure(fn: Callable[..., Value]) -> Callable[..., tuple[Value, None]]:
    return lambda *args: (fn(*args), None)


class _Signature(NamedTuple):
    params: tuple[_Type, ...]  # fixed parameters
    rest: tuple[_Type, ...]  # () or the type of the variadic tail
    returns: _Type
    impl: Callable[..., _Out]


_FUNCTIONS: dict[str, tuple[_Signature, ...]] = {
    "ABS": (_Signature((int,), (), int, _abs),),
    "LENGTH": (_Signature((str,), (), int, _pure(len)),),
    "CONCAT": (_Signature((), (str,), str, _pure(lambda *xs: "".join(xs))),),
    "CONCAT_WS": (_Signature((str,), (str,), str, _pure(lambda sep, *xs: sep.join(xs))),),
    "LOWER": (_Signature((str,), (), str, _pure(str.lower)),),
    "UPPER": (_Signature((str,), (), str, _pure(str.upper)),),
    "TRIM": (_Signature((str,), (), str, _pure(lambda x: x.strip(_WHITESPACE))),),
    "LEFT": (_Signature((str, int), (), str, _left),),
    "RIGHT": (_Signature((str, int), (), str, _right),),
    "SUBSTRING": (_Signature((str, int), (), str, _substring), _Signature((str, int, int), (), str, _substring)),
    "INT": (_Signature((None,), (), int, _caster(int)),),
    "BOOL": (_Signature((None,), (), bool, _caster(bool)),),
    "STRING": (_Signature((None,), (), str, _caster(str)),),
    "IS_BOOL": (_Signature((str,), (), bool, _pure(lambda x: _cast(x, bool)[1] is None)),),
    "IS_INT": (_Signature((str,), (), bool, _pure(lambda x: _cast(x, int)[1] is None)),),
}


def _resolve(name: str, arity: int) -> _Signature | None:
    """Dispatch by name and arity (3.5): an exact fixed arity first, then a variadic overload."""
    overloads = _FUNCTIONS.get(name, ())
    for sig in overloads:
        if not sig.rest and len(sig.params) == arity:
            return sig
    for sig in overloads:
        if sig.rest and arity >= len(sig.params):
            return sig
    return None


