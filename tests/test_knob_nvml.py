"""The NVIDIAGPUFrequency knob against a stand-in for pynvml: validation, error mapping, undo, idempotence."""

from __future__ import annotations

import inspect
import sys
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import pytest

from mapemesh.node_shim.knobs.base import HardwareError, InvalidCommand, Knob, PermissionDenied, Unsupported
from mapemesh.node_shim.knobs.nvml import NVIDIAGPUFrequency


# The names below are pynvml's (hence not snake_case), so that the knob cannot tell the stand-in from it.
class NVMLError(Exception):
    """pynvml.NVMLError: the base of every NVML failure."""


class NVMLError_NoPermission(NVMLError):
    pass


class NVMLError_NotSupported(NVMLError):
    pass


class NVMLError_LibraryNotFound(NVMLError):
    pass


class NVMLError_Unknown(NVMLError):
    pass


@dataclass
class FakeGPU:
    """One GPU's state as NVML would report it: clocks in MHz, power in mW."""

    name: str | bytes
    uuid: str
    # As NVML lists them: highest first, graphics clocks per memory clock, with repeats.
    graphics_clocks: dict[int, list[int]] = field(default_factory=lambda: {
        1593: [1980, 1755, 1410, 1410, 1095, 705, 210], 877: [1410, 1095, 705, 210], 405: [405, 210]})
    power_constraints_mw: tuple[int, int] = (100_000, 400_000)
    default_power_mw: int = 300_000
    power_limit_mw: int = 300_000
    power_usage_mw: int = 65_432
    clocks: dict[int, int] = field(default_factory=lambda: {0: 210, 1: 210, 2: 405})  # graphics, SM, memory
    locked_graphics: tuple[int, int] | None = None
    locked_memory: tuple[int, int] | None = None
    utilization: tuple[int, int] = (37, 12)
    temperature_c: int = 41


