"""The RAPLPowerCap knob on a simulated powercap tree: limits, validation, one transaction per command, reset."""

from __future__ import annotations

from pathlib import Path

import pytest

from mapemesh.node_shim.knobs.base import HardwareError, InvalidCommand, Knob, Sysfs, Unsupported
from mapemesh.node_shim.knobs.rapl import RAPLPowerCap

POWERCAP = "sys/class/powercap"
MAX_ENERGY = "262143328850"


def write_rapl_tree(root: Path, packages: int = 2) -> Path:
    """The powercap layout node-shim/simulate.py writes, with `packages` sockets."""
    powercap = root / POWERCAP
    for p in range(packages):
        files = {
            "name": f"package-{p}", "enabled": "1", "energy_uj": str(123456789 + p), "max_energy_range_uj": MAX_ENERGY,
            "constraint_0_name": "long_term", "constraint_0_power_limit_uw": "65000000",
            "constraint_0_time_window_us": "27983872", "constraint_0_max_power_uw": "95000000",
            "constraint_1_name": "short_term", "constraint_1_power_limit_uw": "95000000",
            "constraint_1_time_window_us": "2440", "constraint_1_max_power_uw": "190000000",
        }
        _write_zone(powercap / f"intel-rapl:{p}", files)
        for sub, (name, max_uw) in enumerate((("core", "95000000"), ("uncore", "30000000"), ("dram", "20000000"))):
            _write_zone(powercap / f"intel-rapl:{p}:{sub}", {
                "name": name, "enabled": "1", "energy_uj": str(1000 * (p + 1) + sub), "max_energy_range_uj": MAX_ENERGY,
                "constraint_0_name": "long_term", "constraint_0_power_limit_uw": "0",
                "constraint_0_time_window_us": "976", "constraint_0_max_power_uw": max_uw,
            })
    return root


def _write_zone(folder: Path, files: dict[str, str]) -> None:
    folder.mkdir(parents=True)
    for name, value in files.items():
        (folder / name).write_text(value + "\n")


def snapshot(root: Path) -> dict[str, str]:
    """Every file under the tree with its value (as sysfs gives it: the trailing newline does not count)."""
    return {str(p.relative_to(root)): p.read_text().strip() for p in sorted(root.rglob("*")) if p.is_file()}


def read(root: Path, zone: str, file: str) -> str:
    return (root / POWERCAP / zone / file).read_text().strip()


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    return write_rapl_tree(tmp_path / "root")


@pytest.fixture
def knob(tree: Path) -> RAPLPowerCap:
    return RAPLPowerCap(Sysfs(tree))


def test_is_a_knob_named_raplpowercap(knob):
    assert isinstance(knob, Knob)
    assert knob.name == "RAPLPowerCap"


def test_package_limit_in_watts_is_written_to_every_package(tree, knob):
    state = knob.apply({"command": "set", "domain": "package", "limit_w": 50})
    for zone, name in (("intel-rapl:0", "package-0"), ("intel-rapl:1", "package-1")):
        assert read(tree, zone, "constraint_0_power_limit_uw") == "50000000"
        assert read(tree, zone, "constraint_1_power_limit_uw") == "95000000"  # short_term untouched
        assert state[name]["constraints"]["long_term"]["power_limit_uw"] == 50_000_000
    assert read(tree, "intel-rapl:0:0", "constraint_0_power_limit_uw") == "0"  # sub-zones untouched


@pytest.mark.parametrize(("form", "value", "expected"), [
    ("limit_uw", 40_000_000, "40000000"),
    ("limit_w", 45.5, "45500000"),
    ("limit", "45.5 W", "45500000"),
    ("limit", "30000 mW", "30000000"),
    ("limit", "30000000uW", "30000000"),
])
def test_limit_forms(tree, knob, form, value, expected):
    knob.apply({"command": "set", "domain": "package", form: value})
    assert read(tree, "intel-rapl:0", "constraint_0_power_limit_uw") == expected
    assert read(tree, "intel-rapl:1", "constraint_0_power_limit_uw") == expected


def test_short_term_constraint(tree, knob):
    knob.apply({"command": "set", "domain": "package-1", "constraint": "short_term", "limit_w": 120})
    assert read(tree, "intel-rapl:1", "constraint_1_power_limit_uw") == "120000000"
    assert read(tree, "intel-rapl:0", "constraint_1_power_limit_uw") == "95000000"


def test_core_alias_sets_the_core_of_every_package(tree, knob):
    state = knob.apply({"command": "set", "domain": "core", "limit_w": 20})
    assert read(tree, "intel-rapl:0:0", "constraint_0_power_limit_uw") == "20000000"
    assert read(tree, "intel-rapl:1:0", "constraint_0_power_limit_uw") == "20000000"
    assert read(tree, "intel-rapl:0", "constraint_0_power_limit_uw") == "65000000"
    assert state["package-1/core"]["constraints"]["long_term"]["power_limit_uw"] == 20_000_000


