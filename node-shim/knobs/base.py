"""The knob contract (MLSysOps mechanisms: `apply`, `get_state`, `get_options`) and safe writes to sysfs.

A knob driver validates every command against its options before it writes anything; a change that spans
several files goes through a `Transaction`, which puts back every file it changed when a later write
fails (`rolled_back` is true only when every one could be put back; one that could not is logged). Each
driver sets `changed` after an apply: False when the command was already in effect and nothing was written.
Drivers raise `KnobError` subclasses; the shim turns them into `knob.failed` events and HTTP answers.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, ClassVar, Literal, Protocol, runtime_checkable

log = logging.getLogger(__name__)

Code = Literal["invalid", "unsupported", "permission", "hardware", "timeout", "unknown_knob"]
Command = dict[str, Any]


class KnobError(Exception):
    """A command that was not applied. Nothing is left half-done: `rolled_back` says a partial change was undone."""

    code: ClassVar[Code] = "hardware"

    def __init__(self, message: str, *, options: dict[str, Any] | None = None, rolled_back: bool = False):
        super().__init__(message)
        self.options = options
        self.rolled_back = rolled_back


class InvalidCommand(KnobError):
    """The command does not fit the knob's options (nothing was written); `options` lists the valid ones."""

    code = "invalid"


class Unsupported(KnobError):
    """The hardware or driver cannot do this (no such file, NVML_ERROR_NOT_SUPPORTED, ...)."""

    code = "unsupported"


class PermissionDenied(KnobError):
    """The shim may not change this (not root, NVML_ERROR_NO_PERMISSION, ...)."""

    code = "permission"


class HardwareError(KnobError):
    """A write failed for another reason."""

    code = "hardware"


@runtime_checkable
class Knob(Protocol):
    """An MLSysOps mechanism: what can be set (`get_options`), what is set (`get_state`), and `apply`.

    `apply` validates the command against `get_options` first (InvalidCommand, nothing written), applies
    it, and returns the state after. Applying the command that is already in effect writes nothing.
    """

    name: str

    def get_options(self) -> dict[str, Any]: ...

    def get_state(self) -> dict[str, Any]: ...

    def apply(self, command: Command) -> dict[str, Any]: ...


class Sysfs:
    """Files under a root: `/` on a real machine, a simulated tree in development and tests."""

    def __init__(self, root: Path | str = "/"):
        self.root = Path(root)

    def path(self, relative: str) -> Path:
        """The file at `relative` (written as under `/`, e.g. `sys/devices/system/cpu/cpu0/cpufreq`)."""
        return self.root / relative.lstrip("/")

    def exists(self, relative: str) -> bool:
        return self.path(relative).exists()

    def read(self, relative: str) -> str:
        """The file's content, stripped; Unsupported when it is missing, PermissionDenied when unreadable."""
        try:
            return self.path(relative).read_text().strip()
        except FileNotFoundError:
            raise Unsupported(f"{self.path(relative)} does not exist") from None
        except PermissionError:
            raise PermissionDenied(f"cannot read {self.path(relative)}") from None
        except OSError as exc:
            raise HardwareError(f"reading {self.path(relative)}: {exc}") from None

    def read_int(self, relative: str) -> int:
        text = self.read(relative)
        try:
            return int(text)
        except ValueError:
            raise HardwareError(f"{self.path(relative)} holds {text!r}, not an integer") from None

    def write(self, relative: str, value: str | int) -> None:
        """Write one value (as sysfs takes it: the text, no newline needed); typed errors."""
        path = self.path(relative)
        try:
            with open(path, "w") as f:
                f.write(str(value))
        except FileNotFoundError:
            raise Unsupported(f"{path} does not exist") from None
        except PermissionError:
            raise PermissionDenied(f"cannot write {path} (the shim needs root for sysfs knobs)") from None
        except OSError as exc:  # EINVAL and EBUSY are how the kernel refuses a value
            raise HardwareError(f"writing {value!r} to {path}: {exc.strerror or exc}") from None

    @contextmanager
    def transaction(self) -> Iterator[Transaction]:
        """Writes that all happen or none: on an exception every file written is put back, newest first."""
        tx = Transaction(self)
        try:
            yield tx
        except KnobError as exc:
            exc.rolled_back = tx.rollback() or exc.rolled_back
            raise
        except Exception:
            tx.rollback()
            raise


class Transaction:
    """The files a change wrote, with their values before, to put back on failure."""

    def __init__(self, sysfs: Sysfs):
        self.sysfs = sysfs
        self.undo: list[tuple[str, str]] = []

    def write(self, relative: str, value: str | int) -> None:
        """Write, remembering the old value (only the first time a file is written in this transaction)."""
        before = self.sysfs.read(relative)
        self.sysfs.write(relative, value)
        if relative not in {r for r, _ in self.undo}:
            self.undo.append((relative, before))

    def rollback(self) -> bool:
        """Put every written file back (newest first); True when every one was put back."""
        complete = bool(self.undo)
        for relative, before in reversed(self.undo):
            try:
                self.sysfs.write(relative, before)
            except KnobError as exc:  # the failure that caused the rollback is what gets reported; say this too
                complete = False
                log.error("rollback: %s could not be put back to %r: %s", self.sysfs.path(relative), before, exc)
        self.undo.clear()
        return complete


def check_keys(command: Command, allowed: set[str], options: dict[str, Any]) -> None:
    """InvalidCommand for a non-dict command or keys the knob does not know."""
    if not isinstance(command, dict):
        raise InvalidCommand(f"a command is a JSON object, not {type(command).__name__}", options=options)
    unknown = sorted(set(command) - allowed)
    if unknown:
        raise InvalidCommand(f"unknown key(s) {', '.join(unknown)} (known: {', '.join(sorted(allowed))})",
                             options=options)
