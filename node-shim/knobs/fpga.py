"""The `FPGABitstream` knob: the FPGA fabric's bitstream, in full or one partial region (DFX), via the FPGA manager.

Seed 3.5 (the ZCU102's Zynq UltraScale+ MPSoC): the fabric is reprogrammed with a bitstream, in full or by Dynamic
Function eXchange of a reconfigurable partition, and reports nothing but its power. The interface followed is the
Linux FPGA manager's sysfs class as AMD/Xilinx documents it ("Linux Drivers: FPGA programming using sysfs
attributes"; the "Solution ZynqMP PL Programming" wiki page); `name` and `state` are also the kernel's own
(Documentation/ABI/testing/sysfs-class-fpga-manager, the state strings of drivers/fpga/fpga-mgr.c):

| file under /sys/class/fpga_manager/fpgaN | what it does |
|---|---|
| `flags`    | 0: a full bitstream; 1 (FPGA_MGR_PARTIAL_RECONFIG): a partial one |
| `firmware` | write a file name relative to /lib/firmware: the kernel loads it and programs the fabric (write-only on |
|            | a real kernel, so the knob keeps what it loaded in its own record) |
| `state`    | `operating` once programmed; a failure leaves `firmware request error`, `write init error`, |
|            | `write error` or `write complete error` |

Commands:
- `{"command": "load", "bitstream": "base.bit.bin"}`: a full reload;
- `{"command": "load", "bitstream": "rp0_fft.bin", "partial": true, "region": "rp0"}`: a partial bitstream into
  one region (`region` names it for the record and for the drain);
- `"manager": "fpga1"` picks another FPGA manager than the first;
- `"force": true` lets a load go on where nothing can drain the functions that use the FPGA (see below): the
  operator asserts that the fabric's users are idle.

Which region a partial bitstream programs is in the bitstream, not in the command: the knob takes it from the
file's name, which starts with the region and `_` (`rp0_fft.bin` programs rp0; the simulated tree's follow the
rule). A partial load whose bitstream's name starts with its `region` drains that region's functions (and the whole
fabric's); one whose name starts with another region the knob knows of (a function's label, or a region it loaded)
is refused before anything happens; one whose name names no known region drains every function that uses the FPGA,
as a full load does, since what it reprograms is not known.

The bitstream must be a `.bit`, `.bin` or `.bit.bin` file inside the firmware folder (no absolute path, no `..`,
no link out of it) with the Xilinx sync word near its start (other firmware lives in /lib/firmware too): checked
before anything is written. A write that fails (an `OSError`, or the manager left in an error state) is rolled
back: the previous bitstream of what was replaced is loaded again and the flags are put back (`rolled_back` says
whether that was all done; a first load over the boot's bitstream has nothing known to go back to). Every apply is
in the shim's journal, as for every knob.

Reconfiguration needs the accelerator idle (the seed's own approach is a reboot): before it writes, the knob asks
its `Drainer` (the local function host) to hold the functions that use the FPGA (the Services labelled
`mapemesh.dev/fpga`, with the region or `fabric` as the value: a full reload drains them all, a partial one those
of its region and those of the whole fabric) and waits until none of them runs a request; it lets them go again
once the fabric is programmed or put back, and after a drain that failed. A drain that does not finish in time
fails the command with `timeout` and nothing is written; it is kept well under the 60 s the shim's Trigger gives a
knob command (`delivery.timeout`), so that the command's result still reaches the loop. Where nothing knows the
functions (a cluster's shim: the functions run in pods, not in a local host) or nothing can drain those that use the
FPGA, a load is refused as `unsupported` unless the command says `"force": true`. The state's
`last_reconfiguration` says what was drained (`needs_idle: true`; `forced: true` when the operator's word stood in
for a drain); the monitor stage puts it in the plan's `notes`, so the plan's status shows that the change needed the
accelerator idle.

The fabric's only telemetry is power (seed 3.5): `board_power` reads the board's INA2xx monitors through hwmon
(`power1_input` in microwatts, `power1_label` the rail), which the shim reports as `node_board_power_watts`.
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from mapemesh.node_shim.knobs.base import (
    Command,
    HardwareError,
    InvalidCommand,
    KnobError,
    Sysfs,
    Unsupported,
    check_keys,
)

log = logging.getLogger(__name__)
MANAGERS = "sys/class/fpga_manager"
FIRMWARE = "lib/firmware"
PARTIAL_RECONFIG = 1
"""FPGA_MGR_PARTIAL_RECONFIG, the `flags` bit of a partial bitstream."""
OPERATING = "operating"
EXTENSIONS = (".bit", ".bin")
"""`.bit.bin` (bootgen's output for the FPGA manager) ends in `.bin`."""
SYNC_WORDS = (bytes.fromhex("aa995566"), bytes.fromhex("665599aa"))
"""The Xilinx configuration sync word (as in a .bit, and byte-swapped as bootgen may write a .bin)."""
SYNC_WITHIN = 4096
"""A bitstream has its sync word within this many bytes (after a .bit's header, a .bin's padding and bus width)."""
FABRIC = "fabric"
"""The label value of a function that uses the whole fabric (drained by any reconfiguration)."""
DRAIN_TIMEOUT_S = 20.0
"""How long a reconfiguration waits for the functions to be idle: with the host's margin and the programming, well
under the shim's Trigger's delivery timeout (`daemon.DELIVERY_TIMEOUT`), past which the broker gives up on it."""
_REGION = re.compile(r"^[a-z0-9]([-_a-z0-9]{0,61}[a-z0-9])?$")


class DrainFailed(KnobError):
    """The functions that use the accelerator could not be made idle in time: nothing was written."""

    code = "timeout"


class Drainer(Protocol):
    """Holds a node's functions while their accelerator is reconfigured (the local host: `LocalHost.drain`)."""

    def drain(self, services: list[str], timeout_s: float) -> None:
        """Take no new requests to `services` (they wait) and return once none runs one; DrainFailed when that
        does not happen within `timeout_s` (they are released again)."""
        ...

    def release(self, services: list[str]) -> None:
        """Let `services` serve again."""
        ...


class FPGABitstream:
    """One node's FPGA managers, the bitstreams under its firmware folder, and what it loaded."""

    name = "FPGABitstream"

    def __init__(self, sysfs: Sysfs, record: Path, *, functions: Callable[[], dict[str, dict[str, Any]]] | None = None,
                 drainer: Drainer | None = None, drain_timeout_s: float = DRAIN_TIMEOUT_S):
        self.sysfs = sysfs
        self.record = record
        """What the knob loaded (the kernel does not say): {manager: {full, partials, last_reconfiguration}}."""
        self.functions = functions
        """The functions that use the FPGA, namespace/name -> {service, region}; None: not known here."""
        self.drainer = drainer
        self.drain_timeout_s = drain_timeout_s
        self.changed = False
        if not self.managers():
            raise Unsupported(f"{sysfs.path(MANAGERS)} has no FPGA manager")

    # -- what there is -------------------------------------------------------------------------

    def managers(self) -> list[str]:
        """The FPGA managers (fpga0, ...), in order."""
        found = self.sysfs.path(MANAGERS).glob("fpga*")
        return sorted((p.name for p in found if (p / "firmware").exists()), key=lambda n: (len(n), n))

    def firmware_dir(self) -> Path:
        return self.sysfs.path(FIRMWARE)

    def bitstreams(self) -> list[str]:
        """The bitstream files in the firmware folder (relative names, as `firmware` takes them)."""
        root = self.firmware_dir()
        if not root.is_dir():
            return []
        return sorted(str(p.relative_to(root)) for p in root.rglob("*")
                      if p.is_file() and p.name.endswith(EXTENSIONS) and is_bitstream(p))

    def get_options(self) -> dict[str, Any]:
        known = self.functions() if self.functions is not None else None
        return {"managers": self.managers(), "bitstreams": self.bitstreams(), "firmware_dir": str(self.firmware_dir()),
                "extensions": [".bit", ".bin", ".bit.bin"], "commands": ["load"],
                "flags": {"full": 0, "partial": PARTIAL_RECONFIG}, "needs_idle": True, "functions": known}

    def get_state(self) -> dict[str, Any]:
        record = self._read_record()
        out: dict[str, Any] = {}
        for manager in self.managers():
            base = f"{MANAGERS}/{manager}"
            entry = {**(record.get(manager) or {"full": None, "partials": {}})}
            for name in ("name", "state"):
                entry[name] = self.sysfs.read(f"{base}/{name}") if self.sysfs.exists(f"{base}/{name}") else None
            entry["flags"] = self.sysfs.read_int(f"{base}/flags") if self.sysfs.exists(f"{base}/flags") else None
            out[manager] = entry
        latest = max((e["last_reconfiguration"] for e in out.values() if e.get("last_reconfiguration")),
                     key=lambda last: last.get("at", 0), default=None)
        return {"managers": out, "last_reconfiguration": latest}

    # -- apply ---------------------------------------------------------------------------------

    def apply(self, command: Command) -> dict[str, Any]:
        options = self.get_options()
        check_keys(command, {"command", "bitstream", "partial", "region", "manager", "force"}, options)
        action = command.get("command", "load")
        if action != "load":
            raise InvalidCommand(f"command must be 'load', not {action!r}", options=options)
        manager = command.get("manager", options["managers"][0])
        if manager not in options["managers"]:
            raise InvalidCommand(f"no FPGA manager {manager!r} (there are: {', '.join(options['managers'])})",
                                 options=options)
        partial = command.get("partial", False)
        if not isinstance(partial, bool):
            raise InvalidCommand(f"partial must be true or false, not {partial!r}", options=options)
        region = command.get("region")
        if partial and (not isinstance(region, str) or not _REGION.fullmatch(region) or region == FABRIC):
            raise InvalidCommand(f"a partial bitstream names its region (lowercase letters, digits, '-', '_'; not "
                                 f"{FABRIC!r}), not {region!r}", options=options)
        if not partial and region is not None:
            raise InvalidCommand("region goes with a partial bitstream only", options=options)
        force = command.get("force", False)
        if not isinstance(force, bool):
            raise InvalidCommand(f"force must be true or false, not {force!r}", options=options)
        bitstream = self.check_bitstream(command.get("bitstream"), options)
        record = self._read_record()
        scope = self._scope(bitstream, region, record, options["functions"], options) if partial else None

        mine = record.get(manager) or {"full": None, "partials": {}}
        base = f"{MANAGERS}/{manager}"
        loaded = mine["partials"].get(region) if partial else mine["full"]
        if loaded == bitstream and self.sysfs.read(f"{base}/state") == OPERATING:
            self.changed = False
            return self.get_state()

        if options["functions"] is None and not force:
            raise Unsupported("nothing on this node knows which functions use the FPGA (on a cluster they run in "
                              "pods), so none can be drained: reprogramming could pull the fabric from under one; "
                              'once they are idle, say so with "force": true', options=options)
        services = self._users(options["functions"] or {}, scope)
        drained, forced = self._drain(services, force)
        try:
            self._program(base, bitstream, partial, mine, region)
        finally:
            self._release(services)
        if partial:
            mine["partials"] = {**mine["partials"], region: bitstream}
        else:
            mine["full"], mine["partials"] = bitstream, {}  # a full bitstream replaces every region's
        mine["last_reconfiguration"] = {"manager": manager, "bitstream": bitstream, "partial": partial,
                                        "region": region, "needs_idle": True, "drained": drained,
                                        "forced": forced, "at": time.time()}
        record[manager] = mine
        self._write_record(record)
        self.changed = True
        return self.get_state()

    def check_bitstream(self, name: Any, options: dict[str, Any]) -> str:
        """The bitstream's name relative to the firmware folder; InvalidCommand for anything else (nothing written)."""
        if not isinstance(name, str) or not name or "\n" in name or "\x00" in name:
            raise InvalidCommand(f"bitstream must be a file name under {self.firmware_dir()}, not {name!r}",
                                 options=options)
        if Path(name).is_absolute() or ".." in Path(name).parts:
            raise InvalidCommand(f"bitstream {name!r} must be relative to the firmware folder, without '..'",
                                 options=options)
        if not name.endswith(EXTENSIONS):
            raise InvalidCommand(f"bitstream {name!r} is not a .bit, .bin or .bit.bin file", options=options)
        root = self.firmware_dir().resolve()
        path = (root / name).resolve()
        if not path.is_relative_to(root):
            raise InvalidCommand(f"bitstream {name!r} leads out of {root}", options=options)
        if not path.is_file():
            raise InvalidCommand(f"no bitstream {name!r} in {root}", options=options)
        if path.stat().st_size == 0:
            raise InvalidCommand(f"bitstream {name!r} is empty", options=options)
        if not is_bitstream(path):
            raise InvalidCommand(f"{name!r} has no Xilinx sync word in its first {SYNC_WITHIN} bytes: not a "
                                 "bitstream (other firmware lives in that folder too)", options=options)
        return name

    def _scope(self, bitstream: str, region: str, record: dict[str, Any], functions: dict[str, dict[str, Any]] | None,
               options: dict[str, Any]) -> str | None:
        """The region a partial bitstream reprograms, from its name (`rp0_fft.bin`: rp0); None when the name names
        no known region (all is drained); InvalidCommand when it names another known region than `region`."""
        prefix, underscore, _ = Path(bitstream).name.partition("_")
        if underscore and prefix == region:
            return region
        known = {str(f.get("region")) for f in (functions or {}).values() if f.get("region") not in (None, FABRIC)}
        known |= {r for entry in record.values() if isinstance(entry, dict) for r in entry.get("partials") or {}}
        if underscore and prefix in known:
            raise InvalidCommand(f"bitstream {bitstream!r} programs region {prefix!r} (its name says so), not "
                                 f"{region!r}", options=options)
        log.info("%s names no known region: every function that uses the FPGA is drained", bitstream)
        return None

    @staticmethod
    def _users(known: dict[str, dict[str, Any]], region: str | None) -> list[str]:
        """The Services to drain: every FPGA function for a full reload (or a partial one into an unknown region);
        the region's and the fabric's for a partial one."""
        return sorted({str(f["service"]) for f in known.values()
                       if region is None or f.get("region") in (region, FABRIC, None)})

    def _drain(self, services: list[str], force: bool) -> tuple[list[str], bool]:
        """Hold `services` until idle: (what was drained, whether `force` stood in for a drain that was impossible).
        Whatever goes wrong, they are released again before the error is raised."""
        if self.functions is None:
            return [], True  # apply refused this without force
        if not services:
            return [], False
        if self.drainer is None:
            if not force:
                raise Unsupported(f"{', '.join(services)} use the FPGA and nothing here can drain them first; once "
                                  'they are idle, say so with "force": true')
            return [], True
        try:
            self.drainer.drain(services, self.drain_timeout_s)
        except BaseException as exc:  # a drain cut short (or cancelled) may have left some of them held
            self._release(services)
            if isinstance(exc, DrainFailed) or not isinstance(exc, Exception):
                raise
            raise DrainFailed(f"could not drain {', '.join(services)} before reconfiguring: {exc}") from exc
        return services, False

    def _release(self, services: list[str]) -> None:
        if self.drainer is None or not services:
            return
        try:
            self.drainer.release(services)
        except Exception:  # what the fabric holds is the command's result; the functions' host is told by its log
            log.exception("could not release %s after reconfiguring the FPGA", ", ".join(services))

    def _program(self, base: str, bitstream: str, partial: bool, mine: dict[str, Any], region: str | None) -> None:
        """Write flags and firmware; on failure put the previous flags and bitstream back and raise."""
        flags_before = self.sysfs.read(f"{base}/flags")
        try:
            self._load(base, bitstream, partial)
        except KnobError as exc:
            exc.rolled_back = self._rollback(base, flags_before, mine, partial, region)
            raise

    def _load(self, base: str, bitstream: str, partial: bool) -> None:
        self.sysfs.write(f"{base}/flags", PARTIAL_RECONFIG if partial else 0)
        self.sysfs.write(f"{base}/firmware", bitstream)
        state = self.sysfs.read(f"{base}/state")
        if state != OPERATING:
            raise HardwareError(f"{self.sysfs.path(base)} is in state {state!r} after loading {bitstream}")

    def _rollback(self, base: str, flags_before: str, mine: dict[str, Any], partial: bool, region: str | None) -> bool:
        """Load again what the failed command replaced, then put the flags back; True when that was all done."""
        again: list[tuple[str, bool]] = []
        if partial:
            if mine["partials"].get(region):
                again.append((mine["partials"][region], True))
        elif mine["full"]:
            again += [(mine["full"], False), *((name, True) for name in mine["partials"].values())]
        try:
            for name, was_partial in again:
                self._load(base, name, was_partial)
            self.sysfs.write(f"{base}/flags", flags_before)
            operating = self.sysfs.read(f"{base}/state") == OPERATING
        except KnobError as exc:
            log.error("rollback of %s: could not load the previous bitstream again: %s", self.sysfs.path(base), exc)
            return False
        if not again:  # nothing was undone: a region with nothing loaded before has nothing to go back to, and a
            return False  # fabric whose bitstream this knob did not load (the boot's) cannot be loaded again
        return operating

    def _read_record(self) -> dict[str, Any]:
        try:
            return json.loads(self.record.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            log.error("%s is unreadable (%s): what the FPGA holds is not known", self.record, exc)
            return {}

    def _write_record(self, record: dict[str, Any]) -> None:
        from mapemesh.files import write_atomically

        try:
            write_atomically(self.record, json.dumps(record, indent=1, sort_keys=True) + "\n")
        except OSError as exc:
            raise HardwareError(f"the fabric is programmed but {self.record} could not be written: {exc}") from exc


def is_bitstream(path: Path) -> bool:
    """Whether the file holds a Xilinx bitstream: its sync word within its first SYNC_WITHIN bytes."""
    try:
        with open(path, "rb") as f:
            head = f.read(SYNC_WITHIN)
    except OSError:
        return False
    return any(word in head for word in SYNC_WORDS)


def board_power(sysfs: Sysfs) -> dict[str, float]:
    """The board's power monitors (INA2xx through hwmon, as the ZCU102's rails): sensor -> watts."""
    out: dict[str, float] = {}
    for hwmon in sorted(sysfs.path("sys/class/hwmon").glob("hwmon*")):
        try:
            if not (hwmon / "name").read_text().strip().startswith("ina"):
                continue
            microwatts = int((hwmon / "power1_input").read_text().strip())
        except (OSError, ValueError):
            continue
        label = hwmon / "power1_label"
        name = label.read_text().strip() if label.exists() else hwmon.name
        out[name] = microwatts / 1e6
    return out
