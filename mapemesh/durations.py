"""Durations as manifests write them: ISO-8601 (Knative's DeliverySpec, `PT0.5S`) and Go (`60s`, `1m30s`)."""

from __future__ import annotations

import re

_ISO_DURATION = re.compile(
    r"P(?:(?P<weeks>\d+(?:\.\d+)?)W)?(?:(?P<days>\d+(?:\.\d+)?)D)?"
    r"(?:T(?:(?P<hours>\d+(?:\.\d+)?)H)?(?:(?P<minutes>\d+(?:\.\d+)?)M)?(?:(?P<seconds>\d+(?:\.\d+)?)S)?)?")
_SECONDS = {"weeks": 604800, "days": 86400, "hours": 3600, "minutes": 60, "seconds": 1}
_GO = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|μs|ms|s|m|h)")
_GO_SCALE = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "μs": 1e-6, "ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


class InvalidDuration(ValueError):
    """Not a duration of the expected form."""


def parse_iso(text: object, field: str) -> float:
    """Seconds in an ISO-8601 duration such as `PT0.5S`, `PT1M`, `P1DT2H`."""
    if not isinstance(text, str) or text in ("P", "PT") or text.endswith("T"):
        raise InvalidDuration(f"{field}: {text!r} is not an ISO-8601 duration (e.g. PT0.2S)")
    match = _ISO_DURATION.fullmatch(text)
    if match is None:
        raise InvalidDuration(f"{field}: {text!r} is not an ISO-8601 duration (e.g. PT0.2S)")
    return sum(float(v) * _SECONDS[k] for k, v in match.groupdict().items() if v)


def parse_go(text: str) -> float:
    """Seconds in a Go duration (`time.ParseDuration`) such as `60s`, `1m30s`, `500ms`, `-1.5h` or `0`."""
    sign, body = (-1.0, text[1:]) if text[:1] == "-" else (1.0, text[1:] if text[:1] == "+" else text)
    if body == "0":
        return 0.0
    parts = _GO.findall(body)
    if not parts or "".join(n + u for n, u in parts) != body:
        raise InvalidDuration(f"{text!r} is not a duration (e.g. 60s, 1m30s, 500ms)")
    return sign * sum(float(n) * _GO_SCALE[u] for n, u in parts)
