"""The `RAPLPowerCap` knob: Intel RAPL power limits through the Linux powercap sysfs interface.

Zones are the directories `sys/class/powercap/intel-rapl:*`, named by their `name` file: a package zone is
named as it is there (`package-0`, `package-1`, ...), a sub-zone after its package (`package-0/core`,
`package-0/uncore`, `package-0/dram`). Each zone has constraints (`long_term`, `short_term`, ...) with a power
limit and a time window.

Command::

    {"command": "set" | "reset",
     "domain": "package" | "core" | "uncore" | "dram" | "package-1" | "package-0/dram" | ...,
     "constraint": "long_term" | "short_term",        # default long_term
     "limit_uw": int | "limit_w": number | "limit": "<N> W" | "<N> mW" | "<N> uW",   # exactly one, for set
     "time_window_us": int,                             # optional
     "enabled": bool}                                   # optional: the zone's `enabled` file

`domain` "package" is every package zone; "core", "uncore" and "dram" are that sub-zone of every package; a
zone name addresses one zone. `set` needs a limit unless it only changes `time_window_us` or `enabled`.
`reset` puts every constraint's limit and time window, and the zone's `enabled`, back to what they were when
the driver was built; its `domain` is optional (default: every zone). All writes of one command happen in
one transaction: when one fails, the files already written are put back.
"""

from __future__ import annotations

import logging
import math
import re
from dataclasses import dataclass, field
from typing import Any

from mapemesh.node_shim.knobs.base import (
    Command,
    InvalidCommand,
    KnobError,
    Sysfs,
    Unsupported,
    check_keys,
)

log = logging.getLogger(__name__)

POWERCAP_DIR = "sys/class/powercap"
SUBZONE_ALIASES = ("core", "uncore", "dram")
_LIMIT_FORMS = ("limit_uw", "limit_w", "limit")
_SET_KEYS = {"command", "domain", "constraint", "time_window_us", "enabled", *_LIMIT_FORMS}
_RESET_KEYS = {"command", "domain"}
_UNIT_UW = {"W": 1_000_000, "mW": 1_000, "uW": 1, "µW": 1}
_LIMIT_TEXT = re.compile(r"^\s*([0-9]+(?:\.[0-9]*)?)\s*(W|mW|uW|µW)\s*$")
# intel-rapl:0 is a package, intel-rapl:0:1 a sub-zone of it; the bare "intel-rapl" is the control type.
# intel-rapl-mmio:* zones are left out: they are a second interface to the same package limit on some client
# CPUs, and listing them would give two zones named package-0.
_ZONE_DIR = re.compile(r"^intel-rapl:(\d+)(?::(\d+))?$")


@dataclass
class _Zone:
    """One powercap zone: where it is, what it is called, and its constraints by name (-> index)."""

    name: str
    rel: str
    package: str | None  # the package zone's name for a sub-zone, None for a package
    constraints: dict[str, int] = field(default_factory=dict)

    def file(self, name: str) -> str:
        return f"{self.rel}/{name}"

    def constraint_file(self, constraint: str, what: str) -> str:
        return self.file(f"constraint_{self.constraints[constraint]}_{what}")


