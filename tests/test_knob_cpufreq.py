"""The CPUFrequency knob against simulated intel_pstate, acpi-cpufreq and ARM (cpufreq-dt) sysfs trees."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from mapemesh.node_shim import simulate
from mapemesh.node_shim.knobs.base import HardwareError, InvalidCommand, Knob, Sysfs, Unsupported
from mapemesh.node_shim.knobs.cpufreq import CPUFrequency

CPU = "sys/devices/system/cpu"
PSTATE = f"{CPU}/intel_pstate"
GHZ = 1_000_000_000
# cpuinfo_min_freq and cpuinfo_max_freq of each profile, in kHz
RANGE = {"intel_pstate": (800_000, 4_200_000), "acpi-cpufreq": (1_000_000, 3_400_000), "arm": (600_000, 2_400_000)}
INITIAL_GOVERNOR = {"intel_pstate": "powersave", "acpi-cpufreq": "schedutil", "arm": "schedutil"}
_PAIRS = {"scaling_min_freq": ("scaling_max_freq", 1), "scaling_max_freq": ("scaling_min_freq", -1),
          "min_perf_pct": ("max_perf_pct", 1), "max_perf_pct": ("min_perf_pct", -1)}


class KernelLikeSysfs(Sysfs):
    """Refuses, as older kernels do with EINVAL, a write that would leave a minimum above its maximum."""

    def write(self, relative: str, value: str | int) -> None:
        path = self.path(relative)
        if path.name in _PAIRS:
            other, sign = _PAIRS[path.name]
            if sign * (int(value) - int(path.with_name(other).read_text())) > 0:
                raise HardwareError(f"writing {value!r} to {path}: Invalid argument")
        super().write(relative, value)


def cpufreq(cpu: int, name: str) -> str:
    return f"{CPU}/cpu{cpu}/cpufreq/{name}"


def read(root: Path, relative: str) -> str:
    return (root / relative).read_text().strip()


def frozen(root: Path) -> dict[str, str]:
    """Every file's content, after setting every mtime to 0 so that any later write shows."""
    files = {}
    for path in sorted(root.rglob("*")):
        if path.is_file():
            os.utime(path, ns=(0, 0))
            files[str(path.relative_to(root))] = path.read_text()
    return files


def changed(root: Path, before: dict[str, str]) -> set[str]:
    """The files written (or whose content differs) since `frozen`."""
    now = {str(p.relative_to(root)): p for p in root.rglob("*") if p.is_file()}
    assert set(now) == set(before), "files appeared or disappeared"
    return {name for name, path in now.items() if path.stat().st_mtime_ns != 0 or path.read_text() != before[name]}


