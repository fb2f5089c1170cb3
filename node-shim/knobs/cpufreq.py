"""The `CPUFrequency` knob: governor and frequency limits through the kernel's cpufreq files.

Commands (the MLSysOps format)::

    {"command": "set", "cpu": "all", "frequency": "2.2 GHz", "governor": "performance"}
    {"command": "reset", "cpu": "0,2"}

- `command`: "set" or "reset".
- `cpu`: "all" (the default) or a list of cpu ids such as "0,2" or "0-3".
- `frequency` (set): "min", "max", or a value with a unit: "2200000000 Hz", "2200000 kHz", "2200 MHz",
  "2.2 GHz"; a number without a unit is Hz. With a discrete `scaling_available_frequencies` list it must be
  one of those, otherwise within the cpu's `cpuinfo_min_freq`..`cpuinfo_max_freq`.
- `governor` (set): one of `scaling_available_governors` of every addressed cpu; written before the frequency.
  A set needs `frequency`, `governor`, or both. A reset takes only `command` and `cpu`.

How a frequency is applied:

- intel_pstate in active mode, cpu "all": `intel_pstate/min_perf_pct` and `max_perf_pct` are both pinned to
  the percent of `cpuinfo_max_freq` ("min" is the lowest percent the cpu allows, "max" is 100), and per-cpu
  limits are widened to the full range so they do not cap the global one. A subset of cpus is pinned with
  their `scaling_min_freq`/`scaling_max_freq`, which the global percentages still bound.
- Governor "userspace" (given, or already in effect): `scaling_setspeed`, widening the cpu's limits first
  when the target lies outside them, because the kernel clamps the speed to them.
- Otherwise `scaling_min_freq` and `scaling_max_freq` are both pinned to the target.

Limits are written in an order that keeps min <= max at every step (the kernel refuses anything else), only
files that do not already hold the target are written, and all writes of one command share one transaction.
Reset puts back the governor found when the knob was created and the full frequency range (for "all" under
intel_pstate also the percentages and `no_turbo=0`). The API speaks Hz; the files hold kHz.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
from typing import Any, Literal

from mapemesh.node_shim.knobs.base import Command, InvalidCommand, Sysfs, Transaction, Unsupported, check_keys

log = logging.getLogger(__name__)

CPU_DIR = "sys/devices/system/cpu"
PSTATE_DIR = f"{CPU_DIR}/intel_pstate"

_KEYS = {"command", "cpu", "frequency", "governor"}
_RESET_KEYS = {"command", "cpu"}
_UNITS = {"hz": 1, "khz": 10**3, "mhz": 10**6, "ghz": 10**9}
_FREQUENCY = re.compile(r"(\d+(?:\.\d+)?)\s*([kmg]?hz)?", re.IGNORECASE)
_CPU_RANGE = re.compile(r"(\d+)(?:-(\d+))?")
_CPU_FOLDER = re.compile(r"cpu(\d+)")

Frequency = Literal["min", "max"] | int  # an int is kHz


@dataclass(frozen=True)
class _Limits:
    """What one cpu's policy allows."""

    min_khz: int
    max_khz: int
    available_khz: tuple[int, ...] | None  # ascending; None when the driver takes any value in the range
    governors: tuple[str, ...]

    def resolve(self, frequency: Frequency) -> int:
        """The kHz that `frequency` means on this cpu."""
        if frequency == "min":
            return self.min_khz
        if frequency == "max":
            return self.max_khz
        return frequency


@dataclass(frozen=True)
class _Request:
    """A validated command."""

    command: Literal["set", "reset"]
    cpus: tuple[int, ...]
    every_cpu: bool
    frequency: Frequency | None = None
    governor: str | None = None


