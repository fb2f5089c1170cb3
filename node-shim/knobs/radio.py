"""The `RadioConfig` knob: an edge node's radio channel and modulation (seed 5.3), and where the node is (its GPS).

Seed 5.3: an agent assigns each wireless interface of an edge node its frequency channel and modulation scheme,
watches SNR, CRC errors and I/Q anomalies, and geo-locates a compromised node (the GPS of a Teltonika 5G router)
to isolate it. Linux has no one interface for a radio's channel and modulation (nl80211 for Wi-Fi, a modem's AT
commands or a router's REST API for 5G), so the knob drives a `RadioDriver`; the one here, `FileRadio`, keeps the
radio's capabilities and settings in one JSON file (`RADIO_FILE` under the sysfs root) that a radio's adapter
maintains, and that the `wireless` simulation profile writes:

    {"interfaces": {"wlan0": {"technology": "wifi", "channels": [1, 6, 11, 36, 40], "modulations": ["bpsk", ...],
                              "channel": 6, "modulation": "64qam"}}}

(no adapter for a real radio is part of mapemesh yet). The GPS fix is read from `GPS_FILE`: the `data` object of
the router's `GET /gps/position/status` answer, as the seed quotes it; `position()` gives it to the node's
description (`MLSysOpsNode.location`).

Commands: `{"command": "set", "interface": "wlan0", "channel": 36, "modulation": "16qam"}` (`interface` may be left
out on a node with one radio; either of `channel` and `modulation` may be left out) and `{"command": "reset"}` (every
interface back to its settings when the shim first saw it, `baseline`). The values must be among the interface's
own (`get_options`); the file is replaced whole, so a failed write changes nothing.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Protocol

from mapemesh.node_shim.knobs.base import Command, HardwareError, InvalidCommand, Sysfs, Unsupported, check_keys

log = logging.getLogger(__name__)
RADIO_FILE = "etc/mapemesh/radio.json"
GPS_FILE = "etc/mapemesh/gps.json"


class RadioDriver(Protocol):
    """A node's radios: what each can do and what it is set to."""

    def read(self) -> dict[str, dict[str, Any]]:
        """interface -> {technology, channels, modulations, channel, modulation}."""
        ...

    def write(self, settings: dict[str, dict[str, Any]]) -> None:
        """Set interface -> {channel, modulation}, all or none; HardwareError when the radio refuses."""
        ...


class FileRadio:
    """A radio whose adapter keeps its capabilities and settings in `RADIO_FILE` (the simulated one too)."""

    def __init__(self, sysfs: Sysfs):
        self.path = sysfs.path(RADIO_FILE)

    def read(self) -> dict[str, dict[str, Any]]:
        try:
            doc = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise Unsupported(f"{self.path} does not exist: no radio adapter on this node") from None
        except (OSError, ValueError) as exc:
            raise HardwareError(f"{self.path} is unreadable: {exc}") from None
        interfaces = doc.get("interfaces") if isinstance(doc, dict) else None
        if not isinstance(interfaces, dict) or not interfaces:
            raise HardwareError(f"{self.path} lists no interfaces")
        return interfaces

    def write(self, settings: dict[str, dict[str, Any]]) -> None:
        from mapemesh.files import write_atomically

        interfaces = self.read()
        for name, wanted in settings.items():
            interfaces[name] = {**interfaces[name], **wanted}
        try:
            write_atomically(self.path, json.dumps({"interfaces": interfaces}, indent=1) + "\n")
        except OSError as exc:
            raise HardwareError(f"cannot write {self.path}: {exc}") from exc