@pytest.fixture(params=simulate.CPUFREQ_PROFILES)
def profile(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def root(tmp_path: Path, profile: str) -> Path:
    return simulate.create(tmp_path / "sys-root", profile)


@pytest.fixture
def knob(root: Path) -> CPUFrequency:
    return CPUFrequency(KernelLikeSysfs(root))


def test_is_a_knob(knob: CPUFrequency) -> None:
    assert isinstance(knob, Knob)
    assert knob.name == "CPUFrequency"


def test_min_then_max_on_all_cpus(root: Path, knob: CPUFrequency, profile: str) -> None:
    """Lowering then raising every cpu; the kernel-like tree refuses any write order that breaks min <= max."""
    low, high = RANGE[profile]

    state = knob.apply({"command": "set", "cpu": "all", "frequency": "min"})
    if profile == "intel_pstate":
        assert (read(root, f"{PSTATE}/min_perf_pct"), read(root, f"{PSTATE}/max_perf_pct")) == ("19", "19")
        assert state["intel_pstate"] == {"min_perf_pct": 19, "max_perf_pct": 19, "no_turbo": False}
    else:
        for cpu in range(4):
            assert int(read(root, cpufreq(cpu, "scaling_min_freq"))) == low
            assert int(read(root, cpufreq(cpu, "scaling_max_freq"))) == low
            assert state["cpus"][str(cpu)]["max_hz"] == low * 1000

    state = knob.apply({"command": "set", "frequency": "max"})  # cpu defaults to all
    if profile == "intel_pstate":
        assert (read(root, f"{PSTATE}/min_perf_pct"), read(root, f"{PSTATE}/max_perf_pct")) == ("100", "100")
        for cpu in range(4):  # the global percentages do the work; per-cpu limits stay at the full range
            assert int(read(root, cpufreq(cpu, "scaling_min_freq"))) == low
            assert int(read(root, cpufreq(cpu, "scaling_max_freq"))) == high
    else:
        for cpu in range(4):
            assert int(read(root, cpufreq(cpu, "scaling_min_freq"))) == high
            assert int(read(root, cpufreq(cpu, "scaling_max_freq"))) == high
    assert state == knob.get_state()


@pytest.mark.parametrize("spelling", ["1.8 GHz", "1800 MHz", "1800000 kHz", "1800000000 Hz", "1800000000",
                                      1_800_000_000, " 1.8ghz "])
def test_frequency_units(root: Path, knob: CPUFrequency, spelling: str | int) -> None:
    state = knob.apply({"command": "set", "cpu": "1", "frequency": spelling})

    assert read(root, cpufreq(1, "scaling_min_freq")) == "1800000"
    assert read(root, cpufreq(1, "scaling_max_freq")) == "1800000"
    assert state["cpus"]["1"]["min_hz"] == state["cpus"]["1"]["max_hz"] == 1_800_000_000


def test_subset_touches_only_those_cpus(root: Path, knob: CPUFrequency) -> None:
    before = frozen(root)

    knob.apply({"command": "set", "cpu": "0,2", "frequency": "min"})

    assert changed(root, before) == {cpufreq(0, "scaling_max_freq"), cpufreq(2, "scaling_max_freq")}
    assert read(root, cpufreq(0, "scaling_max_freq")) == read(root, cpufreq(0, "cpuinfo_min_freq"))


def test_cpu_range_and_governor(root: Path, knob: CPUFrequency) -> None:
    knob.apply({"command": "set", "cpu": "1-2", "governor": "performance"})

    assert [read(root, cpufreq(cpu, "scaling_governor")) == "performance" for cpu in range(4)] == \
        [False, True, True, False]


@pytest.mark.parametrize("profile", ["acpi-cpufreq", "arm"])
def test_userspace_governor_sets_the_speed(root: Path, knob: CPUFrequency, profile: str) -> None:
    low, high = RANGE[profile]

    state = knob.apply({"command": "set", "cpu": "all", "governor": "userspace", "frequency": "1.8 GHz"})

    for cpu in range(4):
        assert read(root, cpufreq(cpu, "scaling_governor")) == "userspace"
        assert read(root, cpufreq(cpu, "scaling_setspeed")) == "1800000"
        assert (int(read(root, cpufreq(cpu, "scaling_min_freq"))), int(read(root, cpufreq(cpu, "scaling_max_freq")))) \
            == (low, high)
        assert state["cpus"][str(cpu)]["setspeed_hz"] == 1_800_000_000

    # userspace is now in effect, so a frequency alone moves the speed, not the limits
    state = knob.apply({"command": "set", "cpu": "3", "frequency": "1 GHz"})
    assert read(root, cpufreq(3, "scaling_setspeed")) == "1000000"
    assert read(root, cpufreq(2, "scaling_setspeed")) == "1800000"
    assert int(read(root, cpufreq(3, "scaling_max_freq"))) == high


@pytest.mark.parametrize("profile", ["acpi-cpufreq", "arm"])
def test_userspace_widens_limits_that_would_clamp_the_speed(root: Path, knob: CPUFrequency, profile: str) -> None:
    low, high = RANGE[profile]
    knob.apply({"command": "set", "cpu": "0", "frequency": "min"})  # limits pinned at the bottom

    knob.apply({"command": "set", "cpu": "0", "governor": "userspace", "frequency": "max"})

    assert read(root, cpufreq(0, "scaling_setspeed")) == str(high)
    assert int(read(root, cpufreq(0, "scaling_max_freq"))) == high
    assert int(read(root, cpufreq(0, "scaling_min_freq"))) == low


@pytest.mark.parametrize("profile", ["intel_pstate"])
def test_intel_pstate_uses_perf_pct_for_all_cpus(root: Path, knob: CPUFrequency) -> None:
    before = frozen(root)

    state = knob.apply({"command": "set", "cpu": "all", "frequency": "2.2 GHz"})

    assert changed(root, before) == {f"{PSTATE}/min_perf_pct", f"{PSTATE}/max_perf_pct"}
    assert state["intel_pstate"] == {"min_perf_pct": 52, "max_perf_pct": 52, "no_turbo": False}  # 2.2 / 4.2

    knob.apply({"command": "set", "cpu": "0,1,2,3", "frequency": "1 GHz"})  # every cpu listed counts as all
    assert (read(root, f"{PSTATE}/min_perf_pct"), read(root, f"{PSTATE}/max_perf_pct")) == ("24", "24")


@pytest.mark.parametrize("profile", ["intel_pstate"])
def test_intel_pstate_all_widens_per_cpu_limits(root: Path, knob: CPUFrequency) -> None:
    knob.apply({"command": "set", "cpu": "2", "frequency": "min"})
    assert read(root, cpufreq(2, "scaling_max_freq")) == "800000"
    assert read(root, f"{PSTATE}/max_perf_pct") == "100"  # a subset does not touch the global limits

    knob.apply({"command": "set", "frequency": "max"})

    assert read(root, cpufreq(2, "scaling_max_freq")) == "4200000"  # else cpu2 would stay capped at 0.8 GHz
    assert read(root, f"{PSTATE}/min_perf_pct") == "100"


BAD_FREQUENCY = {"intel_pstate": ["5 GHz", "100 MHz"], "acpi-cpufreq": ["2.3 GHz", "5 GHz"], "arm": ["2 GHz", "1 kHz"]}


@pytest.mark.parametrize("which", [0, 1])
def test_frequency_it_cannot_run_at(root: Path, knob: CPUFrequency, profile: str, which: int) -> None:
    value = BAD_FREQUENCY[profile][which]
    before = frozen(root)

    with pytest.raises(InvalidCommand) as caught:
        knob.apply({"command": "set", "governor": "performance", "frequency": value})

    assert "frequency" in str(caught.value)
    assert caught.value.options == knob.get_options()
    assert not caught.value.rolled_back
    if profile == "acpi-cpufreq":
        assert caught.value.options["frequencies_hz"] == [1_000_000_000, 1_400_000_000, 1_800_000_000,
                                                          2_200_000_000, 2_600_000_000, 3_000_000_000, 3_400_000_000]
        if which == 0:
            assert "2.6 GHz" in str(caught.value)  # the message lists what is available
    assert changed(root, before) == set()


@pytest.mark.parametrize(("command", "field"), [
    ({"command": "set", "governor": "turbo"}, "governor"),
    ({"command": "set", "cpu": "7", "frequency": "max"}, "cpu"),
    ({"command": "set", "cpu": "0,x", "frequency": "max"}, "cpu"),
    ({"command": "set", "cpu": "3-1", "frequency": "max"}, "cpu"),
    ({"command": "set", "cpu": ["0"], "frequency": "max"}, "cpu"),
    ({"command": "set", "frequency": "max", "voltage": "1.1 V"}, "voltage"),
    ({"command": "set", "frequency": "fast"}, "frequency"),
    ({"command": "set", "frequency": -1}, "frequency"),
    ({"command": "set", "frequency": True}, "frequency"),
    ({"command": "set", "frequency": "0 Hz"}, "frequency"),
    ({"command": "set"}, "frequency"),
    ({"command": "reset", "frequency": "max"}, "reset"),
    ({"command": "boost"}, "command"),
    ({"frequency": "max"}, "command"),
    ("set max", "object"),
    (["set"], "object"),
])
def test_invalid_commands_write_nothing(root: Path, knob: CPUFrequency, command: Any, field: str) -> None:
    before = frozen(root)

    with pytest.raises(InvalidCommand) as caught:
        knob.apply(command)

    assert field in str(caught.value)
    assert caught.value.code == "invalid"
    assert caught.value.options == knob.get_options()
    assert changed(root, before) == set()


def test_unknown_governor_names_the_valid_ones(knob: CPUFrequency, profile: str) -> None:
    with pytest.raises(InvalidCommand) as caught:
        knob.apply({"command": "set", "governor": "userspace" if profile == "intel_pstate" else "turbo"})
    assert "performance" in str(caught.value)
    assert "powersave" in str(caught.value)


def test_failure_half_way_rolls_back_everything(root: Path, knob: CPUFrequency, profile: str) -> None:
    broken = root / cpufreq(2, "scaling_max_freq")
    broken.unlink()
    broken.mkdir()  # opening it fails as a sysfs write the kernel refuses would
    before = frozen(root)

    with pytest.raises(HardwareError) as caught:
        knob.apply({"command": "set", "cpu": "all", "governor": "performance", "frequency": "min"})

    assert caught.value.rolled_back
    assert str(broken) in str(caught.value)
    now = {str(p.relative_to(root)): p.read_text().strip() for p in root.rglob("*") if p.is_file()}
    assert now == {name: text.strip() for name, text in before.items()}  # the values, as sysfs reads them
    assert read(root, cpufreq(0, "scaling_governor")) == INITIAL_GOVERNOR[profile]


@pytest.mark.parametrize("command", [
    {"command": "set", "frequency": "max"},
    {"command": "set", "frequency": "min", "governor": "performance"},
    {"command": "set", "cpu": "0,2", "frequency": "1.8 GHz"},
    {"command": "set", "cpu": "1", "governor": "powersave"},
    {"command": "reset"},
])
def test_applying_what_is_in_effect_writes_nothing(root: Path, knob: CPUFrequency, command: dict[str, Any]) -> None:
    first = knob.apply(command)
    before = frozen(root)

    second = knob.apply(dict(command))

    assert changed(root, before) == set()
    assert second == first


@pytest.mark.parametrize("profile", ["acpi-cpufreq", "arm"])
def test_userspace_twice_writes_nothing(root: Path, knob: CPUFrequency) -> None:
    command = {"command": "set", "governor": "userspace", "frequency": "1.8 GHz"}
    knob.apply(command)
    before = frozen(root)

    knob.apply(command)

    assert changed(root, before) == set()


def test_reset_restores_initial_governor_and_full_range(root: Path, profile: str) -> None:
    (root / cpufreq(1, "scaling_governor")).write_text("performance\n")  # what the machine ran before the shim
    knob = CPUFrequency(KernelLikeSysfs(root))
    low, high = RANGE[profile]
    knob.apply({"command": "set", "governor": "performance", "frequency": "min"})
    knob.apply({"command": "set", "cpu": "3", "frequency": "max"})
    if profile == "intel_pstate":
        (root / f"{PSTATE}/no_turbo").write_text("1\n")
    else:
        knob.apply({"command": "set", "cpu": "2", "governor": "userspace", "frequency": "max"})

    state = knob.apply({"command": "reset"})

    governors = [read(root, cpufreq(cpu, "scaling_governor")) for cpu in range(4)]
    initial = INITIAL_GOVERNOR[profile]
    assert governors == [initial, "performance", initial, initial]
    for cpu in range(4):
        assert (int(read(root, cpufreq(cpu, "scaling_min_freq"))), int(read(root, cpufreq(cpu, "scaling_max_freq")))) \
            == (low, high)
        assert state["cpus"][str(cpu)]["setspeed_hz"] is None
    if profile == "intel_pstate":
        assert state["intel_pstate"] == {"min_perf_pct": 19, "max_perf_pct": 100, "no_turbo": False}
        assert read(root, f"{PSTATE}/no_turbo") == "0"


def test_reset_of_a_subset(root: Path, knob: CPUFrequency, profile: str) -> None:
    knob.apply({"command": "set", "governor": "performance", "frequency": "min"})

    knob.apply({"command": "reset", "cpu": "2"})

    assert read(root, cpufreq(2, "scaling_governor")) == INITIAL_GOVERNOR[profile]
    assert read(root, cpufreq(0, "scaling_governor")) == "performance"
    assert int(read(root, cpufreq(2, "scaling_max_freq"))) == RANGE[profile][1]
    if profile == "intel_pstate":  # the global percentages belong to every cpu, so a subset leaves them
        assert read(root, f"{PSTATE}/max_perf_pct") == "19"
    else:
        assert int(read(root, cpufreq(0, "scaling_max_freq"))) == RANGE[profile][0]


def test_options(knob: CPUFrequency, profile: str) -> None:
    options = knob.get_options()
    low, high = RANGE[profile]

    assert options["cpus"] == [0, 1, 2, 3]
    assert options["commands"] == ["set", "reset"]
    assert (options["min_hz"], options["max_hz"]) == (low * 1000, high * 1000)
    if profile == "intel_pstate":
        assert options["driver"] == "intel_pstate"
        assert options["governors"] == ["performance", "powersave"]
        assert options["frequencies_hz"] is None
        assert options["intel_pstate"] == {"min_perf_pct_floor": 19, "no_turbo": False}
    else:
        assert options["driver"] == ("acpi-cpufreq" if profile == "acpi-cpufreq" else "cpufreq-dt")
        assert "userspace" in options["governors"]
        assert options["frequencies_hz"] == sorted(options["frequencies_hz"])
        assert options["frequencies_hz"][0] == low * 1000
        assert options["frequencies_hz"][-1] == high * 1000
        assert options["intel_pstate"] is None


def test_state(knob: CPUFrequency, profile: str) -> None:
    state = knob.get_state()
    low, high = RANGE[profile]

    assert state["driver"] == knob.get_options()["driver"]
    assert sorted(state["cpus"]) == ["0", "1", "2", "3"]
    cpu0 = state["cpus"]["0"]
    assert cpu0["governor"] == INITIAL_GOVERNOR[profile]
    assert (cpu0["min_hz"], cpu0["max_hz"]) == (low * 1000, high * 1000)
    assert low * 1000 <= cpu0["cur_hz"] <= high * 1000
    assert cpu0["setspeed_hz"] is None
    if profile == "intel_pstate":
        assert state["intel_pstate"] == {"min_perf_pct": 19, "max_perf_pct": 100, "no_turbo": False}
    else:
        assert state["intel_pstate"] is None


def test_machine_without_cpufreq(tmp_path: Path) -> None:
    with pytest.raises(Unsupported):
        CPUFrequency(Sysfs(tmp_path))
