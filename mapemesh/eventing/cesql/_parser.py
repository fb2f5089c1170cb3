"""CESQL lexer and parser: compiles an expression into closures over the values module."""

from __future__ import annotations

from collections.abc import Callable, Mapping

from mapemesh.eventing.cesql._values import (
    _ARITHMETIC,
    _EMPTY,
    _FUNC_RE,
    _IDENT_RE,
    _INT_MAX,
    _INT_MIN,
    _KEYWORDS,
    _LEVELS,
    _MAX_DEPTH,
    _MAX_NEST,
    _NOCONST,
    _ORDERINGS,
    _REQUIRED,
    _TOKEN,
    _ZERO,
    CesqlError,
    Value,
    _cast,
    _coerce,
    _compile_like,
    _Eval,
    _int32,
    _resolve,
    _Result,
    _Type,
)

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