class RadioConfig:
    """Channel and modulation of each wireless interface of an edge node."""

    name = "RadioConfig"

    def __init__(self, driver: RadioDriver):
        self.driver = driver
        self.changed = False
        self.initial = self.get_state()["interfaces"]  # Unsupported when there is no radio

    def get_options(self) -> dict[str, Any]:
        return {"interfaces": {name: {"technology": radio.get("technology"), "channels": radio.get("channels") or [],
                                      "modulations": radio.get("modulations") or []}
                               for name, radio in self.driver.read().items()},
                "commands": ["set", "reset"]}

    def get_state(self) -> dict[str, Any]:
        return {"interfaces": {name: {"channel": radio.get("channel"), "modulation": radio.get("modulation")}
                               for name, radio in self.driver.read().items()}}

    def baseline(self) -> dict[str, Any]:
        """What `reset` goes back to (kept across restarts by the shim's `Baselines`)."""
        return {"interfaces": self.initial}

    def restore_baseline(self, saved: dict[str, Any]) -> None:
        interfaces = saved.get("interfaces") if isinstance(saved, dict) else None
        if isinstance(interfaces, dict):
            self.initial = interfaces

    def apply(self, command: Command) -> dict[str, Any]:
        options = self.get_options()
        check_keys(command, {"command", "interface", "channel", "modulation"}, options)
        action = command.get("command", "set")
        current = self.get_state()["interfaces"]
        if action == "reset":
            check_keys(command, {"command"}, options)
            wanted = {name: dict(values) for name, values in self.initial.items() if name in current}
        elif action == "set":
            interfaces = options["interfaces"]
            name = command.get("interface")
            if name is None and len(interfaces) == 1:
                name = next(iter(interfaces))
            if name not in interfaces:
                raise InvalidCommand(f"interface must be one of {', '.join(sorted(interfaces))}, not {name!r}",
                                     options=options)
            if "channel" not in command and "modulation" not in command:
                raise InvalidCommand("set needs a channel, a modulation or both", options=options)
            radio, values = interfaces[name], dict(current[name])
            for key, allowed in (("channel", radio["channels"]), ("modulation", radio["modulations"])):
                if key in command:
                    value = command[key]
                    if isinstance(value, bool) or value not in allowed:
                        raise InvalidCommand(f"{name}: {key} must be one of {', '.join(map(str, allowed))}, not "
                                             f"{value!r}", options=options)
                    values[key] = value
            wanted = {name: values}
        else:
            raise InvalidCommand(f"command must be 'set' or 'reset', not {action!r}", options=options)
        wanted = {name: values for name, values in wanted.items() if values != current.get(name)}
        self.changed = bool(wanted)
        if wanted:
            self.driver.write(wanted)
        return self.get_state()


def position(sysfs: Sysfs) -> dict[str, Any] | None:
    """The node's GPS fix ({latitude, longitude, altitude, accuracy, satellites, fix, timestamp}), None without one."""
    try:
        doc = json.loads(sysfs.path(GPS_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    doc = doc.get("data", doc) if isinstance(doc, dict) else {}
    try:  # the router gives every figure as a string
        out: dict[str, Any] = {"latitude": float(doc["latitude"]), "longitude": float(doc["longitude"])}
    except (KeyError, TypeError, ValueError):
        return None
    for key, kind in (("altitude", float), ("accuracy", float), ("satellites", int), ("timestamp", int)):
        try:
            out[key] = kind(doc[key])
        except (KeyError, TypeError, ValueError):
            continue
    out["fix"] = str(doc.get("fix_status", "1")) != "0"
    out["source"] = "gps"
    return out


def simulate(root: Path) -> None:
    """The radio and GPS files of a simulated edge node under `root` (the `wireless` profile)."""
    from mapemesh.files import write_atomically

    radios = {"interfaces": {
        "wlan0": {"technology": "wifi", "channels": [1, 6, 11, 36, 40, 44, 48, 149, 153],
                  "modulations": ["bpsk", "qpsk", "16qam", "64qam", "256qam"], "channel": 6, "modulation": "64qam"},
        "wwan0": {"technology": "5g-nr", "channels": [627264, 630000, 636666],  # NR-ARFCN, band n78
                  "modulations": ["qpsk", "16qam", "64qam", "256qam"], "channel": 630000, "modulation": "256qam"}}}
    write_atomically(Path(root) / RADIO_FILE, json.dumps(radios, indent=1) + "\n")
    gps = {"success": True, "data": {"accuracy": "500", "fix_status": "1", "altitude": "143.3", "speed": "0",
                                     "timestamp": "1742549118", "satellites": "2", "longitude": "9.162780",
                                     "latitude": "45.442997", "angle": "0", "utc_timestamp": "1742545518"}}
    write_atomically(Path(root) / GPS_FILE, json.dumps(gps, indent=1) + "\n")