class FakeNVML:
    """A stand-in for the pynvml module: the same names and argument order, with GPUs held in memory.

    `fail(function, gpu, error)` makes the next calls of `function` on that GPU raise `error`; `calls` records
    every call as (function name, gpu index or None, further arguments).
    """

    NVMLError = NVMLError
    NVMLError_NoPermission = NVMLError_NoPermission
    NVMLError_NotSupported = NVMLError_NotSupported
    NVMLError_LibraryNotFound = NVMLError_LibraryNotFound
    NVML_CLOCK_GRAPHICS, NVML_CLOCK_SM, NVML_CLOCK_MEM = 0, 1, 2
    NVML_TEMPERATURE_GPU = 0

    def __init__(self, gpus: list[FakeGPU] | None = None, init_error: type[NVMLError] | None = None):
        self.gpus = gpus if gpus is not None else [FakeGPU("NVIDIA H100 80GB HBM3", "GPU-aaaa"),
                                                   FakeGPU(b"NVIDIA H100 80GB HBM3", "GPU-bbbb")]
        self.init_error = init_error
        self.failures: dict[tuple[str, int], type[NVMLError]] = {}
        self.calls: list[tuple[Any, ...]] = []
        self.initialised = 0

    def fail(self, function: str, gpu: int, error: type[NVMLError]) -> None:
        self.failures[(function, gpu)] = error

    def changes(self) -> list[tuple[Any, ...]]:
        """The calls that change a GPU (nvmlDeviceSet*, nvmlDeviceReset*)."""
        return [c for c in self.calls if c[0].startswith(("nvmlDeviceSet", "nvmlDeviceReset"))]

    def _enter(self, function: str, handle: FakeGPU | None = None, *args: Any) -> FakeGPU:
        index = None if handle is None else self.gpus.index(handle)
        self.calls.append((function, index, *args))
        if index is not None and (function, index) in self.failures:
            raise self.failures[(function, index)](f"{function} failed")
        return handle  # type: ignore[return-value]

    def nvmlInit(self) -> None:
        self.calls.append(("nvmlInit", None))
        if self.init_error is not None:
            raise self.init_error("NVML Shared Library Not Found")
        self.initialised += 1

    def nvmlShutdown(self) -> None:
        self.calls.append(("nvmlShutdown", None))
        self.initialised -= 1

    def nvmlDeviceGetCount(self) -> int:
        return len(self.gpus)

    def nvmlDeviceGetHandleByIndex(self, index: int) -> FakeGPU:
        return self.gpus[index]

    def nvmlDeviceGetName(self, handle: FakeGPU) -> str | bytes:
        return self._enter("nvmlDeviceGetName", handle).name

    def nvmlDeviceGetUUID(self, handle: FakeGPU) -> str:
        return self._enter("nvmlDeviceGetUUID", handle).uuid

    def nvmlDeviceGetSupportedMemoryClocks(self, handle: FakeGPU) -> list[int]:
        return sorted(self._enter("nvmlDeviceGetSupportedMemoryClocks", handle).graphics_clocks, reverse=True)

    def nvmlDeviceGetSupportedGraphicsClocks(self, handle: FakeGPU, memoryClockMHz: int) -> list[int]:
        gpu = self._enter("nvmlDeviceGetSupportedGraphicsClocks", handle, memoryClockMHz)
        if memoryClockMHz not in gpu.graphics_clocks:
            raise NVMLError("Invalid Argument")
        return list(gpu.graphics_clocks[memoryClockMHz])

    def nvmlDeviceSetGpuLockedClocks(self, handle: FakeGPU, minGpuClockMHz: int, maxGpuClockMHz: int) -> None:
        self._enter("nvmlDeviceSetGpuLockedClocks", handle, minGpuClockMHz, maxGpuClockMHz).locked_graphics = (
            minGpuClockMHz, maxGpuClockMHz)

    def nvmlDeviceResetGpuLockedClocks(self, handle: FakeGPU) -> None:
        self._enter("nvmlDeviceResetGpuLockedClocks", handle).locked_graphics = None

    def nvmlDeviceSetMemoryLockedClocks(self, handle: FakeGPU, minMemClockMHz: int, maxMemClockMHz: int) -> None:
        self._enter("nvmlDeviceSetMemoryLockedClocks", handle, minMemClockMHz, maxMemClockMHz).locked_memory = (
            minMemClockMHz, maxMemClockMHz)

    def nvmlDeviceResetMemoryLockedClocks(self, handle: FakeGPU) -> None:
        self._enter("nvmlDeviceResetMemoryLockedClocks", handle).locked_memory = None

    def nvmlDeviceGetClockInfo(self, handle: FakeGPU, type: int) -> int:
        return self._enter("nvmlDeviceGetClockInfo", handle, type).clocks[type]

    def nvmlDeviceGetPowerManagementLimit(self, handle: FakeGPU) -> int:
        return self._enter("nvmlDeviceGetPowerManagementLimit", handle).power_limit_mw

    def nvmlDeviceGetPowerManagementLimitConstraints(self, handle: FakeGPU) -> list[int]:
        return list(self._enter("nvmlDeviceGetPowerManagementLimitConstraints", handle).power_constraints_mw)

    def nvmlDeviceGetPowerManagementDefaultLimit(self, handle: FakeGPU) -> int:
        return self._enter("nvmlDeviceGetPowerManagementDefaultLimit", handle).default_power_mw

    def nvmlDeviceSetPowerManagementLimit(self, handle: FakeGPU, limit: int) -> None:
        self._enter("nvmlDeviceSetPowerManagementLimit", handle, limit).power_limit_mw = limit

    def nvmlDeviceGetPowerUsage(self, handle: FakeGPU) -> int:
        return self._enter("nvmlDeviceGetPowerUsage", handle).power_usage_mw

    def nvmlDeviceGetUtilizationRates(self, handle: FakeGPU) -> SimpleNamespace:
        gpu = self._enter("nvmlDeviceGetUtilizationRates", handle)
        return SimpleNamespace(gpu=gpu.utilization[0], memory=gpu.utilization[1])

    def nvmlDeviceGetTemperature(self, handle: FakeGPU, sensor: int) -> int:
        return self._enter("nvmlDeviceGetTemperature", handle, sensor).temperature_c


@pytest.fixture
def fake() -> FakeNVML:
    return FakeNVML()


@pytest.fixture
def knob(fake: FakeNVML) -> NVIDIAGPUFrequency:
    return NVIDIAGPUFrequency(fake)


