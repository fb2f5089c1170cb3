"""CloudEvents SQL Expression Language (CESQL) v1.0: a parser that compiles to closures, and its evaluator.

`parse` turns an expression into an immutable `Expression` once; `Expression.evaluate` then runs it against a
CloudEvent's context attributes and extensions (a mapping of name to str, int or bool) and returns the value
together with the first error met, or None. Semantics follow https://github.com/cloudevents/spec cesql/spec.md:

* Types are Boolean, Integer (32-bit signed) and String; attribute values of other kinds (bytes, timestamps,
  ints beyond 32 bits) are Strings, and an attribute whose value is None is absent.
* Operators cast their operands implicitly (3.7); `=`/`!=`/`<>` cast the left operand to the right's type and
  `IN` casts the set elements to the left operand's type.
* Errors never stop the flow of the language: a failing operator or function yields a value of its return
  type. An operator or function whose operand reported an error (a missing attribute, say) yields the zero
  value of its own return type (false, 0 or "") and passes that first error up, so `1 / missing` is
  `0, missingAttribute`, `NOT missing` is `false, missingAttribute` and the root reports the first error.
* AND and OR short-circuit. Precedence (3.6), tightest first: function calls; unary NOT and `-`; LIKE and IN
  (postfix); `* / %`; `+ -`; comparisons; AND, OR and XOR at one level, all left to right.
"""

from __future__ import annotations

import base64
import datetime as _dt
import functools
import logging
import operator
import re
from collections.abc import Callable, Mapping
from typing import Literal, NamedTuple

__all__ = ["CesqlError", "ErrorKind", "Expression", "Value", "evaluate", "parse"]

log = logging.getLogger(__name__)

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


# ---------------------------------------------------------------------------------------------------- lexer

_Token = tuple[str, str, int]  # (kind, text or value, offset); kinds: int str name kw op eof


def _parse_error(offset: int, detail: str) -> CesqlError:
    return CesqlError("parse", f"{detail} at offset {offset}")


def _describe(token: _Token) -> str:
    kind, text, _ = token
    return {"eof": "end of expression", "str": "string literal", "int": f"integer {text}"}.get(kind, repr(text))


def _tokenize(src: str) -> list[_Token]:
    tokens: list[_Token] = []
    offset = 0
    while offset < len(src):
        found = _TOKEN.match(src, offset)
        if found is None:
            char = src[offset]
            problem = "unterminated string literal" if char in "'\"" else f"unexpected character {char!r}"
            raise _parse_error(offset, problem)
        if found["word"] is not None:
            word = found["word"]
            kind = "int" if word.isdigit() else "kw" if word.upper() in _KEYWORDS else "name"
            tokens.append((kind, word.upper() if kind == "kw" else word, offset))
        elif found["str"] is not None:  # only the escaped delimiter loses its backslash
            quote = found["str"][0]
            tokens.append(("str", found["str"][1:-1].replace("\\" + quote, quote), offset))
        elif found["op"] is not None:
            tokens.append(("op", found["op"], offset))
        offset = found.end()
    tokens.append(("eof", "", len(src)))
    return tokens


# ----------------------------------------------------------------------------------------- parser + compiler

class _Node:
    """A compiled subexpression: its evaluator, static return type, folded constant and tree height."""

    __slots__ = ("const", "depth", "fn", "typ")

    def __init__(self, fn: _Eval, typ: _Type, depth: int = 1, const: object = _NOCONST) -> None:
        self.fn, self.typ, self.depth, self.const = fn, typ, depth, const


def _constant(value: Value) -> _Node:
    result: _Result = (value, None)
    return _Node(lambda _attributes: result, type(value), 1, value)


def _as(node: _Node, target: _Type, where: str) -> _Eval:
    """An evaluator for `node` cast to `target`: the operand's error, or a cast error, comes with the zero value."""
    fn = node.fn
    if target is None or node.typ is target:
        return fn
    zero = _ZERO[target]

    def cast(attributes: Mapping[str, object]) -> _Result:
        value, err = fn(attributes)
        if err is not None:
            return zero, err
        if type(value) is target:
            return value, None
        value, problem = _cast(value, target)
        return (value, None) if problem is None else (zero, CesqlError("cast", f"{problem} {where}"))

    return cast