def test_one_dram_zone_by_name(tree, knob):
    knob.apply({"command": "set", "domain": "package-0/dram", "limit_w": 15})
    assert read(tree, "intel-rapl:0:2", "constraint_0_power_limit_uw") == "15000000"
    assert read(tree, "intel-rapl:1:2", "constraint_0_power_limit_uw") == "0"


def test_time_window_alone(tree, knob):
    knob.apply({"command": "set", "domain": "package", "constraint": "short_term", "time_window_us": 5000})
    assert read(tree, "intel-rapl:0", "constraint_1_time_window_us") == "5000"
    assert read(tree, "intel-rapl:1", "constraint_1_time_window_us") == "5000"
    assert read(tree, "intel-rapl:0", "constraint_1_power_limit_uw") == "95000000"


def test_limit_with_time_window_and_disable(tree, knob):
    state = knob.apply({"command": "set", "domain": "package-0", "limit_w": 60, "time_window_us": 1_000_000,
                        "enabled": False})
    assert read(tree, "intel-rapl:0", "constraint_0_power_limit_uw") == "60000000"
    assert read(tree, "intel-rapl:0", "constraint_0_time_window_us") == "1000000"
    assert read(tree, "intel-rapl:0", "enabled") == "0"
    assert state["package-0"]["enabled"] is False and state["package-1"]["enabled"] is True


def test_limit_above_the_maximum_is_refused_and_nothing_is_written(tree, knob):
    before = snapshot(tree)
    with pytest.raises(InvalidCommand) as err:
        knob.apply({"command": "set", "domain": "package", "limit_w": 100})
    assert "limit_w" in str(err.value) and "95000000" in str(err.value)
    assert err.value.code == "invalid"
    assert set(err.value.options["domains"]) >= {"package-0", "package-1", "package-0/core", "package-1/dram"}
    assert snapshot(tree) == before


def test_sub_zone_maximum_applies_to_the_alias(tree, knob):
    before = snapshot(tree)
    with pytest.raises(InvalidCommand, match="uncore"):
        knob.apply({"command": "set", "domain": "uncore", "limit_w": 31})
    assert snapshot(tree) == before


@pytest.mark.parametrize(("command", "field"), [
    ({"command": "set", "domain": "gpu", "limit_w": 50}, "domain"),
    ({"command": "set", "domain": "package", "constraint": "peak_power", "limit_w": 50}, "constraint"),
    ({"command": "set", "domain": "core", "constraint": "short_term", "limit_w": 10}, "constraint"),
    ({"command": "set", "domain": "package", "limit_w": 50, "watts": 50}, "watts"),
    ({"command": "boost", "domain": "package"}, "command"),
    ({"domain": "package", "limit_w": 50}, "command"),
    ({"command": "set", "limit_w": 50}, "domain"),
    ({"command": "set", "domain": "package"}, "limit"),
    ({"command": "set", "domain": "package", "limit_w": 50, "limit_uw": 50_000_000}, "limit"),
    ({"command": "set", "domain": "package", "limit_w": 0}, "limit_w"),
    ({"command": "set", "domain": "package", "limit_uw": -5}, "limit_uw"),
    ({"command": "set", "domain": "package", "limit_uw": 5.5}, "limit_uw"),
    ({"command": "set", "domain": "package", "limit_w": True}, "limit_w"),
    ({"command": "set", "domain": "package", "limit": "50 kW"}, "limit"),
    ({"command": "set", "domain": "package", "time_window_us": 0}, "time_window_us"),
    ({"command": "set", "domain": "package", "enabled": "yes"}, "enabled"),
    ({"command": "reset", "limit_w": 50}, "limit_w"),
])
def test_invalid_commands_name_the_field_and_write_nothing(tree, knob, command, field):
    before = snapshot(tree)
    with pytest.raises(InvalidCommand) as err:
        knob.apply(command)
    assert field in str(err.value)
    assert "domains" in err.value.options
    assert snapshot(tree) == before


def test_a_command_that_is_not_an_object_is_invalid(knob):
    with pytest.raises(InvalidCommand, match="JSON object"):
        knob.apply(["set"])  # type: ignore[arg-type]


def test_failure_on_the_second_package_rolls_back_the_first(tree, knob):
    blocked = tree / POWERCAP / "intel-rapl:1" / "constraint_0_power_limit_uw"
    blocked.unlink()
    blocked.mkdir()  # reading or writing it now fails with IsADirectoryError
    with pytest.raises(HardwareError) as err:
        knob.apply({"command": "set", "domain": "package", "limit_w": 50})
    assert err.value.rolled_back is True
    assert err.value.code == "hardware"
    assert read(tree, "intel-rapl:0", "constraint_0_power_limit_uw") == "65000000"


def test_applying_the_same_command_twice_writes_nothing_the_second_time(tree, knob, monkeypatch):
    command = {"command": "set", "domain": "package", "limit_w": 50, "time_window_us": 1_000_000}
    first = knob.apply(command)
    writes: list[str] = []
    real_write = Sysfs.write

    def counting_write(self, relative, value):
        writes.append(relative)
        real_write(self, relative, value)

    monkeypatch.setattr(Sysfs, "write", counting_write)
    second = knob.apply(command)
    assert writes == []
    assert second == first
    knob.apply({"command": "set", "domain": "package", "limit_w": 55})
    assert len(writes) == 2  # one limit per package; the time windows already hold the target