def test_the_fake_has_the_names_of_real_pynvml():
    pynvml = pytest.importorskip("pynvml")
    used = [name for name in dir(FakeNVML) if name.startswith(("nvml", "NVML"))]
    assert [name for name in used if not hasattr(pynvml, name)] == []
    assert (FakeNVML.NVML_CLOCK_GRAPHICS, FakeNVML.NVML_CLOCK_SM, FakeNVML.NVML_CLOCK_MEM) == (
        pynvml.NVML_CLOCK_GRAPHICS, pynvml.NVML_CLOCK_SM, pynvml.NVML_CLOCK_MEM)
    assert FakeNVML.NVML_TEMPERATURE_GPU == pynvml.NVML_TEMPERATURE_GPU
    for name in used:
        if callable(getattr(pynvml, name)) and not isinstance(getattr(pynvml, name), type):
            fake_args = list(inspect.signature(getattr(FakeNVML, name)).parameters)[1:]  # without self
            assert fake_args == list(inspect.signature(getattr(pynvml, name)).parameters), name


def test_is_a_knob_and_initialises_nvml_once(fake, knob):
    assert isinstance(knob, Knob)
    assert knob.name == "NVIDIAGPUFrequency"
    assert fake.initialised == 1
    knob.close()
    assert fake.initialised == 0


def test_lock_graphics_clocks_exact_on_every_gpu(fake, knob):
    state = knob.apply({"command": "set", "graphics_clock_mhz": 1410})
    assert [g.locked_graphics for g in fake.gpus] == [(1410, 1410), (1410, 1410)]
    assert state["0"]["locked_graphics_mhz"] == [1410, 1410]
    assert state["1"]["locked_memory_mhz"] is None


def test_lock_graphics_clocks_to_a_range_on_one_gpu(fake, knob):
    knob.apply({"command": "set", "gpu": "1", "graphics_clock_mhz": [300, 1500]})
    assert fake.gpus[0].locked_graphics is None
    assert fake.gpus[1].locked_graphics == (300, 1500)


def test_lock_memory_clocks_and_graphics_for_that_memory_clock(fake, knob):
    knob.apply({"command": "set", "gpu": "0,1", "memory_clock_mhz": 877, "graphics_clock_mhz": 1095})
    assert [g.locked_memory for g in fake.gpus] == [(877, 877), (877, 877)]
    assert [g.locked_graphics for g in fake.gpus] == [(1095, 1095), (1095, 1095)]


def test_power_limit_in_watts_is_set_in_milliwatts(fake, knob):
    state = knob.apply({"command": "set", "gpu": 0, "power_limit_w": 250.5})
    assert fake.gpus[0].power_limit_mw == 250_500
    assert fake.gpus[1].power_limit_mw == 300_000
    assert state["0"]["power_limit_w"] == 250.5


@pytest.mark.parametrize(("command", "field", "listed"), [
    ({"command": "set", "graphics_clock_mhz": 1500}, "graphics_clock_mhz", "1410"),
    ({"command": "set", "memory_clock_mhz": 877, "graphics_clock_mhz": 1755}, "graphics_clock_mhz", "1410"),
    ({"command": "set", "graphics_clock_mhz": [100, 1500]}, "graphics_clock_mhz", "210"),
    ({"command": "set", "graphics_clock_mhz": [1500, 2500]}, "graphics_clock_mhz", "1980"),
    ({"command": "set", "graphics_clock_mhz": [1500, 300]}, "graphics_clock_mhz", "min <= max"),
    ({"command": "set", "graphics_clock_mhz": "fast"}, "graphics_clock_mhz", "[min, max]"),
    ({"command": "set", "memory_clock_mhz": 1000}, "memory_clock_mhz", "877"),
    ({"command": "set", "memory_clock_mhz": [405, 1000]}, "memory_clock_mhz", "1593"),
    ({"command": "set", "power_limit_w": 450}, "power_limit_w", "100..400 W"),
    ({"command": "set", "power_limit_w": "300"}, "power_limit_w", "number"),
    ({"command": "set", "gpu": "2", "power_limit_w": 300}, "gpu", "0..1"),
    ({"command": "set", "gpu": "first", "power_limit_w": 300}, "gpu", "0..1"),
    ({"command": "set"}, "set needs", "power_limit_w"),
    ({"command": "overclock", "power_limit_w": 300}, "command", "set, reset"),
    ({"command": "set", "power_limit": 300}, "power_limit", "power_limit_w"),
    ({"command": "reset", "power_limit_w": 300}, "power_limit_w", "reset takes only gpu"),
])
def test_invalid_commands_change_nothing(fake, knob, command, field, listed):
    with pytest.raises(InvalidCommand) as err:
        knob.apply(command)
    assert field in str(err.value) and listed in str(err.value)
    assert err.value.code == "invalid"
    assert set(err.value.options["gpus"]) == {"0", "1"}
    assert fake.changes() == []