class _Parser:
    def __init__(self, src: str) -> None:
        self.tokens = _tokenize(src)
        self.pos = 0
        self.nest = 0

    def peek(self, ahead: int = 0) -> _Token:
        return self.tokens[min(self.pos + ahead, len(self.tokens) - 1)]

    def take(self) -> _Token:
        token = self.peek()
        self.pos = min(self.pos + 1, len(self.tokens) - 1)
        return token

    def expect(self, text: str) -> _Token:
        token = self.take()
        if token[0] != "op" or token[1] != text:
            raise _parse_error(token[2], f"expected {text!r} but found {_describe(token)}")
        return token

    def enter(self, offset: int) -> None:
        self.nest += 1
        if self.nest > _MAX_NEST:
            raise _parse_error(offset, f"expression nested more than {_MAX_NEST} levels deep")

    def make(self, fn: _Eval, typ: _Type, children: list[_Node], offset: int) -> _Node:
        """Build a node, folding it into a constant when its operands are constants and it evaluates cleanly."""
        depth = 1 + max((c.depth for c in children), default=0)
        if depth > _MAX_DEPTH:
            raise _parse_error(offset, f"expression tree deeper than {_MAX_DEPTH} levels")
        if children and all(c.const is not _NOCONST for c in children):
            value, err = fn(_EMPTY)
            if err is None:
                return _constant(value)
        return _Node(fn, typ, depth)

    # grammar, loosest first -------------------------------------------------------------------------------

    def parse(self) -> _Node:
        node = self.logic()
        token = self.peek()
        if token[0] != "eof":
            raise _parse_error(token[2], f"unexpected {_describe(token)}")
        return node

    def logic(self) -> _Node:
        left = self.binary()
        while (token := self.peek())[0] == "kw" and token[1] in ("AND", "OR", "XOR"):
            self.take()
            items = [left, self.binary()]
            while token[1] != "XOR" and self.peek()[:2] == ("kw", token[1]):
                self.take()
                items.append(self.binary())
            left = self.logical(token[1], items, token[2])
        return left

    def binary(self, level: int = 0) -> _Node:
        """Comparisons (level 0), then `+ -`, then `* / %`; each level left to right."""
        if level == len(_LEVELS):
            return self.postfix()
        left = self.binary(level + 1)
        while (token := self.peek())[0] == "op" and token[1] in _LEVELS[level]:
            self.take()
            build = self.compare if level == 0 else self.arithmetic
            left = build(token[1], left, self.binary(level + 1), token[2])
        return left

    def postfix(self) -> _Node:
        node = self.unary()
        while (token := self.peek())[0] == "kw":
            negated = token[1] == "NOT" and self.peek(1)[:2] in (("kw", "LIKE"), ("kw", "IN"))
            if negated:
                self.take()
                token = self.peek()
            if token[1] == "LIKE":
                self.take()
                pattern = self.take()
                if pattern[0] != "str":
                    raise _parse_error(pattern[2], "the LIKE pattern must be a string literal")
                node = self.like(node, pattern[1], negated, token[2])
            elif token[1] == "IN":
                self.take()
                node = self.member(node, self.arguments(token[2], allow_empty=False), negated, token[2])
            else:
                break
        return node

    def unary(self) -> _Node:
        kind, text, offset = self.peek()
        if (kind, text) == ("kw", "NOT"):
            self.take()
            self.enter(offset)
            operand = self.unary()
            self.nest -= 1
            return self.logical_not(operand, offset)
        if kind == "op" and text in ("+", "-"):
            number = self.peek(1)
            if number[0] == "int" and number[2] == offset + 1:  # a signed integer literal, e.g. -2147483648
                self.pos += 2
                return self.integer(text + number[1], offset)
            if text == "-":
                self.take()
                self.enter(offset)
                operand = self.unary()
                self.nest -= 1
                return self.negate(operand, offset)
        return self.primary()

    def primary(self) -> _Node:
        kind, text, offset = token = self.take()
        if kind == "int":
            return self.integer(text, offset)
        if kind == "str":
            return _constant(text)
        if kind == "kw" and text in ("TRUE", "FALSE"):
            return _constant(text == "TRUE")
        if kind == "kw" and text == "EXISTS":
            name = self.take()
            if name[0] != "name" or not _IDENT_RE.fullmatch(name[1]):
                raise _parse_error(name[2], f"EXISTS needs an attribute name, not {_describe(name)}")
            return self.exists(name[1].lower())
        if (kind, text) == ("op", "("):
            self.enter(offset)
            node = self.logic()
            self.expect(")")
            self.nest -= 1
            return node
        if kind == "name" and self.peek()[:2] == ("op", "("):
            if not _FUNC_RE.fullmatch(text):
                raise _parse_error(offset, f"invalid function name {text!r}")
            return self.call(text.upper(), self.arguments(offset, allow_empty=True), offset)
        if kind == "name":
            if not _IDENT_RE.fullmatch(text):
                raise _parse_error(offset, f"invalid attribute name {text!r}")
            return self.attribute(text.lower(), offset)
        raise _parse_error(offset, f"unexpected {_describe(token)}")

    def arguments(self, offset: int, allow_empty: bool) -> list[_Node]:
        self.expect("(")
        self.enter(offset)
        items: list[_Node] = []
        if not (allow_empty and self.peek()[:2] == ("op", ")")):
            items.append(self.logic())
            while self.peek()[:2] == ("op", ","):
                self.take()
                items.append(self.logic())
        self.expect(")")
        self.nest -= 1
        return items

    # compilation of each construct ------------------------------------------------------------------------

    def integer(self, text: str, offset: int) -> _Node:
        number = _int32(text)
        if number is None:
            raise _parse_error(offset, f"integer literal {text[:20]} is outside the 32-bit range")
        return _constant(number)

    def attribute(self, name: str, offset: int) -> _Node:
        message = f"attribute {name!r} is missing (at offset {offset})"

        def read(attributes: Mapping[str, object]) -> _Result:
            value = attributes.get(name)
            if value is None:
                return False, CesqlError("missingAttribute", message)
            kind = type(value)
            if kind is str or kind is bool or (kind is int and _INT_MIN <= value <= _INT_MAX):
                return value, None
            return _coerce(value), None

        return _Node(read, None)

    def exists(self, name: str) -> _Node:
        if name in _REQUIRED:
            return _constant(True)
        return _Node(lambda attributes: (attributes.get(name) is not None, None), bool)

    def strict(self, typ: _Type, operands: list[_Node], targets: list[_Type], compute: Callable[..., _Result],
               offset: int, where: str) -> _Node:
        """A node that evaluates its operands in order, each cast to its target, then `compute`s the result.

        The first operand error (or cast error) stops it and comes back with the zero value of `typ`.
        """
        zero, fns = _ZERO[typ], tuple(_as(op, t, where) for op, t in zip(operands, targets, strict=True))
        if len(fns) == 1:
            (only,) = fns

            def run(attributes: Mapping[str, object]) -> _Result:
                value, err = only(attributes)
                return (zero, err) if err is not None else compute(value)
        elif len(fns) == 2:
            left, right = fns

            def run(attributes: Mapping[str, object]) -> _Result:
                x, err = left(attributes)
                if err is not None:
                    return zero, err
                y, err = right(attributes)
                return (zero, err) if err is not None else compute(x, y)
        else:
            def run(attributes: Mapping[str, object]) -> _Result:
                values = []
                for fn in fns:
                    value, err = fn(attributes)
                    if err is not None:
                        return zero, err
                    values.append(value)
                return compute(*values)

        return self.make(run, typ, operands, offset)

    def logical_not(self, operand: _Node, offset: int) -> _Node:
        return self.strict(bool, [operand], [bool], lambda x: (not x, None), offset, f"in NOT at offset {offset}")

    def negate(self, operand: _Node, offset: int) -> _Node:
        where = f"in unary '-' at offset {offset}"
        return self.strict(int, [operand], [int], lambda x: (0, CesqlError("math", f"integer overflow {where}"))
                           if x == _INT_MIN else (-x, None), offset, where)

    def logical(self, op: str, items: list[_Node], offset: int) -> _Node:
        where = f"in {op} at offset {offset}"
        if op == "XOR":
            return self.strict(bool, items, [bool, bool], lambda x, y: (x != y, None), offset, where)
        fns, stop = tuple(_as(item, bool, where) for item in items), op == "OR"  # `stop` decides alone

        def chain(attributes: Mapping[str, object]) -> _Result:
            for fn in fns:
                value, err = fn(attributes)
                if err is not None:
                    return False, err
                if value is stop:
                    return stop, None
            return not stop, None

        return self.make(chain, bool, items, offset)

    def compare(self, op: str, left: _Node, right: _Node, offset: int) -> _Node:
        where = f"in {op!r} at offset {offset}"
        if op in _ORDERINGS:
            test = _ORDERINGS[op]
            return self.strict(bool, [left, right], [int, int], lambda x, y: (test(x, y), None), offset, where)
        unequal = op != "="

        def equality(x: Value, y: Value) -> _Result:
            if type(x) is not type(y):  # an ambiguous operator: the right operand's type decides (3.7)
                x, problem = _cast(x, type(y))
                if problem is not None:
                    return False, CesqlError("cast", f"{problem} {where}")
            return (x != y) if unequal else (x == y), None

        return self.strict(bool, [left, right], [None, None], equality, offset, where)

    def arithmetic(self, op: str, left: _Node, right: _Node, offset: int) -> _Node:
        where, calculate = f"in {op!r} at offset {offset}", _ARITHMETIC[op]

        def compute(x: int, y: int) -> _Result:
            value, problem = calculate(x, y)
            return (value, None) if problem is None else (0, CesqlError("math", f"{problem} {where}"))

        return self.strict(int, [left, right], [int, int], compute, offset, where)

    def like(self, operand: _Node, pattern: str, negated: bool, offset: int) -> _Node:
        matcher = _compile_like(pattern)
        return self.strict(bool, [operand], [str], lambda x: (matcher(x) is not negated, None), offset,
                           f"in LIKE at offset {offset}")

    def member(self, operand: _Node, items: list[_Node], negated: bool, offset: int) -> _Node:
        where, fn, fns = f"in IN at offset {offset}", operand.fn, tuple(item.fn for item in items)
        lookup: dict[type, frozenset[Value] | None] = {}
        if all(item.const is not _NOCONST for item in items):  # literal set: one hashed set per left type
            for target in (bool, int, str):
                cast = [_cast(item.const, target) for item in items]
                lookup[target] = None if any(p for _, p in cast) else frozenset(v for v, _ in cast)

        def membership(attributes: Mapping[str, object]) -> _Result:
            value, err = fn(attributes)
            if err is not None:
                return False, err
            target = type(value)
            known = lookup.get(target)
            if known is not None:
                return (value in known) is not negated, None
            for item in fns:  # like x = y1 OR x = y2 ..., with the left operand's type as the target (3.7)
                element, err = item(attributes)
                if err is not None:
                    return False, err
                if type(element) is not target:
                    element, problem = _cast(element, target)
                    if problem is not None:
                        return False, CesqlError("cast", f"{problem} {where}")
                if element == value:
                    return not negated, None
            return negated, None

        return self.make(membership, bool, [operand, *items], offset)

    def call(self, name: str, args: list[_Node], offset: int) -> _Node:
        sig = _resolve(name, len(args))
        if sig is None:
            message = f"no function {name} taking {len(args)} argument(s) (at offset {offset})"
            return _Node(lambda _attributes: (False, CesqlError("missingFunction", message)), bool)
        impl = sig.impl

        def invoke(*values: Value) -> _Result:
            value, problem = impl(*values)
            if problem is None:
                return value, None
            return value, CesqlError(problem[0], f"{name}: {problem[1]} (at offset {offset})")

        targets = [*sig.params, *(sig.rest * (len(args) - len(sig.params)))]
        return self.strict(sig.returns, args, targets, invoke, offset, f"in argument of {name} at offset {offset}")


