"""The `NVIDIAGPUFrequency` knob: locked graphics and memory clocks and the power limit of NVIDIA GPUs (NVML).

Command::

    {"command": "set" | "reset",
     "gpu": "all" | "0,1" | 0 | [0, 1],          # default "all"
     "graphics_clock_mhz": int | [min, max],     # lock graphics clocks (nvmlDeviceSetGpuLockedClocks)
     "memory_clock_mhz": int | [min, max],       # lock memory clocks (nvmlDeviceSetMemoryLockedClocks)
     "power_limit_w": number}                    # nvmlDeviceSetPowerManagementLimit, in watts

`set` needs at least one of the three settings. A single graphics clock must be one of the GPU's supported
graphics clocks (for the requested memory clock, or else the highest one); a range must lie within them. A
memory clock (or each end of a range) must be a supported memory clock; the power limit must lie within the
GPU's limit constraints. `reset` unlocks graphics and memory clocks and sets the power limit back to the
default; it takes only `gpu`. When a setting fails on one GPU, what this command already changed is undone.

NVML is loaded from the `pynvml` module (PyPI: nvidia-ml-py). Changing clocks or power limits needs root.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from typing import Any

from mapemesh.node_shim.knobs.base import (
    Command,
    HardwareError,
    InvalidCommand,
    KnobError,
    PermissionDenied,
    Unsupported,
    check_keys,
)

log = logging.getLogger(__name__)

_SETTINGS = ("graphics_clock_mhz", "memory_clock_mhz", "power_limit_w")
_KEYS = {"command", "gpu", *_SETTINGS}
Range = tuple[int, int]
Undo = list[tuple[str, Callable[[], None]]]
Plan = tuple[Range | None, Range | None, int | None]  # memory lock, graphics lock, power limit in mW
# get_state key -> (telemetry metric, scale): clocks are reported in Hz, as the metric catalogue has them.
_TELEMETRY = {
    "utilization_gpu_pct": ("utilization_pct", 1.0), "utilization_memory_pct": ("memory_utilization_pct", 1.0),
    "power_usage_w": ("power_w", 1.0), "power_limit_w": ("power_limit_w", 1.0),
    "graphics_clock_mhz": ("graphics_clock_hz", 1e6), "sm_clock_mhz": ("sm_clock_hz", 1e6),
    "memory_clock_mhz": ("memory_clock_hz", 1e6), "temperature_c": ("temperature_c", 1.0),
}


class NVIDIAGPUFrequency:
    """Locked clocks and power limits of every GPU NVML sees; remembers the clocks it locked (NVML cannot say)."""

    name = "NVIDIAGPUFrequency"

    def __init__(self, nvml: Any = None):
        if nvml is None:
            try:
                import pynvml as nvml  # imported here: the shim must start on machines without the package
            except ImportError as exc:
                raise Unsupported(f"NVML is not available: the pynvml module (PyPI: nvidia-ml-py) cannot be "
                                  f"imported: {exc}") from None
        self.nvml = nvml
        try:
            nvml.nvmlInit()
        except nvml.NVMLError as exc:
            if isinstance(exc, nvml.NVMLError_NoPermission):
                raise PermissionDenied(f"NVML is not available: no permission to initialise it: {exc}") from None
            # LibraryNotFound (no driver installed), DriverNotLoaded (no GPU), ...: the shim leaves the knob out.
            raise Unsupported(f"NVML is not available: {exc}") from None
        try:
            count = self._call("count GPUs", None, "nvmlDeviceGetCount")
            if count < 1:
                raise Unsupported("NVML is available but sees no GPU")
            self.handles = [self._call("open GPU", i, "nvmlDeviceGetHandleByIndex", i) for i in range(count)]
            self.changed = False
            """Whether the last apply changed anything (False: the command was already in effect)."""
        except KnobError:
            self.close()
            raise
        # Per GPU: a (min, max) lock this driver set; None when this driver unlocked it; absent when unknown.
        self.locked_graphics: dict[int, Range | None] = {}
        self.locked_memory: dict[int, Range | None] = {}
        self._static: dict[int, dict[str, Any]] = {}
        self._graphics_clocks: dict[tuple[int, int], list[int]] = {}

    def close(self) -> None:
        """Release NVML (nvmlShutdown); the driver must not be used afterwards."""
        try:
            self.nvml.nvmlShutdown()
        except self.nvml.NVMLError as exc:
            log.debug("nvmlShutdown: %s", exc)

    # -- NVML calls --------------------------------------------------------------------------------------------

    def _call(self, what: str, gpu: int | None, function: str, *args: Any) -> Any:
        """Call an NVML function, turning NVMLError into the knob's typed errors."""
        try:
            return getattr(self.nvml, function)(*args)
        except self.nvml.NVMLError as exc:
            raise self._error(exc, what, gpu) from exc

    def _error(self, exc: Exception, what: str, gpu: int | None) -> KnobError:
        where = "" if gpu is None else f" on GPU {gpu}"
        if isinstance(exc, self.nvml.NVMLError_NoPermission):
            return PermissionDenied(
                f"NVML refused to {what}{where}: no permission. Locking clocks and setting power limits need "
                f"root (NVML device commands are root-only): run the shim as root. `nvidia-smi -acp UNRESTRICTED` "
                f"does not help here: it only opens application clocks to other users.")
        if isinstance(exc, self.nvml.NVMLError_NotSupported):
            return Unsupported(f"GPU {gpu} does not support: {what} ({exc})")
        return HardwareError(f"NVML failed to {what}{where}: {exc}")

    def _optional(self, what: str, gpu: int, function: str, *args: Any) -> Any:
        """A reading, or None where the GPU does not support it."""
        try:
            return self._call(what, gpu, function, *args)
        except Unsupported:
            return None

    def _memory_clocks(self, gpu: int) -> list[int]:
        info = self._static_info(gpu)
        if info["memory_clocks_mhz"] is None:
            info["memory_clocks_mhz"] = sorted(set(self._call(
                "list supported memory clocks", gpu, "nvmlDeviceGetSupportedMemoryClocks", self.handles[gpu])))
        return info["memory_clocks_mhz"]

    def _supported_graphics(self, gpu: int, memory_mhz: int) -> list[int]:
        key = (gpu, memory_mhz)
        if key not in self._graphics_clocks:
            self._graphics_clocks[key] = sorted(set(self._call(
                "list supported graphics clocks", gpu, "nvmlDeviceGetSupportedGraphicsClocks", self.handles[gpu],
                memory_mhz)))
        return self._graphics_clocks[key]

    def _static_info(self, gpu: int) -> dict[str, Any]:
        """Name, UUID and power limit bounds: they do not change while the driver runs."""
        if gpu not in self._static:
            handle = self.handles[gpu]
            bounds = self._optional("read power limit constraints", gpu,
                                    "nvmlDeviceGetPowerManagementLimitConstraints", handle)
            default = self._optional("read the default power limit", gpu,
                                     "nvmlDeviceGetPowerManagementDefaultLimit", handle)
            self._static[gpu] = {
                "name": _text(self._call("read the name", gpu, "nvmlDeviceGetName", handle)),
                "uuid": _text(self._call("read the UUID", gpu, "nvmlDeviceGetUUID", handle)),
                "power_mw": None if bounds is None else (int(bounds[0]), int(bounds[1])),
                "default_power_mw": None if default is None else int(default),
                "memory_clocks_mhz": None,
            }
        return self._static[gpu]

    # -- the knob ----------------------------------------------------------------------------------------------

    def get_options(self) -> dict[str, Any]:
        """Per GPU: name, UUID, supported memory and graphics clocks (MHz) and power limit bounds (W)."""
        gpus: dict[str, Any] = {}
        for gpu in range(len(self.handles)):
            info = self._static_info(gpu)
            try:
                memory = self._memory_clocks(gpu)
                graphics = self._supported_graphics(gpu, memory[-1]) if memory else []
            except KnobError as exc:
                log.debug("GPU %d clocks: %s", gpu, exc)
                memory, graphics = [], []
            power = None
            if info["power_mw"] is not None:
                default = info["default_power_mw"]
                power = {"min": info["power_mw"][0] / 1000, "max": info["power_mw"][1] / 1000,
                         "default": None if default is None else default / 1000}
            gpus[str(gpu)] = {
                "name": info["name"], "uuid": info["uuid"],
                "memory_clocks_mhz": memory, "graphics_clocks_mhz": graphics, "power_limit_w": power,
            }
        return {"gpus": gpus, "commands": ["set", "reset"], "settings": list(_SETTINGS)}

    def get_state(self) -> dict[str, Any]:
        """Per GPU: current clocks, the locks this driver set, power limit and draw, utilisation, temperature."""
        nvml = self.nvml
        state: dict[str, Any] = {}
        for gpu, handle in enumerate(self.handles):
            limit = self._optional("read the power limit", gpu, "nvmlDeviceGetPowerManagementLimit", handle)
            usage = self._optional("read the power draw", gpu, "nvmlDeviceGetPowerUsage", handle)
            rates = self._optional("read utilisation", gpu, "nvmlDeviceGetUtilizationRates", handle)
            locked_graphics, locked_memory = self.locked_graphics.get(gpu), self.locked_memory.get(gpu)
            state[str(gpu)] = {
                "graphics_clock_mhz": self._optional("read clocks", gpu, "nvmlDeviceGetClockInfo", handle,
                                                     nvml.NVML_CLOCK_GRAPHICS),
                "sm_clock_mhz": self._optional("read clocks", gpu, "nvmlDeviceGetClockInfo", handle,
                                               nvml.NVML_CLOCK_SM),
                "memory_clock_mhz": self._optional("read clocks", gpu, "nvmlDeviceGetClockInfo", handle,
                                                   nvml.NVML_CLOCK_MEM),
                "locked_graphics_mhz": list(locked_graphics) if locked_graphics else None,
                "locked_memory_mhz": list(locked_memory) if locked_memory else None,
                "power_limit_w": None if limit is None else limit / 1000,
                "power_usage_w": None if usage is None else usage / 1000,
                "utilization_gpu_pct": None if rates is None else rates.gpu,
                "utilization_memory_pct": None if rates is None else rates.memory,
                "temperature_c": self._optional("read the temperature", gpu, "nvmlDeviceGetTemperature", handle,
                                                nvml.NVML_TEMPERATURE_GPU),
            }
        return state

    def telemetry(self) -> dict[str, float]:
        """Flat metrics for the reporter (`gpu0_power_w`, `gpu0_graphics_clock_hz`, ...); unreadable ones left out."""
        out: dict[str, float] = {}
        for gpu, figures in self.get_state().items():
            for key, (metric, scale) in _TELEMETRY.items():
                if figures.get(key) is not None:
                    out[f"gpu{gpu}_{metric}"] = float(figures[key]) * scale
        return out

    def apply(self, command: Command) -> dict[str, Any]:
        """Validate `command` (nothing is set when it is invalid), set what differs, return the state after."""
        options = self.get_options()
        check_keys(command, _KEYS, options)
        action = command.get("command")
        if action not in ("set", "reset"):
            raise InvalidCommand(f"command: {action!r} is not one of set, reset", options=options)
        gpus = self._gpus(command.get("gpu", "all"), options)
        undo: Undo = []
        try:
            if action == "reset":
                extra = sorted(set(command) & set(_SETTINGS))
                if extra:
                    raise InvalidCommand(f"{extra[0]}: reset takes only gpu", options=options)
                for gpu in gpus:
                    self._reset(gpu, undo)
            else:
                plans = [self._plan(gpu, command, options) for gpu in gpus]  # every GPU is validated before any change
                for gpu, (memory, graphics, power_mw) in zip(gpus, plans, strict=True):
                    if memory is not None:
                        self._lock(gpu, "memory", memory, undo)
                    if graphics is not None:
                        self._lock(gpu, "graphics", graphics, undo)
                    if power_mw is not None:
                        self._set_power(gpu, power_mw, undo)
        except KnobError as exc:
            exc.rolled_back = self._undo(undo) or exc.rolled_back
            raise
        self.changed = bool(undo)
        return self.get_state()

    def _gpus(self, selector: Any, options: dict[str, Any]) -> list[int]:
        count = len(self.handles)
        if selector == "all":
            return list(range(count))
        try:
            if isinstance(selector, str):
                chosen = [int(part) for part in selector.split(",")]
            elif isinstance(selector, int) and not isinstance(selector, bool):
                chosen = [selector]
            elif isinstance(selector, list) and all(isinstance(i, int) and not isinstance(i, bool) for i in selector):
                chosen = list(selector)
            else:
                raise ValueError(selector)
        except ValueError:
            chosen = []
        if not chosen or any(not 0 <= i < count for i in chosen):
            raise InvalidCommand(f"gpu: {selector!r} is not 'all' or a list of GPU indices 0..{count - 1}",
                                 options=options)
        return sorted(set(chosen))

    def _plan(self, gpu: int, command: Command, options: dict[str, Any]) -> Plan:
        """The memory lock, graphics lock and power limit (mW) to set on `gpu`; InvalidCommand when one does not fit."""
        if not any(key in command for key in _SETTINGS):
            raise InvalidCommand(f"set needs at least one of {', '.join(_SETTINGS)}", options=options)
        memory = graphics = power_mw = None
        if "memory_clock_mhz" in command:
            memory = self._clock_range("memory_clock_mhz", command["memory_clock_mhz"], options)
            supported = self._memory_clocks(gpu)
            if any(end not in supported for end in memory):
                raise InvalidCommand(f"memory_clock_mhz: {command['memory_clock_mhz']!r} is not among GPU {gpu}'s "
                                     f"memory clocks {supported}", options=options)
        if "graphics_clock_mhz" in command:
            graphics = self._clock_range("graphics_clock_mhz", command["graphics_clock_mhz"], options)
            # Graphics clocks are listed per memory clock. The current memory clock drops when the GPU idles,
            # so validating against it would refuse clocks the GPU reaches under load: use the requested (or
            # locked) memory clock, else the highest, as get_options does.
            reference = memory or self.locked_memory.get(gpu)
            memory_mhz = reference[1] if reference else max(self._memory_clocks(gpu), default=0)
            supported = self._supported_graphics(gpu, memory_mhz) if memory_mhz else []
            fits = (graphics[0] in supported if isinstance(command["graphics_clock_mhz"], int)
                    else bool(supported) and supported[0] <= graphics[0] and graphics[1] <= supported[-1])
            if not fits:
                raise InvalidCommand(f"graphics_clock_mhz: {command['graphics_clock_mhz']!r} is not among GPU {gpu}'s "
                                     f"graphics clocks at {memory_mhz} MHz memory: {supported}",
                                     options=options)
        if "power_limit_w" in command:
            watts = command["power_limit_w"]
            if isinstance(watts, bool) or not isinstance(watts, int | float) or not math.isfinite(watts):
                raise InvalidCommand(f"power_limit_w: {watts!r} is not a finite number", options=options)
            bounds = self._static_info(gpu)["power_mw"]
            if bounds is None:
                raise Unsupported(f"GPU {gpu} does not support power limits")
            low, high = bounds
            power_mw = round(watts * 1000)
            if not low <= power_mw <= high:
                raise InvalidCommand(f"power_limit_w: {watts!r} is outside GPU {gpu}'s limits "
                                     f"{low / 1000:g}..{high / 1000:g} W", options=options)
        return memory, graphics, power_mw

    @staticmethod
    def _clock_range(key: str, value: Any, options: dict[str, Any]) -> Range:
        if isinstance(value, int) and not isinstance(value, bool):
            low = high = value
        elif (isinstance(value, list | tuple) and len(value) == 2
              and all(isinstance(v, int) and not isinstance(v, bool) for v in value)):
            low, high = value
        else:
            raise InvalidCommand(f"{key}: {value!r} is not a clock in MHz or a [min, max] pair",
                                 options=options)
        if not 0 < low <= high:
            raise InvalidCommand(f"{key}: {value!r} is not 0 < min <= max", options=options)
        return low, high

    def _lock(self, gpu: int, kind: str, target: Range, undo: Undo) -> None:
        locks = self.locked_graphics if kind == "graphics" else self.locked_memory
        if locks.get(gpu) == target:
            return
        setter = "nvmlDeviceSetGpuLockedClocks" if kind == "graphics" else "nvmlDeviceSetMemoryLockedClocks"
        resetter = "nvmlDeviceResetGpuLockedClocks" if kind == "graphics" else "nvmlDeviceResetMemoryLockedClocks"
        known, before = gpu in locks, locks.get(gpu)
        self._call(f"lock {kind} clocks", gpu, setter, self.handles[gpu], *target)
        locks[gpu] = target
        log.info("GPU %d %s clocks locked to %d..%d MHz", gpu, kind, *target)

        def put_back() -> None:
            if before is not None:
                self._call(f"lock {kind} clocks", gpu, setter, self.handles[gpu], *before)
            else:
                self._call(f"reset {kind} clocks", gpu, resetter, self.handles[gpu])
            if known:
                locks[gpu] = before
            else:
                locks.pop(gpu, None)

        undo.append((f"GPU {gpu} {kind} clocks", put_back))

    def _unlock(self, gpu: int, kind: str, undo: Undo) -> None:
        locks = self.locked_graphics if kind == "graphics" else self.locked_memory
        if gpu in locks and locks[gpu] is None:
            return  # this driver unlocked it and has not locked it since
        before = locks.get(gpu)
        resetter = "nvmlDeviceResetGpuLockedClocks" if kind == "graphics" else "nvmlDeviceResetMemoryLockedClocks"
        try:
            self._call(f"reset {kind} clocks", gpu, resetter, self.handles[gpu])
        except Unsupported:
            if before is not None:
                raise
            log.debug("GPU %d cannot lock %s clocks, so there is nothing to reset", gpu, kind)
        locks[gpu] = None
        if before is not None:
            setter = "nvmlDeviceSetGpuLockedClocks" if kind == "graphics" else "nvmlDeviceSetMemoryLockedClocks"

            def put_back() -> None:
                self._call(f"lock {kind} clocks", gpu, setter, self.handles[gpu], *before)
                locks[gpu] = before

            undo.append((f"GPU {gpu} {kind} clocks", put_back))

    def _set_power(self, gpu: int, power_mw: int, undo: Undo) -> None:
        handle = self.handles[gpu]
        before = int(self._call("read the power limit", gpu, "nvmlDeviceGetPowerManagementLimit", handle))
        if before == power_mw:
            return
        self._call("set the power limit", gpu, "nvmlDeviceSetPowerManagementLimit", handle, power_mw)
        log.info("GPU %d power limit %d -> %d mW", gpu, before, power_mw)
        undo.append((f"GPU {gpu} power limit",
                     lambda: self._call("restore the power limit", gpu, "nvmlDeviceSetPowerManagementLimit",
                                        handle, before)))

    def _reset(self, gpu: int, undo: Undo) -> None:
        self._unlock(gpu, "graphics", undo)
        self._unlock(gpu, "memory", undo)
        default = self._static_info(gpu)["default_power_mw"]
        if default is not None:
            self._set_power(gpu, default, undo)

    @staticmethod
    def _undo(undo: Undo) -> bool:
        """Undo the changes of a failed command, newest first; True when something was undone."""
        undone = False
        for what, put_back in reversed(undo):
            try:
                put_back()
                undone = True
            except KnobError as exc:  # best effort: the failure that caused the undo is what gets reported
                log.error("could not undo %s: %s", what, exc)
        undo.clear()
        return undone


def _text(value: Any) -> str:
    """NVML strings: bytes in older pynvml releases, str in newer ones."""
    return value.decode() if isinstance(value, bytes) else str(value)