class CPUFrequency:
    """The cpufreq knob (intel_pstate, acpi-cpufreq, cpufreq-dt and other cpufreq drivers)."""

    name = "CPUFrequency"

    def __init__(self, sysfs: Sysfs):
        self.sysfs = sysfs
        self.cpus = self._find_cpus()
        if not self.cpus:
            raise Unsupported(f"no cpufreq policy under {sysfs.path(CPU_DIR)}")
        self.driver = sysfs.read(_file(self.cpus[0], "scaling_driver"))
        self.intel_pstate = sysfs.exists(f"{PSTATE_DIR}/status") and sysfs.read(f"{PSTATE_DIR}/status") == "active"
        # Reset returns to what the machine ran before the shim touched it, not to a guessed default (and the
        # shim keeps that baseline across restarts: see baseline()).
        self.initial_governors = {cpu: sysfs.read(_file(cpu, "scaling_governor")) for cpu in self.cpus}
        self.initial_no_turbo = sysfs.read_int(f"{PSTATE_DIR}/no_turbo") if self.intel_pstate else 0
        self.changed = False
        """Whether the last apply wrote anything (False: the command was already in effect)."""

    def baseline(self) -> dict[str, Any]:
        """What reset goes back to (saved by the shim the first time, so a restart does not forget it)."""
        return {"governors": {str(cpu): g for cpu, g in self.initial_governors.items()},
                "no_turbo": self.initial_no_turbo}

    def restore_baseline(self, saved: dict[str, Any]) -> None:
        """Take a baseline saved before (a cpu it does not name keeps the one found now)."""
        for cpu in self.cpus:
            governor = (saved.get("governors") or {}).get(str(cpu))
            if isinstance(governor, str) and governor:
                self.initial_governors[cpu] = governor
        if isinstance(saved.get("no_turbo"), int):
            self.initial_no_turbo = saved["no_turbo"]

    def get_options(self) -> dict[str, Any]:
        """The cpus, governors and frequencies (Hz) this machine accepts."""
        limits = [self._limits(cpu) for cpu in self.cpus]
        lists = [lim.available_khz for lim in limits if lim.available_khz is not None]
        pstate = None
        if self.intel_pstate:
            pstate = {"min_perf_pct_floor": self._pct_floor(limits),
                      "no_turbo": self.sysfs.read_int(f"{PSTATE_DIR}/no_turbo") != 0}
        return {
            "driver": self.driver,
            "cpus": list(self.cpus),
            "governors": list(dict.fromkeys(g for lim in limits for g in lim.governors)),
            "frequencies_hz": sorted({khz * 1000 for khz_list in lists for khz in khz_list}) if lists else None,
            "min_hz": min(lim.min_khz for lim in limits) * 1000,
            "max_hz": max(lim.max_khz for lim in limits) * 1000,
            "intel_pstate": pstate,
            "commands": ["set", "reset"],
        }

    def get_state(self) -> dict[str, Any]:
        """Each cpu's governor and frequencies (Hz), and the intel_pstate percentages when it is active."""
        cpus: dict[str, dict[str, Any]] = {}
        for cpu in self.cpus:
            governor = self.sysfs.read(_file(cpu, "scaling_governor"))
            cpus[str(cpu)] = {
                "governor": governor,
                "min_hz": self.sysfs.read_int(_file(cpu, "scaling_min_freq")) * 1000,
                "max_hz": self.sysfs.read_int(_file(cpu, "scaling_max_freq")) * 1000,
                "cur_hz": self._optional_hz(_file(cpu, "scaling_cur_freq")),
                "setspeed_hz": self._optional_hz(_file(cpu, "scaling_setspeed")) if governor == "userspace" else None,
            }
        pstate = None
        if self.intel_pstate:
            pstate = {"min_perf_pct": self.sysfs.read_int(f"{PSTATE_DIR}/min_perf_pct"),
                      "max_perf_pct": self.sysfs.read_int(f"{PSTATE_DIR}/max_perf_pct"),
                      "no_turbo": self.sysfs.read_int(f"{PSTATE_DIR}/no_turbo") != 0}
        return {"driver": self.driver, "cpus": cpus, "intel_pstate": pstate}

    def apply(self, command: Command) -> dict[str, Any]:
        """Validate `command`, apply it as one transaction, and return the state after."""
        request = self._validate(command)
        with self.sysfs.transaction() as tx:
            if request.command == "reset":
                self._reset(tx, request)
            else:
                self._set(tx, request)
            written = len(tx.undo)
        self.changed = written > 0
        log.info("CPUFrequency %s on cpus %s: %d file(s) written", request.command,
                 "all" if request.every_cpu else ",".join(map(str, request.cpus)), written)
        return self.get_state()

    # Validation: everything is checked here, before the transaction writes anything.

    def _validate(self, command: Command) -> _Request:
        options = self.get_options()
        check_keys(command, _KEYS, options)
        kind = command.get("command")
        if kind not in ("set", "reset"):
            raise InvalidCommand(f"command must be one of set, reset; not {kind!r}", options=options)
        cpus, every_cpu = self._parse_cpus(command.get("cpu", "all"), options)
        if kind == "reset":
            extra = sorted(set(command) - _RESET_KEYS)
            if extra:
                raise InvalidCommand(f"reset takes only command and cpu, not {', '.join(extra)}", options=options)
            return _Request("reset", cpus, every_cpu)
        if "frequency" not in command and "governor" not in command:
            raise InvalidCommand("set needs frequency (min, max or a value such as '2.2 GHz'), governor, or both",
                                 options=options)
        limits = {cpu: self._limits(cpu) for cpu in cpus}
        governor = None
        if "governor" in command:
            governor = command["governor"]
            valid = [g for g in limits[cpus[0]].governors if all(g in limits[cpu].governors for cpu in cpus)]
            if governor not in valid:
                raise InvalidCommand(f"governor {governor!r} is not available (valid: {', '.join(valid)})",
                                     options=options)
        frequency = None
        if "frequency" in command:
            frequency = _parse_frequency(command["frequency"], options)
            for cpu in cpus:
                _check_frequency(command["frequency"], frequency, cpu, limits[cpu], options)
        return _Request("set", cpus, every_cpu, frequency, governor)

    def _parse_cpus(self, value: object, options: dict[str, Any]) -> tuple[tuple[int, ...], bool]:
        valid = f"valid: all, or ids from {', '.join(map(str, self.cpus))} such as '0,2' or '0-3'"
        if value == "all":
            return tuple(self.cpus), True
        if isinstance(value, int) and not isinstance(value, bool):
            value = str(value)
        if not isinstance(value, str):
            raise InvalidCommand(f"cpu must be 'all' or a list such as '0,2', not {value!r} ({valid})", options=options)
        ids: set[int] = set()
        for part in value.split(","):
            match = _CPU_RANGE.fullmatch(part.strip())
            if not match:
                raise InvalidCommand(f"cpu {value!r} is not a cpu list ({valid})", options=options)
            first, last = int(match[1]), int(match[2] or match[1])
            if last < first or last > max(self.cpus):
                raise InvalidCommand(f"cpu {value!r} names cpus this machine does not have ({valid})",
                                     options=options)
            ids.update(range(first, last + 1))
        missing = sorted(ids - set(self.cpus))
        if missing:
            raise InvalidCommand(f"cpu {', '.join(map(str, missing))} has no cpufreq policy ({valid})",
                                 options=options)
        return tuple(sorted(ids)), ids == set(self.cpus)

    # Writing, inside the command's transaction.

    def _set(self, tx: Transaction, request: _Request) -> None:
        if request.governor is not None:
            for cpu in request.cpus:
                _put(tx, _file(cpu, "scaling_governor"), request.governor)
        if request.frequency is None:
            return
        limits = {cpu: self._limits(cpu) for cpu in request.cpus}
        if self.intel_pstate and request.every_cpu:
            pct = self._percent(request.frequency, list(limits.values()))
            _put_range(tx, f"{PSTATE_DIR}/min_perf_pct", f"{PSTATE_DIR}/max_perf_pct", pct, pct)
            for cpu, lim in limits.items():
                _put_range(tx, _file(cpu, "scaling_min_freq"), _file(cpu, "scaling_max_freq"),
                           lim.min_khz, lim.max_khz)
            return
        for cpu, lim in limits.items():
            khz = lim.resolve(request.frequency)
            governor = request.governor or self.sysfs.read(_file(cpu, "scaling_governor"))
            if governor == "userspace":
                low = min(khz, tx.sysfs.read_int(_file(cpu, "scaling_min_freq")))
                high = max(khz, tx.sysfs.read_int(_file(cpu, "scaling_max_freq")))
                _put_range(tx, _file(cpu, "scaling_min_freq"), _file(cpu, "scaling_max_freq"), low, high)
                _put(tx, _file(cpu, "scaling_setspeed"), khz)
            else:
                _put_range(tx, _file(cpu, "scaling_min_freq"), _file(cpu, "scaling_max_freq"), khz, khz)

    def _reset(self, tx: Transaction, request: _Request) -> None:
        for cpu in request.cpus:
            _put(tx, _file(cpu, "scaling_governor"), self.initial_governors[cpu])
        limits = {cpu: self._limits(cpu) for cpu in request.cpus}
        for cpu, lim in limits.items():
            _put_range(tx, _file(cpu, "scaling_min_freq"), _file(cpu, "scaling_max_freq"), lim.min_khz, lim.max_khz)
        # The percentages and no_turbo hold for every cpu, so only a reset of every cpu touches them.
        if self.intel_pstate and request.every_cpu:
            floor = self._pct_floor(list(self._limits(cpu) for cpu in self.cpus))
            _put_range(tx, f"{PSTATE_DIR}/min_perf_pct", f"{PSTATE_DIR}/max_perf_pct", floor, 100)
            _put(tx, f"{PSTATE_DIR}/no_turbo", self.initial_no_turbo)  # as found: the BIOS may forbid turbo

    # Reading sysfs.

    def _find_cpus(self) -> list[int]:
        folder = self.sysfs.path(CPU_DIR)
        if not folder.is_dir():
            return []
        cpus = []
        for entry in folder.iterdir():
            match = _CPU_FOLDER.fullmatch(entry.name)
            online = entry / "online"
            if online.exists() and online.read_text().strip() == "0":
                continue  # an offline cpu's cpufreq files answer EBUSY: it is not this knob's until it is back
            if match and (entry / "cpufreq").is_dir():
                cpus.append(int(match[1]))
        return sorted(cpus)

    def _limits(self, cpu: int) -> _Limits:
        available = None
        if self.sysfs.exists(_file(cpu, "scaling_available_frequencies")):
            text = self.sysfs.read(_file(cpu, "scaling_available_frequencies"))
            available = tuple(sorted(int(khz) for khz in text.split())) or None
        return _Limits(min_khz=self.sysfs.read_int(_file(cpu, "cpuinfo_min_freq")),
                       max_khz=self.sysfs.read_int(_file(cpu, "cpuinfo_max_freq")),
                       available_khz=available,
                       governors=tuple(self.sysfs.read(_file(cpu, "scaling_available_governors")).split()))

    def _optional_hz(self, relative: str) -> int | None:
        """Hz from a kHz file that may be missing or say `<unsupported>`."""
        if not self.sysfs.exists(relative):
            return None
        text = self.sysfs.read(relative)
        return int(text) * 1000 if text.isdigit() else None

    @staticmethod
    def _pct_floor(limits: list[_Limits]) -> int:
        return round(min(lim.min_khz for lim in limits) / max(lim.max_khz for lim in limits) * 100)

    def _percent(self, frequency: Frequency, limits: list[_Limits]) -> int:
        floor = self._pct_floor(limits)
        if frequency == "min":
            return floor
        if frequency == "max":
            return 100
        return min(100, max(floor, round(frequency / max(lim.max_khz for lim in limits) * 100)))


