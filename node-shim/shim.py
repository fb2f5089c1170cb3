"""The node shim's core: its knobs, one change at a time per knob, and a journal of every apply.

Every apply is recorded in `journal.jsonl` (time, knob, command, values before and after, who asked, the
plan, and the error for a refused or failed one). The drivers write nothing for a command already in
effect; the shim reports such an apply as a no-op.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from mapemesh.node_shim.knobs.base import Command, Knob, KnobError

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
        lines = self.path.read_text(encoding="utf-8").splitlines()
        return [json.loads(line) for line in (lines[-limit:] if limit else lines) if line.strip()]


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
            async with self._locks[name]:
                before = await asyncio.to_thread(knob.get_state)
                entry["before"] = before
                after = await asyncio.to_thread(knob.apply, command)
        except KnobError as exc:
            entry.update(error=str(exc), code=exc.code, rolled_back=exc.rolled_back)
            self.journal.record(entry)
            log.warning("%s %s refused: %s", name, json.dumps(command), exc)
            raise
        applied = Applied(name, command, before, after, after == before, requested_by, plan_id, entry["at"])
        self.journal.record({**entry, **asdict(applied)})
        log.info("%s %s by %s: %s", name, json.dumps(command), requested_by, "no change" if applied.noop else "applied")
        return applied