def test_an_unsupported_clock_lists_the_supported_ones(fake, knob):
    with pytest.raises(InvalidCommand) as err:
        knob.apply({"command": "set", "gpu": "0", "graphics_clock_mhz": 1500})
    assert "[210, 705, 1095, 1410, 1755, 1980]" in str(err.value)
    assert err.value.options["gpus"]["0"]["graphics_clocks_mhz"] == [210, 705, 1095, 1410, 1755, 1980]
    assert fake.changes() == []


def test_no_permission_is_permission_denied_with_what_to_do(fake, knob):
    fake.fail("nvmlDeviceSetGpuLockedClocks", 0, NVMLError_NoPermission)
    with pytest.raises(PermissionDenied) as err:
        knob.apply({"command": "set", "graphics_clock_mhz": 1410})
    message = str(err.value)
    assert err.value.code == "permission"
    assert "no permission" in message and "GPU 0" in message and "run the shim as root" in message
    assert err.value.rolled_back is False
    assert fake.gpus[1].locked_graphics is None  # GPU 1 was never touched


def test_not_supported_is_unsupported(fake, knob):
    fake.fail("nvmlDeviceSetMemoryLockedClocks", 0, NVMLError_NotSupported)
    with pytest.raises(Unsupported) as err:
        knob.apply({"command": "set", "gpu": "0", "memory_clock_mhz": 1593})
    assert err.value.code == "unsupported"
    assert "memory clocks" in str(err.value)


def test_another_nvml_error_is_a_hardware_error(fake, knob):
    fake.fail("nvmlDeviceSetPowerManagementLimit", 1, NVMLError_Unknown)
    with pytest.raises(HardwareError, match="GPU 1"):
        knob.apply({"command": "set", "gpu": "1", "power_limit_w": 200})


def test_failure_on_the_second_gpu_undoes_the_first(fake, knob):
    fake.fail("nvmlDeviceSetGpuLockedClocks", 1, NVMLError_Unknown)
    with pytest.raises(HardwareError) as err:
        knob.apply({"command": "set", "memory_clock_mhz": 1593, "graphics_clock_mhz": 1410, "power_limit_w": 250})
    assert err.value.rolled_back is True
    gpu0, gpu1 = fake.gpus
    assert (gpu0.locked_memory, gpu0.locked_graphics, gpu0.power_limit_mw) == (None, None, 300_000)
    assert gpu1.locked_memory is None and gpu1.power_limit_mw == 300_000
    assert ("nvmlDeviceSetPowerManagementLimit", 0, 250_000) in fake.changes()  # it was set, then put back
    state = knob.get_state()
    assert state["0"]["locked_graphics_mhz"] is None and state["0"]["locked_memory_mhz"] is None


def test_a_failed_change_puts_back_the_lock_set_before(fake, knob):
    knob.apply({"command": "set", "gpu": "0", "graphics_clock_mhz": 705})
    fake.fail("nvmlDeviceSetPowerManagementLimit", 0, NVMLError_Unknown)
    with pytest.raises(HardwareError) as err:
        knob.apply({"command": "set", "gpu": "0", "graphics_clock_mhz": 1410, "power_limit_w": 200})
    assert err.value.rolled_back is True
    assert fake.gpus[0].locked_graphics == (705, 705)
    assert knob.get_state()["0"]["locked_graphics_mhz"] == [705, 705]


def test_applying_the_same_command_twice_calls_no_setter_the_second_time(fake, knob):
    command = {"command": "set", "memory_clock_mhz": [405, 1593], "graphics_clock_mhz": [705, 1755],
               "power_limit_w": 280}
    first = knob.apply(command)
    assert len(fake.changes()) == 6
    fake.calls.clear()
    assert knob.apply(command) == first
    assert fake.changes() == []


