"""The simulated sysfs trees that knob drivers are developed and tested against."""

from __future__ import annotations

from pathlib import Path

import pytest

from mapemesh.node_shim import simulate

CPU = "sys/devices/system/cpu"


def read(root: Path, relative: str) -> str:
    return (root / relative).read_text().strip()


@pytest.mark.parametrize("profile", simulate.PROFILES)
def test_every_cpu_has_the_cpufreq_files(tmp_path: Path, profile: str) -> None:
    root = simulate.create(tmp_path / "sim", profile, cpus=3)

    assert read(root, f"{CPU}/online") == "0-2"
    assert not (root / CPU / "cpu3").exists()
    for cpu in range(3):
        folder = f"{CPU}/cpu{cpu}/cpufreq"
        governors = read(root, f"{folder}/scaling_available_governors").split()
        assert read(root, f"{folder}/scaling_governor") in governors
        low, high = int(read(root, f"{folder}/cpuinfo_min_freq")), int(read(root, f"{folder}/cpuinfo_max_freq"))
        assert int(read(root, f"{folder}/scaling_min_freq")) == low
        assert int(read(root, f"{folder}/scaling_max_freq")) == high
        assert low <= int(read(root, f"{folder}/scaling_cur_freq")) <= high
        assert read(root, f"{folder}/scaling_setspeed") == "<unsupported>"
        available = root / folder / "scaling_available_frequencies"
        if profile == "intel_pstate":
            assert not available.exists()
        else:
            khz = [int(v) for v in available.read_text().split()]
            assert khz == sorted(khz, reverse=True)
            assert (khz[-1], khz[0]) == (low, high)
    assert simulate.profile_of(root) == profile


def test_intel_pstate_profile(tmp_path: Path) -> None:
    root = simulate.create(tmp_path, "intel_pstate")

    folder = f"{CPU}/cpu3/cpufreq"
    assert read(root, f"{folder}/scaling_driver") == "intel_pstate"
    assert read(root, f"{folder}/scaling_available_governors") == "performance powersave"
    assert read(root, f"{folder}/scaling_governor") == "powersave"
    assert (read(root, f"{folder}/cpuinfo_min_freq"), read(root, f"{folder}/cpuinfo_max_freq")) == ("800000", "4200000")
    pstate = {f.name: f.read_text().strip() for f in (root / CPU / "intel_pstate").iterdir()}
    assert pstate == {"status": "active", "min_perf_pct": "19", "max_perf_pct": "100", "no_turbo": "0",
                      "num_pstates": "35", "turbo_pct": "33"}
    assert read(root, f"{CPU}/online") == "0-3"


@pytest.mark.parametrize(("profile", "driver", "available"), [
    ("acpi-cpufreq", "acpi-cpufreq", "3400000 3000000 2600000 2200000 1800000 1400000 1000000"),
    ("arm", "cpufreq-dt", "2400000 1800000 1500000 1200000 1000000 600000"),
])
def test_discrete_profiles(tmp_path: Path, profile: str, driver: str, available: str) -> None:
    root = simulate.create(tmp_path, profile)

    folder = f"{CPU}/cpu0/cpufreq"
    assert read(root, f"{folder}/scaling_driver") == driver
    assert read(root, f"{folder}/scaling_available_frequencies") == available
    assert read(root, f"{folder}/scaling_governor") == "schedutil"
    assert "userspace" in read(root, f"{folder}/scaling_available_governors").split()
    assert not (root / CPU / "intel_pstate").exists()


@pytest.mark.parametrize("profile", ["intel_pstate", "acpi-cpufreq"])
def test_rapl_zones(tmp_path: Path, profile: str) -> None:
    root = simulate.create(tmp_path, profile)

    package = root / "sys/class/powercap/intel-rapl:0"
    assert read(package, "name") == "package-0"
    assert read(package, "constraint_0_name") == "long_term"
    assert read(package, "constraint_0_power_limit_uw") == "65000000"
    assert read(package, "constraint_1_name") == "short_term"
    assert read(package, "constraint_1_max_power_uw") == "190000000"
    zones = {z: root / f"sys/class/powercap/intel-rapl:0:{i}" for i, z in enumerate(["core", "uncore", "dram"])}
    for name, zone in zones.items():
        assert read(zone, "name") == name
        assert read(zone, "enabled") == "1"
        assert int(read(zone, "energy_uj")) >= 0
        assert read(zone, "constraint_0_time_window_us") == "976"
    assert read(zones["uncore"], "constraint_0_max_power_uw") == "30000000"


def test_arm_has_no_rapl(tmp_path: Path) -> None:
    root = simulate.create(tmp_path, "arm")
    assert not (root / "sys/class/powercap").exists()


def test_refuses_a_folder_it_did_not_create(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("keep me")

    with pytest.raises(ValueError, match="not empty"):
        simulate.create(tmp_path, "arm")
    assert (tmp_path / "notes.txt").read_text() == "keep me"
    assert not (tmp_path / "sys").exists()
    assert simulate.profile_of(tmp_path) is None


def test_recreates_its_own_tree(tmp_path: Path) -> None:
    simulate.create(tmp_path, "intel_pstate", cpus=8)
    (tmp_path / CPU / "cpu0/cpufreq/scaling_governor").write_text("performance\n")

    simulate.create(tmp_path, "arm", cpus=2)

    assert simulate.profile_of(tmp_path) == "arm"
    assert read(tmp_path, f"{CPU}/cpu0/cpufreq/scaling_governor") == "schedutil"
    assert not (tmp_path / CPU / "intel_pstate").exists()
    assert not (tmp_path / CPU / "cpu2").exists()
    assert not (tmp_path / "sys/class/powercap").exists()


def test_unknown_profile_lists_the_profiles(tmp_path: Path) -> None:
    with pytest.raises(ValueError) as caught:
        simulate.create(tmp_path, "amd-pstate")
    for profile in simulate.PROFILES:
        assert profile in str(caught.value)
    assert not any(tmp_path.iterdir())