class RAPLPowerCap:
    """Package and sub-zone power limits (powercap `intel-rapl`), validated against each constraint's maximum."""

    name = "RAPLPowerCap"

    def __init__(self, sysfs: Sysfs):
        self.sysfs = sysfs
        self.zones = self._discover()
        if not self.zones:
            raise Unsupported(f"no RAPL zones under {sysfs.path(POWERCAP_DIR)} (intel_rapl driver not loaded?)")
        # What reset goes back to: the files as the shim found them.
        self.initial: dict[str, str] = {}
        for zone in self.zones.values():
            for rel in self._restorable_files(zone):
                if self.sysfs.exists(rel):
                    self.initial[rel] = self.sysfs.read(rel)
        self._unreadable_energy: set[str] = set()
        self.changed = False
        """Whether the last apply wrote anything (False: the command was already in effect)."""

    def baseline(self) -> dict[str, Any]:
        """What reset goes back to (saved by the shim the first time, so a restart does not forget it)."""
        return dict(self.initial)

    def restore_baseline(self, saved: dict[str, Any]) -> None:
        """Take a baseline saved before, for the files it names that this machine has."""
        self.initial.update({rel: str(value) for rel, value in saved.items() if rel in self.initial})

    def _discover(self) -> dict[str, _Zone]:
        base = self.sysfs.path(POWERCAP_DIR)
        if not base.is_dir():
            return {}
        found: list[tuple[tuple[int, int], str]] = []
        for entry in base.iterdir():
            match = _ZONE_DIR.match(entry.name)
            if match and entry.is_dir():
                package, sub = match.groups()
                found.append(((int(package), -1 if sub is None else int(sub)), entry.name))
        zones: dict[str, _Zone] = {}
        package_names: dict[int, str] = {}
        for (package, sub), dirname in sorted(found):  # packages sort before their sub-zones
            rel = f"{POWERCAP_DIR}/{dirname}"
            own = self.sysfs.read(f"{rel}/name")
            if sub < 0:
                package_names[package] = own
                zone = _Zone(name=own, rel=rel, package=None)
            else:
                parent = package_names.get(package, f"intel-rapl:{package}")
                zone = _Zone(name=f"{parent}/{own}", rel=rel, package=parent)
            index = 0
            while self.sysfs.exists(f"{rel}/constraint_{index}_name"):
                zone.constraints[self.sysfs.read(f"{rel}/constraint_{index}_name")] = index
                index += 1
            zones[zone.name] = zone
        return zones

    @staticmethod
    def _restorable_files(zone: _Zone) -> list[str]:
        files = [zone.file("enabled")]
        for constraint in zone.constraints:
            files += [zone.constraint_file(constraint, "power_limit_uw"),
                      zone.constraint_file(constraint, "time_window_us")]
        return files

    def _optional_int(self, rel: str, zero_is_none: bool = True) -> int | None:
        """An integer file that some zones lack (or leave at 0, meaning no maximum); None then."""
        if not self.sysfs.exists(rel):
            return None
        try:
            value = self.sysfs.read_int(rel)
        except KnobError:
            return None
        return None if zero_is_none and value == 0 else value

    def get_options(self) -> dict[str, Any]:
        """Every zone with its constraints and their maxima, the domain aliases and the commands."""
        domains = {
            zone.name: {
                "path": str(self.sysfs.path(zone.rel)),
                "max_energy_range_uj": self._optional_int(zone.file("max_energy_range_uj")),
                "constraints": {c: {"max_power_uw": self._optional_int(zone.constraint_file(c, "max_power_uw"))}
                                for c in zone.constraints},
            }
            for zone in self.zones.values()
        }
        aliases = {alias: self._alias_zones(alias) for alias in ("package", *SUBZONE_ALIASES)}
        return {"domains": domains, "aliases": {k: v for k, v in aliases.items() if v},
                "commands": ["set", "reset"], "limit_forms": list(_LIMIT_FORMS)}

    def get_state(self) -> dict[str, Any]:
        """Per zone: enabled, the energy counter (None when only root may read it) and each constraint's setting."""
        state: dict[str, Any] = {}
        for zone in self.zones.values():
            state[zone.name] = {
                "enabled": self.sysfs.read(zone.file("enabled")) == "1",
                "energy_uj": self._energy_of(zone),
                "constraints": {
                    c: {"power_limit_uw": self.sysfs.read_int(zone.constraint_file(c, "power_limit_uw")),
                        "time_window_us": self._optional_int(zone.constraint_file(c, "time_window_us"),
                                                            zero_is_none=False)}
                    for c in zone.constraints
                },
            }
        return state

    def energy(self) -> dict[str, int]:
        """The energy counter (uJ) of every zone that can be read; wrap-around is the caller's to handle."""
        out = {}
        for zone in self.zones.values():
            value = self._energy_of(zone)
            if value is not None:
                out[zone.name] = value
        return out

    def _energy_of(self, zone: _Zone) -> int | None:
        # Since Linux 5.10 energy_uj is readable by root only (CVE-2020-8694); a non-root shim still caps power.
        try:
            return self.sysfs.read_int(zone.file("energy_uj"))
        except KnobError as exc:
            if zone.name not in self._unreadable_energy:
                self._unreadable_energy.add(zone.name)
                log.warning("RAPL energy of %s cannot be read: %s", zone.name, exc)
            return None

    def apply(self, command: Command) -> dict[str, Any]:
        """Validate `command` against the options, write what differs in one transaction, return the state after."""
        options = self.get_options()
        check_keys(command, _SET_KEYS, options)
        action = command.get("command")
        if action == "reset":
            check_keys(command, _RESET_KEYS, options)
            zones = self._resolve(command["domain"], options) if "domain" in command else list(self.zones.values())
            writes = [(rel, self.initial[rel]) for zone in zones for rel in self._restorable_files(zone)
                      if rel in self.initial]
        elif action == "set":
            writes = self._plan_set(command, options)
        else:
            raise InvalidCommand(f"command: {action!r} is not one of set, reset", options=options)
        self._write_all(writes)
        return self.get_state()

    def _plan_set(self, command: Command, options: dict[str, Any]) -> list[tuple[str, str]]:
        if "domain" not in command:
            raise InvalidCommand("domain: missing (a zone name or one of package, core, uncore, dram)",
                                 options=options)
        zones = self._resolve(command["domain"], options)
        constraint = command.get("constraint", "long_term")
        given = [form for form in _LIMIT_FORMS if form in command]
        if len(given) > 1:
            raise InvalidCommand(f"limit: give one of {', '.join(_LIMIT_FORMS)}, not {', '.join(given)}",
                                 options=options)
        if not given and "time_window_us" not in command and "enabled" not in command:
            raise InvalidCommand(f"limit: set needs one of {', '.join(_LIMIT_FORMS)} (or time_window_us, enabled)",
                                 options=options)
        uses_constraint = given or "time_window_us" in command or "constraint" in command
        if uses_constraint and (not isinstance(constraint, str)
                                or any(constraint not in zone.constraints for zone in zones)):
            known = sorted({c for zone in zones for c in zone.constraints})
            raise InvalidCommand(f"constraint: {constraint!r} is not one of {', '.join(known)} in every zone "
                                 f"of {command['domain']!r}", options=options)
        writes: list[tuple[str, str]] = []
        if given:
            limit_uw = _limit_uw(given[0], command[given[0]], options)
            for zone in zones:
                maximum = options["domains"][zone.name]["constraints"][constraint]["max_power_uw"]
                if maximum is not None and limit_uw > maximum:
                    raise InvalidCommand(f"{given[0]}: {limit_uw} uW is above the {constraint} maximum of "
                                         f"{zone.name} ({maximum} uW)", options=options)
            writes += [(zone.constraint_file(constraint, "power_limit_uw"), str(limit_uw)) for zone in zones]
        if "time_window_us" in command:
            window = command["time_window_us"]
            if isinstance(window, bool) or not isinstance(window, int) or window <= 0:
                raise InvalidCommand(f"time_window_us: {window!r} is not a positive integer", options=options)
            writes += [(zone.constraint_file(constraint, "time_window_us"), str(window)) for zone in zones]
        if "enabled" in command:
            if not isinstance(command["enabled"], bool):
                raise InvalidCommand(f"enabled: {command['enabled']!r} is not true or false", options=options)
            writes += [(zone.file("enabled"), "1" if command["enabled"] else "0") for zone in zones]
        return writes

    def _alias_zones(self, alias: str) -> list[str]:
        if alias == "package":
            return [z.name for z in self.zones.values() if z.package is None and z.name.startswith("package-")]
        return [z.name for z in self.zones.values() if z.package is not None and z.name.endswith("/" + alias)]

    def _resolve(self, domain: Any, options: dict[str, Any]) -> list[_Zone]:
        """The zones a domain names: an alias (every package, or one sub-zone of every package) or one zone."""
        if isinstance(domain, str):
            if domain in self.zones:
                return [self.zones[domain]]
            if domain in ("package", *SUBZONE_ALIASES):
                names = self._alias_zones(domain)
                if names:
                    return [self.zones[name] for name in names]
        valid = [name for name, zones in options["aliases"].items() if zones] + list(self.zones)
        raise InvalidCommand(f"domain: {domain!r} is not one of {', '.join(valid)}", options=options)

    def _write_all(self, writes: list[tuple[str, str]]) -> None:
        # Each file is read inside the transaction, just before it would be written, so that a file that
        # fails part-way is rolled back with the others; files that already hold the target are not touched.
        with self.sysfs.transaction() as tx:
            for rel, value in writes:
                if not _holds(rel, self.sysfs.read(rel), value):
                    tx.write(rel, value)
                    log.info("RAPL %s <- %s", rel, value)
            self.changed = bool(tx.undo)


