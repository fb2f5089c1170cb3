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

import functools
import logging
from collections.abc import Mapping

from mapemesh.eventing.cesql._parser import _Parser
from mapemesh.eventing.cesql._values import CesqlError, ErrorKind, Value, _Eval

log = logging.getLogger(__name__)

__all__ = ["CesqlError", "ErrorKind", "Expression", "Value", "evaluate", "parse"]

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
