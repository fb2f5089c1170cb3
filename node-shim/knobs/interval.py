"""The `TelemetryInterval` knob: how often the node shim reports telemetry is itself a knob.

Command: `{"command": "set", "interval": "5s" | "500ms" | 5}` (a Go-style duration, or seconds) or
`{"command": "reset"}` (back to the interval the shim started with). Between `MIN_S` and `MAX_S`.
"""

from __future__ import annotations

from typing import Any

from mapemesh.durations import InvalidDuration, parse_go
from mapemesh.node_shim.knobs.base import Command, InvalidCommand, check_keys

MIN_S, MAX_S = 0.1, 3600.0


class TelemetryInterval:
    """The reporting interval, in memory; the reporter reads `seconds` before each report."""

    name = "TelemetryInterval"

    def __init__(self, seconds: float = 5.0):
        if not MIN_S <= seconds <= MAX_S:
            raise ValueError(f"telemetry interval must be within {MIN_S:g}..{MAX_S:g} s, got {seconds:g}")
        self.initial = self.seconds = float(seconds)
        self.changed = False

    def get_options(self) -> dict[str, Any]:
        return {"min_s": MIN_S, "max_s": MAX_S, "commands": ["set", "reset"]}

    def get_state(self) -> dict[str, Any]:
        return {"interval_s": self.seconds}

    def apply(self, command: Command) -> dict[str, Any]:
        options = self.get_options()
        check_keys(command, {"command", "interval"}, options)
        action = command.get("command", "set")
        if action == "reset":
            self.changed, self.seconds = self.seconds != self.initial, self.initial
            return self.get_state()
        if action != "set":
            raise InvalidCommand(f"command must be 'set' or 'reset', not {action!r}", options=options)
        raw = command.get("interval")
        try:
            seconds = float(raw) if isinstance(raw, int | float) and not isinstance(raw, bool) else parse_go(str(raw))
        except (InvalidDuration, ValueError):
            raise InvalidCommand(f"interval {raw!r} is not a duration (5s, 500ms) or a number of seconds",
                                 options=options) from None
        if not MIN_S <= seconds <= MAX_S:
            raise InvalidCommand(f"interval must be within {MIN_S:g}..{MAX_S:g} s, got {seconds:g}", options=options)
        self.changed, self.seconds = self.seconds != seconds, seconds
        return self.get_state()