# --------------------------------------------------------------------------------------------------- public

class Expression:
    """A parsed CESQL expression; immutable, thread-safe and reusable."""

    __slots__ = ("_fn", "source")
    source: str

    def __init__(self, source: str, fn: _Eval) -> None:
        object.__setattr__(self, "source", source)
        object.__setattr__(self, "_fn", fn)

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError("Expression is immutable")

    def __delattr__(self, name: str) -> None:
        raise AttributeError("Expression is immutable")

    def __repr__(self) -> str:
        return f"Expression({self.source!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Expression) and other.source == self.source

    def __hash__(self) -> int:
        return hash(self.source)

    def evaluate(self, attributes: Mapping[str, object]) -> tuple[Value, CesqlError | None]:
        """Evaluate against an event's attributes; return the value and the first error (or None)."""
        try:
            return self._fn(attributes)
        except Exception as exc:  # a misbehaving Mapping, say: evaluation stays total
            log.debug("CESQL evaluation of %r failed", self.source, exc_info=True)
            return False, CesqlError("generic", f"{type(exc).__name__}: {exc}")

    def matches(self, attributes: Mapping[str, object]) -> bool:
        """True only when the expression evaluates to Boolean true without any error (a filter's verdict)."""
        value, err = self.evaluate(attributes)
        return err is None and value is True


def parse(expression: str) -> Expression:
    """Parse and compile `expression`; raise CesqlError(kind="parse") naming the offset of the problem."""
    if not isinstance(expression, str):
        raise TypeError(f"a CESQL expression must be a str, not {type(expression).__name__}")
    try:
        node = _Parser(expression).parse()
    except RecursionError:
        raise CesqlError("parse", "expression nested too deeply") from None
    return Expression(expression, node.fn)


_parse_cached = functools.lru_cache(maxsize=512)(parse)


def evaluate(expression: str, attributes: Mapping[str, object]) -> tuple[Value, CesqlError | None]:
    """Parse (with a small cache) and evaluate; a parse error comes back as (False, CesqlError("parse"))."""
    try:
        compiled = _parse_cached(expression)
    except CesqlError as err:
        return False, err
    return compiled.evaluate(attributes)