POWER_UNIT_UW = 125_000
"""RAPL stores limits in its power unit (1/8 W on most Intel parts) and reads back the rounded value."""


def _holds(rel: str, current: str, target: str) -> bool:
    """Whether the file already holds the target, as the hardware rounds it (so a re-apply writes nothing)."""
    if current == target:
        return True
    try:
        have, want = int(current), int(target)
    except ValueError:
        return False
    if rel.endswith("_power_limit_uw"):
        return abs(have - want) < POWER_UNIT_UW
    if rel.endswith("_time_window_us"):
        return abs(have - want) <= max(1, want) // 4  # the window is encoded as 2^Y * (1 + Z/4) time units
    return False


def _limit_uw(form: str, value: Any, options: dict[str, Any]) -> int:
    """The limit in uW from one of the three forms; InvalidCommand when it is not a positive power."""
    if form == "limit":
        match = _LIMIT_TEXT.match(value) if isinstance(value, str) else None
        if match is None:
            raise InvalidCommand(f"limit: {value!r} is not '<N> W', '<N> mW' or '<N> uW'", options=options)
        uw = round(float(match.group(1)) * _UNIT_UW[match.group(2)])
    elif isinstance(value, bool) or not isinstance(value, int | float) or (form == "limit_uw" and
                                                                          not isinstance(value, int)):
        kind = "an integer" if form == "limit_uw" else "a number"
        raise InvalidCommand(f"{form}: {value!r} is not {kind}", options=options)
    else:
        if not math.isfinite(value):
            raise InvalidCommand(f"{form}: {value!r} is not a finite number", options=options)
        uw = value if form == "limit_uw" else round(value * 1_000_000)
    if uw <= 0:
        raise InvalidCommand(f"{form}: {value!r} is not a positive power", options=options)
    return int(uw)
