"""The node shim's core: its knobs, one change at a time per knob, and a journal of every apply.

Every apply is recorded in `journal.jsonl` (time, knob, command, values before and after, who asked, the
plan, and the error for a refused or failed one). The drivers write nothing for a command already in
effect (`changed` is then False); the shim reports such an apply as a no-op. `Baselines` keeps what a
knob's reset goes back to (the settings found the first time the shim ran on the node) across restarts.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import os
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from mapemesh.node_shim.knobs.base import Command, HardwareError, InvalidCommand, Knob, KnobError

log = logging.getLogger(__name__)


class UnknownKnob(KnobError):
    """No knob by that name on this node."""

    code = "unknown_knob"


@dataclass(frozen=True, slots=True)
class Applied:
    """One apply that took effect (or changed nothing: `noop`)."""

    knob: str
    command: Command
    before: dict[str, Any]
    after: dict[str, Any]
    noop: bool
    requested_by: str
    plan_id: str | None = None
    at: float = field(default_factory=time.time)


class Journal:
    """An append-only JSON-lines record of applies, flushed line by line."""

    def __init__(self, path: Path):
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()

    def record(self, entry: dict[str, Any]) -> None:
        line = json.dumps(entry, default=str, separators=(",", ":")) + "\n"
        with self._lock, open(self.path, "a", encoding="utf-8") as f:
            f.write(line)

    def read(self, limit: int | None = None) -> list[dict[str, Any]]:
        """The entries, oldest first (the last `limit` ones)."""
        if not self.path.exists():
            return []
        lines = self.path.read_text(encoding="utf-8").split("\n")[:-1]  # complete lines only
        return [json.loads(line) for line in (lines[-limit:] if limit else lines) if line.strip()]


def _check_finite(value: Any, knob: Knob) -> None:
    """InvalidCommand for NaN or infinity anywhere in a command (JSON parsers let them through)."""
    if isinstance(value, float) and not math.isfinite(value):
        raise InvalidCommand(f"{value!r} is not a number a knob can take", options=knob.get_options())
    if isinstance(value, dict):
        for item in value.values():
            _check_finite(item, knob)
    elif isinstance(value, list):
        for item in value:
            _check_finite(item, knob)


class Baselines:
    """What each knob's reset goes back to, saved the first time the shim sees the node (a restart keeps it)."""

    def __init__(self, path: Path):
        self.path = path

    def apply(self, knobs: dict[str, Knob]) -> None:
        """Give knobs the baselines saved before; save the ones not saved yet."""
        try:
            saved = json.loads(self.path.read_text(encoding="utf-8")) if self.path.exists() else {}
        except (OSError, ValueError) as exc:
            log.error("%s is unreadable (%s): reset goes back to what the knobs found now", self.path, exc)
            return
        changed = False
        for name, knob in knobs.items():
            baseline, restore = getattr(knob, "baseline", None), getattr(knob, "restore_baseline", None)
            if baseline is None or restore is None:
                continue
            if name in saved:
                restore(saved[name])
            else:
                saved[name], changed = baseline(), True
        if changed:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.path.with_name(self.path.name + ".tmp")
            tmp.write_text(json.dumps(saved, indent=1), encoding="utf-8")
            os.replace(tmp, self.path)


class NodeShim:
    """The knobs of one node."""

    def __init__(self, node: str, knobs: dict[str, Knob], journal: Journal):
        self.node = node
        self.knobs = knobs
        self.journal = journal
        self._locks = {name: asyncio.Lock() for name in knobs}

    def knob(self, name: str) -> Knob:
        """The knob, or UnknownKnob naming the ones there are."""
        knob = self.knobs.get(name)
        if knob is None:
            raise UnknownKnob(f"node {self.node} has no knob {name!r} (it has: {', '.join(sorted(self.knobs))})")
        return knob

    async def describe(self, name: str) -> dict[str, Any]:
        """{"options", "state"} of one knob."""
        knob = self.knob(name)
        options, state = await asyncio.gather(asyncio.to_thread(knob.get_options), asyncio.to_thread(knob.get_state))
        return {"options": options, "state": state}

    async def apply(self, name: str, command: Command, *, requested_by: str, plan_id: str | None = None) -> Applied:
        """Apply `command` to knob `name`; KnobError when it was refused or failed (recorded either way)."""
        entry: dict[str, Any] = {"at": time.time(), "node": self.node, "knob": name, "command": command,
                                 "requested_by": requested_by, "plan_id": plan_id}
        try:
            knob = self.knob(name)
            _check_finite(command, knob)
            async with self._locks[name]:
                before = await asyncio.to_thread(knob.get_state)
                entry["before"] = before
                try:
                    after = await asyncio.to_thread(knob.apply, command)
                except KnobError:
                    raise
                except Exception as exc:  # a driver bug must still end as a recorded, reported failure
                    log.exception("%s failed unexpectedly", name)
                    raise HardwareError(f"{name} failed: {type(exc).__name__}: {exc}") from exc
        except KnobError as exc:
            entry.update(error=str(exc), code=exc.code, rolled_back=exc.rolled_back)
            self.journal.record(entry)
            log.warning("%s %s refused: %s", name, json.dumps(command, default=str), exc)
            raise
        # Not `after == before`: the state holds live readings (current frequency, energy) that always move.
        noop = not getattr(knob, "changed", after != before)
        applied = Applied(name, command, before, after, noop, requested_by, plan_id, entry["at"])
        self.journal.record({**entry, **asdict(applied)})
        log.info("%s %s by %s: %s", name, json.dumps(command), requested_by, "no change" if applied.noop else "applied")
        return applied