def test_reset_restores_what_the_driver_found(tree):
    before = snapshot(tree)
    knob = RAPLPowerCap(Sysfs(tree))
    knob.apply({"command": "set", "domain": "package", "limit_w": 50, "time_window_us": 1_000_000})
    knob.apply({"command": "set", "domain": "package", "constraint": "short_term", "limit_w": 150})
    knob.apply({"command": "set", "domain": "dram", "limit_w": 10, "enabled": False})
    assert snapshot(tree) != before
    state = knob.apply({"command": "reset"})
    assert snapshot(tree) == before
    assert state["package-0"]["constraints"]["long_term"] == {"power_limit_uw": 65_000_000, "time_window_us": 27983872}


def test_reset_of_one_domain_leaves_the_others(tree, knob):
    knob.apply({"command": "set", "domain": "package", "limit_w": 50})
    knob.apply({"command": "reset", "domain": "package-1"})
    assert read(tree, "intel-rapl:1", "constraint_0_power_limit_uw") == "65000000"
    assert read(tree, "intel-rapl:0", "constraint_0_power_limit_uw") == "50000000"


def test_energy_per_zone(tree, knob):
    energy = knob.energy()
    assert energy["package-0"] == 123456789
    assert energy["package-1"] == 123456790
    assert energy["package-1/dram"] == 2002
    (tree / POWERCAP / "intel-rapl:0" / "energy_uj").write_text("123999999\n")
    assert knob.energy()["package-0"] == 123999999


def test_an_unreadable_energy_counter_is_left_out(tree, knob):
    counter = tree / POWERCAP / "intel-rapl:1" / "energy_uj"
    counter.unlink()
    counter.mkdir()  # stands in for the root-only energy_uj of Linux >= 5.10
    assert "package-1" not in knob.energy()
    assert knob.energy()["package-0"] == 123456789
    assert knob.get_state()["package-1"]["energy_uj"] is None


def test_options_shape(tree, knob):
    options = knob.get_options()
    assert sorted(options["commands"]) == ["reset", "set"]
    assert list(options["domains"]) == ["package-0", "package-0/core", "package-0/uncore", "package-0/dram",
                                        "package-1", "package-1/core", "package-1/uncore", "package-1/dram"]
    assert options["domains"]["package-0"] == {
        "path": str(tree / POWERCAP / "intel-rapl:0"),
        "max_energy_range_uj": int(MAX_ENERGY),
        "constraints": {"long_term": {"max_power_uw": 95_000_000}, "short_term": {"max_power_uw": 190_000_000}},
    }
    assert options["domains"]["package-1/uncore"]["constraints"] == {"long_term": {"max_power_uw": 30_000_000}}
    assert options["aliases"]["package"] == ["package-0", "package-1"]
    assert options["aliases"]["dram"] == ["package-0/dram", "package-1/dram"]


def test_state_shape(knob):
    state = knob.get_state()
    assert state["package-0"] == {
        "enabled": True, "energy_uj": 123456789,
        "constraints": {"long_term": {"power_limit_uw": 65_000_000, "time_window_us": 27983872},
                        "short_term": {"power_limit_uw": 95_000_000, "time_window_us": 2440}},
    }
    assert state["package-0/core"]["constraints"] == {"long_term": {"power_limit_uw": 0, "time_window_us": 976}}


def test_zone_without_a_maximum_takes_any_positive_limit(tmp_path):
    root = write_rapl_tree(tmp_path / "root", packages=1)
    (root / POWERCAP / "intel-rapl:0:0" / "constraint_0_max_power_uw").unlink()
    knob = RAPLPowerCap(Sysfs(root))
    assert knob.get_options()["domains"]["package-0/core"]["constraints"]["long_term"]["max_power_uw"] is None
    knob.apply({"command": "set", "domain": "core", "limit_w": 500})
    assert read(root, "intel-rapl:0:0", "constraint_0_power_limit_uw") == "500000000"


def test_single_package_and_other_powercap_entries(tmp_path):
    root = write_rapl_tree(tmp_path / "root", packages=1)
    (root / POWERCAP / "intel-rapl").mkdir()  # the control type folder
    _write_zone(root / POWERCAP / "intel-rapl-mmio:0", {"name": "package-0", "enabled": "1"})
    knob = RAPLPowerCap(Sysfs(root))
    assert list(knob.get_options()["domains"]) == ["package-0", "package-0/core", "package-0/uncore",
                                                   "package-0/dram"]
    knob.apply({"command": "set", "domain": "package", "limit_w": 40})
    assert read(root, "intel-rapl:0", "constraint_0_power_limit_uw") == "40000000"
    assert read(root, "intel-rapl-mmio:0", "enabled") == "1"


def test_no_rapl_is_unsupported(tmp_path):
    with pytest.raises(Unsupported, match="no RAPL zones"):
        RAPLPowerCap(Sysfs(tmp_path))
