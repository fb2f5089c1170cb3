"""Trigger filters exactly as Knative evaluates them.

Two forms: the legacy `filter.attributes` (exact, case-sensitive; an empty value means "present and
non-empty") and the CloudEvents Subscriptions API `filters` list (`exact`, `prefix`, `suffix`, `all`, `any`,
`not`, `cesql`; one dialect per element; the list is ANDed). `filters` overrides `filter` when both are set.

Like Knative, evaluation is three-valued: a filter passes, fails, or has no opinion (an empty `all` or
`any`); an event is delivered unless the result is a failure.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

Attributes = Mapping[str, object]
_LEGACY_KEY = re.compile(r"[a-z][a-z0-9]*")
DIALECTS = ("exact", "prefix", "suffix", "all", "any", "not", "cesql")


class InvalidFilter(ValueError):
    """A filter Knative would reject; the message says which part and why."""


class Result(enum.Enum):
    PASS = "pass"
    FAIL = "fail"
    NONE = "none"

    def and_(self, other: Result) -> Result:
        if self is Result.FAIL or other is Result.FAIL:
            return Result.FAIL
        return other if self is Result.NONE else self

    def or_(self, other: Result) -> Result:
        if self is Result.PASS or other is Result.PASS:
            return Result.PASS
        return other if self is Result.NONE else self


Predicate = Callable[[Attributes], Result]


@dataclass(frozen=True, slots=True)
class Filter:
    """A compiled trigger filter. `types` is set when every matching event must have one of those types."""

    evaluate: Predicate
    types: frozenset[str] | None = None

    @property
    def exact_type(self) -> str | None:
        """The one type every matching event has, when there is exactly one."""
        return next(iter(self.types)) if self.types is not None and len(self.types) == 1 else None

    def matches(self, attributes: Attributes) -> bool:
        """Whether an event with these attributes is delivered."""
        return self.evaluate(attributes) is not Result.FAIL


def _as_text(value: object) -> str | None:
    if value is None:
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _attribute_map(spec: object, where: str) -> dict[str, str]:
    if not isinstance(spec, dict) or not spec:
        raise InvalidFilter(f"{where}: must be a non-empty map of attribute to value")
    if len(spec) != 1:  # knative/eventing pkg/apis/eventing/v1/trigger_validation.go, ValidateSingleAttributeMap
        raise InvalidFilter(f"{where}: multiple items found, can have only one key-value (one filter per attribute: "
                            f"{', '.join(repr(k) for k in spec)})")
    out = {}
    for key, value in spec.items():
        if not isinstance(key, str) or not key or not isinstance(value, str) or not value:
            raise InvalidFilter(f"{where}: attribute and value can't be empty (got {key!r}: {value!r})")
        out[key] = value
    return out


def _exact(spec: dict[str, str]) -> Predicate:
    items = tuple(spec.items())

    def run(attrs: Attributes) -> Result:
        for key, want in items:
            if _as_text(attrs.get(key)) != want:
                return Result.FAIL
        return Result.PASS

    return run


def _affix(spec: dict[str, str], prefix: bool) -> Predicate:
    items = tuple(spec.items())

    def run(attrs: Attributes) -> Result:
        for key, part in items:
            value = _as_text(attrs.get(key))
            if value is None or not (value.startswith(part) if prefix else value.endswith(part)):
                return Result.FAIL
        return Result.PASS

    return run


def _fold(parts: list[Predicate], combine: Callable[[Result, Result], Result], decided: Result) -> Predicate:
    """`all` (and_, stops at FAIL) or `any` (or_, stops at PASS); an empty list has no opinion."""

    def run(attrs: Attributes) -> Result:
        result = Result.NONE
        for part in parts:
            result = combine(result, part(attrs))
            if result is decided:
                return result
        return result

    return run


def _all(parts: list[Predicate]) -> Predicate:
    return _fold(parts, Result.and_, Result.FAIL)


def _any(parts: list[Predicate]) -> Predicate:
    return _fold(parts, Result.or_, Result.PASS)


def _not(part: Predicate) -> Predicate:
    flip = {Result.PASS: Result.FAIL, Result.FAIL: Result.PASS, Result.NONE: Result.NONE}

    def run(attrs: Attributes) -> Result:
        return flip[part(attrs)]

    return run


def _cesql(expression: object, where: str) -> Predicate:
    if not isinstance(expression, str) or not expression.strip():
        raise InvalidFilter(f"{where}: must be a non-empty CESQL expression")
    from mapemesh.eventing import cesql  # the parser is only loaded by brokers that use it

    try:
        compiled = cesql.parse(expression)
    except cesql.CesqlError as exc:
        raise InvalidFilter(f"{where}: {exc.message}") from None

    def run(attrs: Attributes) -> Result:
        return Result.PASS if compiled.matches(attrs) else Result.FAIL

    return run


def _compile_one(element: object, where: str) -> Predicate:
    if not isinstance(element, dict):
        raise InvalidFilter(f"{where}: must be a mapping with one dialect ({', '.join(DIALECTS)})")
    dialects = [k for k in element if element[k] is not None]
    unknown = [k for k in dialects if k not in DIALECTS]
    if unknown:
        raise InvalidFilter(f"{where}: unknown dialect {unknown[0]!r} (known: {', '.join(DIALECTS)})")
    if not dialects:  # Knative admits an element with no dialect; it filters nothing out
        return lambda attrs: Result.NONE
    if len(dialects) > 1:  # knative/eventing pkg/apis/eventing/v1/trigger_validation.go, ValidateOneOf
        raise InvalidFilter(f"{where}: multiple dialects found, filters can have only one dialect set "
                            f"({', '.join(dialects)})")
    dialect = dialects[0]
    spec = element[dialect]
    here = f"{where}.{dialect}"
    if dialect == "exact":
        return _exact(_attribute_map(spec, here))
    if dialect in ("prefix", "suffix"):
        return _affix(_attribute_map(spec, here), dialect == "prefix")
    if dialect in ("all", "any"):
        if not isinstance(spec, list):
            raise InvalidFilter(f"{here}: must be a list of filters")
        parts = [_compile_one(e, f"{here}[{i}]") for i, e in enumerate(spec)]
        return _all(parts) if dialect == "all" else _any(parts)
    if dialect == "not":
        return _not(_compile_one(spec, here))
    return _cesql(spec, here)


def _legacy(attributes: object) -> Predicate:
    if not isinstance(attributes, dict):
        raise InvalidFilter("filter.attributes: must be a map of attribute to value")
    items = []
    for key, value in attributes.items():
        if not isinstance(key, str) or not _LEGACY_KEY.fullmatch(key):
            raise InvalidFilter(f"filter.attributes: key {key!r} must match ^[a-z][a-z0-9]*$")
        if not isinstance(value, str):
            raise InvalidFilter(f"filter.attributes.{key}: value must be a string")
        items.append((key, value))

    def run(attrs: Attributes) -> Result:
        for key, want in items:
            value = _as_text(attrs.get(key))
            if want == "":
                if not value:
                    return Result.FAIL
            elif value != want:
                return Result.FAIL
        return Result.PASS

    return run


def compile_trigger_filter(filter_: object = None, filters: object = None) -> Filter:
    """Compile a Trigger's `spec.filter` and `spec.filters`; raise InvalidFilter naming the bad part."""
    if filters is not None and not isinstance(filters, list):
        raise InvalidFilter("filters: must be a list")
    if filters:  # an empty `filters` list does not override `filter` (Knative uses it only when non-empty)
        parts = [_compile_one(e, f"filters[{i}]") for i, e in enumerate(filters)]
        return Filter(_all(parts), _types_of_all(filters))
    if filter_ is not None:
        if not isinstance(filter_, dict):
            raise InvalidFilter("filter: must be a mapping with `attributes`")
        attributes = filter_.get("attributes") or {}
        predicate = _legacy(attributes)
        wanted = attributes.get("type")
        return Filter(predicate, frozenset([wanted]) if isinstance(wanted, str) and wanted else None)
    return Filter(lambda attrs: Result.NONE)


def _types_of_all(filters: list[Any]) -> frozenset[str] | None:
    """The types a match of these ANDed filters can have (None: any): what every element allows."""
    found: frozenset[str] | None = None
    for element in filters:
        types = _types_of(element)
        if types is not None:
            found = types if found is None else found & types
    return found


def _types_of(element: Any) -> frozenset[str] | None:
    """The types a match of one filter expression can have (None: not known from `exact` alone)."""
    if not isinstance(element, dict):
        return None
    exact = element.get("exact")
    if isinstance(exact, dict) and isinstance(exact.get("type"), str):
        return frozenset([exact["type"]])
    if isinstance(element.get("all"), list):
        return _types_of_all(element["all"])
    if isinstance(element.get("any"), list) and element["any"]:
        alternatives = [_types_of(e) for e in element["any"]]
        if all(a is not None for a in alternatives):
            return frozenset().union(*alternatives)  # type: ignore[arg-type]
    return None
