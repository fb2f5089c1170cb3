"""Check the NVIDIAGPUFrequency knob on a real NVIDIA GPU; CI never runs this (pytest does not collect it).

Run it as root on a machine with an NVIDIA GPU, its driver and the nvidia-ml-py package:

    python tests/device/nvml_check.py [--gpu 0] [--power]

It prints one JSON object per line (`{"step": ..., "ok": ...}`): NVML init, the devices, their supported clocks
(first and last few), then it locks the graphics clock of one GPU to a supported middle value through the
driver, reads the clocks back (a locked clock is what the GPU may run at; an idle or throttled GPU can read
lower, so what is read is reported, not required), applies the same command again and checks that no NVML
setter was called, and resets. With --power it also lowers the power limit by 10% and puts it back. Reset
unlocks the GPU's graphics and memory clocks; the power limit found at the start is restored at the end.

Exit status: 0 all good, 1 a check failed, 2 no NVML or no GPU, 3 no permission (run as root).
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from mapemesh.node_shim.knobs.base import KnobError, PermissionDenied, Unsupported
from mapemesh.node_shim.knobs.nvml import NVIDIAGPUFrequency

OK, FAILED, NO_GPU, NO_PERMISSION = 0, 1, 2, 3


def emit(step: str, ok: bool, **fields: Any) -> None:
    """One result line on stdout (the script's output, so not a log record)."""
    sys.stdout.write(json.dumps({"step": step, "ok": ok, **fields}, default=str) + "\n")
    sys.stdout.flush()


class CountingNVML:
    """The pynvml module, counting the calls that change a GPU, so idempotence can be checked on hardware."""

    def __init__(self, module: Any):
        self.module = module
        self.changes: list[str] = []

    def __getattr__(self, name: str) -> Any:
        value = getattr(self.module, name)
        if not (name.startswith(("nvmlDeviceSet", "nvmlDeviceReset")) and callable(value)):
            return value

        def counted(*args: Any) -> Any:
            self.changes.append(name)
            return value(*args)

        return counted


def _ends(values: list[int], n: int = 4) -> dict[str, Any]:
    return {"count": len(values), "first": values[:n], "last": values[-n:]}


def run(gpu: int = 0, power: bool = False, module: Any = None) -> int:
    """Run the checks on GPU `gpu` and return the exit status."""
    if module is None:
        try:
            import pynvml as module  # imported here so that a missing package is reported, not raised
        except ImportError as exc:
            emit("import", False, error=f"pynvml cannot be imported (pip install nvidia-ml-py): {exc}")
            return NO_GPU
    nvml = CountingNVML(module)
    try:
        driver = NVIDIAGPUFrequency(nvml)
    except PermissionDenied as exc:
        emit("init", False, error=str(exc))
        return NO_PERMISSION
    except Unsupported as exc:
        emit("init", False, error=str(exc))
        return NO_GPU
    try:
        return _checks(driver, nvml, gpu, power)
    finally:
        driver.close()


def _checks(driver: NVIDIAGPUFrequency, nvml: CountingNVML, gpu: int, power: bool) -> int:
    emit("init", True, gpus=len(driver.handles))
    options = driver.get_options()["gpus"]
    emit("devices", True, devices=[{"index": int(i), "name": o["name"], "uuid": o["uuid"]} for i, o in options.items()])
    if str(gpu) not in options:
        emit("select", False, error=f"no GPU {gpu} (there are {len(options)})")
        return FAILED
    mine = options[str(gpu)]
    emit("clocks", True, gpu=gpu, memory_clocks_mhz=_ends(mine["memory_clocks_mhz"]),
         graphics_clocks_mhz=_ends(mine["graphics_clocks_mhz"]), power_limit_w=mine["power_limit_w"])
    graphics = mine["graphics_clocks_mhz"]
    if not graphics:
        emit("lock", False, error="NVML lists no supported graphics clocks for this GPU")
        return FAILED
    original_power_w = driver.get_state()[str(gpu)]["power_limit_w"]
    target = graphics[len(graphics) // 2]
    status, locked = OK, False
    try:
        try:
            state = driver.apply({"command": "set", "gpu": str(gpu), "graphics_clock_mhz": target})
            locked = True
        except PermissionDenied as exc:
            emit("lock", False, error=str(exc))
            return NO_PERMISSION
        except KnobError as exc:
            emit("lock", False, error=str(exc), code=exc.code)
            return FAILED
        read = nvml.nvmlDeviceGetClockInfo(driver.handles[gpu], nvml.NVML_CLOCK_GRAPHICS)
        emit("lock", True, requested_mhz=target, locked_graphics_mhz=state[str(gpu)]["locked_graphics_mhz"],
             graphics_clock_mhz_read=read, sm_clock_mhz=state[str(gpu)]["sm_clock_mhz"], at_target=read == target)
        nvml.changes.clear()
        driver.apply({"command": "set", "gpu": str(gpu), "graphics_clock_mhz": target})
        emit("idempotent", not nvml.changes, nvml_changes=list(nvml.changes))
        status = status if not nvml.changes else FAILED
        low = graphics[0]
        state = driver.apply({"command": "set", "gpu": str(gpu), "graphics_clock_mhz": [low, target]})
        ranged = state[str(gpu)]["locked_graphics_mhz"] == [low, target]
        emit("lock_range", ranged, requested_mhz=[low, target])
        status = status if ranged else FAILED
        if power:
            status = max(status, _power_check(driver, gpu, mine["power_limit_w"]))
        emit("telemetry", True, metrics={k: v for k, v in driver.telemetry().items() if k.startswith(f"gpu{gpu}_")})
    finally:
        if locked:
            status = max(status, _reset(driver, gpu, original_power_w))
    return status


def _power_check(driver: NVIDIAGPUFrequency, gpu: int, bounds: dict[str, float] | None) -> int:
    if not bounds or bounds.get("default") is None:
        emit("power", False, error="this GPU reports no power limit bounds")
        return FAILED
    target = round(max(bounds["min"], bounds["default"] * 0.9))
    try:
        state = driver.apply({"command": "set", "gpu": str(gpu), "power_limit_w": target})
    except PermissionDenied as exc:
        emit("power", False, error=str(exc))
        return NO_PERMISSION
    except KnobError as exc:
        emit("power", False, error=str(exc), code=exc.code)
        return FAILED
    read_w = state[str(gpu)]["power_limit_w"]
    emit("power", read_w == target, requested_w=target, power_limit_w_read=read_w)
    return OK if read_w == target else FAILED


def _reset(driver: NVIDIAGPUFrequency, gpu: int, original_power_w: float | None) -> int:
    try:
        state = driver.apply({"command": "reset", "gpu": str(gpu)})
        if original_power_w is not None and state[str(gpu)]["power_limit_w"] != original_power_w:
            # reset goes to the default limit; put back the one this machine had, which may differ
            state = driver.apply({"command": "set", "gpu": str(gpu), "power_limit_w": original_power_w})
    except KnobError as exc:
        emit("reset", False, error=str(exc), code=exc.code)
        return NO_PERMISSION if isinstance(exc, PermissionDenied) else FAILED
    ok = state[str(gpu)]["locked_graphics_mhz"] is None
    emit("reset", ok, graphics_clock_mhz=state[str(gpu)]["graphics_clock_mhz"],
         power_limit_w=state[str(gpu)]["power_limit_w"])
    return OK if ok else FAILED


def main(argv: list[str] | None = None) -> int:
    """Parse the arguments and run the checks."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gpu", type=int, default=0, help="index of the GPU to change (default 0)")
    parser.add_argument("--power", action="store_true", help="also lower the power limit by 10%% and restore it")
    args = parser.parse_args(argv)
    status = run(args.gpu, args.power)
    emit("done", status == OK, exit_status=status)
    return status


if __name__ == "__main__":
    sys.exit(main())