def _file(cpu: int, name: str) -> str:
    return f"{CPU_DIR}/cpu{cpu}/cpufreq/{name}"


def _put(tx: Transaction, relative: str, value: str | int) -> None:
    """Write `value` unless the file already holds it (applying what is in effect writes nothing)."""
    if tx.sysfs.read(relative) != str(value):
        tx.write(relative, value)


def _put_range(tx: Transaction, min_file: str, max_file: str, low: int, high: int) -> None:
    """Set a (min, max) pair of files to (low, high) so that min <= max holds after each write."""
    if low > tx.sysfs.read_int(max_file):
        _put(tx, max_file, high)  # raising: the old min stays below the new max
        _put(tx, min_file, low)
    else:
        _put(tx, min_file, low)  # lowering (or within): the new min is below the old max
        _put(tx, max_file, high)


def _parse_frequency(value: object, options: dict[str, Any]) -> Frequency:
    """'min', 'max', or kHz from a value in Hz (a number, or text with a Hz/kHz/MHz/GHz unit)."""
    valid = "valid: min, max, or a value such as '2.2 GHz', '2200 MHz', '2200000 kHz' or '2200000000 Hz'"
    hz: Decimal | None = None
    if isinstance(value, str):
        text = value.strip().lower()
        if text in ("min", "max"):
            return text  # type: ignore[return-value]  # narrowed by the check above
        match = _FREQUENCY.fullmatch(text)
        if match:
            hz = Decimal(match[1]) * _UNITS[match[2] or "hz"]
    elif isinstance(value, int | float) and not isinstance(value, bool):
        try:
            hz = Decimal(str(value))
        except InvalidOperation:
            hz = None
    if hz is None or not hz.is_finite() or hz <= 0:
        raise InvalidCommand(f"frequency {value!r} is not a frequency ({valid})", options=options)
    return int((hz / 1000).quantize(Decimal(1), rounding=ROUND_HALF_UP))


def _check_frequency(value: object, khz: Frequency, cpu: int, limits: _Limits, options: dict[str, Any]) -> None:
    if not isinstance(khz, int):
        return  # min and max always exist
    if limits.available_khz is not None:
        if khz not in limits.available_khz:
            listed = ", ".join(_human(k) for k in reversed(limits.available_khz))
            raise InvalidCommand(f"frequency {value!r} is not available on cpu {cpu} (valid: {listed})",
                                 options=options)
    elif not limits.min_khz <= khz <= limits.max_khz:
        raise InvalidCommand(f"frequency {value!r} is outside cpu {cpu}'s range "
                             f"({_human(limits.min_khz)} to {_human(limits.max_khz)})", options=options)


def _human(khz: int) -> str:
    return f"{khz / 1e6:g} GHz" if khz >= 1_000_000 else f"{khz / 1e3:g} MHz"