def test_reset_unlocks_and_restores_the_default_power_limit(fake, knob):
    knob.apply({"command": "set", "memory_clock_mhz": 877, "graphics_clock_mhz": 1095, "power_limit_w": 200})
    state = knob.apply({"command": "reset"})
    for gpu in fake.gpus:
        assert (gpu.locked_memory, gpu.locked_graphics, gpu.power_limit_mw) == (None, None, 300_000)
    assert state["1"]["locked_graphics_mhz"] is None and state["1"]["power_limit_w"] == 300.0
    fake.calls.clear()
    knob.apply({"command": "reset"})
    assert fake.changes() == []


def test_reset_on_a_gpu_that_cannot_lock_memory_clocks(fake, knob):
    fake.fail("nvmlDeviceResetMemoryLockedClocks", 0, NVMLError_NotSupported)
    fake.gpus[0].locked_graphics = (1410, 1410)  # locked before the shim started
    knob.apply({"command": "reset", "gpu": "0"})
    assert fake.gpus[0].locked_graphics is None


def test_telemetry(knob):
    metrics = knob.telemetry()
    for gpu in ("gpu0", "gpu1"):
        assert {f"{gpu}_utilization_pct", f"{gpu}_memory_utilization_pct", f"{gpu}_power_w", f"{gpu}_power_limit_w",
                f"{gpu}_graphics_clock_hz", f"{gpu}_sm_clock_hz", f"{gpu}_memory_clock_hz",
                f"{gpu}_temperature_c"} <= set(metrics)
    assert metrics["gpu0_power_w"] == pytest.approx(65.432)
    assert metrics["gpu0_graphics_clock_hz"] == 210e6
    assert metrics["gpu0_memory_clock_hz"] == 405e6
    assert metrics["gpu1_utilization_pct"] == 37.0 and metrics["gpu1_temperature_c"] == 41.0
    assert all(isinstance(v, float) for v in metrics.values())


def test_telemetry_leaves_out_what_a_gpu_cannot_report(fake, knob):
    fake.fail("nvmlDeviceGetTemperature", 1, NVMLError_NotSupported)
    metrics = knob.telemetry()
    assert "gpu1_temperature_c" not in metrics and "gpu0_temperature_c" in metrics


def test_options_shape(knob):
    options = knob.get_options()
    assert sorted(options["commands"]) == ["reset", "set"]
    assert options["gpus"]["0"] == {
        "name": "NVIDIA H100 80GB HBM3", "uuid": "GPU-aaaa",
        "memory_clocks_mhz": [405, 877, 1593],
        "graphics_clocks_mhz": [210, 705, 1095, 1410, 1755, 1980],
        "power_limit_w": {"min": 100.0, "max": 400.0, "default": 300.0},
    }
    assert options["gpus"]["1"]["name"] == "NVIDIA H100 80GB HBM3"  # bytes, as older pynvml returns, decoded


def test_state_shape(knob):
    assert knob.get_state()["0"] == {
        "graphics_clock_mhz": 210, "sm_clock_mhz": 210, "memory_clock_mhz": 405,
        "locked_graphics_mhz": None, "locked_memory_mhz": None,
        "power_limit_w": 300.0, "power_usage_w": 65.432,
        "utilization_gpu_pct": 37, "utilization_memory_pct": 12, "temperature_c": 41,
    }


def test_missing_library_is_unsupported():
    fake = FakeNVML(init_error=NVMLError_LibraryNotFound)
    with pytest.raises(Unsupported, match="NVML is not available: NVML Shared Library Not Found"):
        NVIDIAGPUFrequency(fake)


def test_no_gpu_is_unsupported():
    with pytest.raises(Unsupported, match="sees no GPU"):
        NVIDIAGPUFrequency(FakeNVML(gpus=[]))


def test_missing_pynvml_module_is_unsupported(monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", None)  # makes `import pynvml` raise ImportError
    with pytest.raises(Unsupported, match="nvidia-ml-py"):
        NVIDIAGPUFrequency()


def test_real_pynvml_without_a_gpu_is_unsupported():
    pynvml = pytest.importorskip("pynvml")
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError:
        pass
    else:
        pynvml.nvmlShutdown()
        pytest.skip("this machine has NVML and a GPU: tests/device/nvml_check.py checks the knob there")
    with pytest.raises(Unsupported, match="NVML is not available"):
        NVIDIAGPUFrequency()
