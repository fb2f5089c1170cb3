"""The RadioConfig knob on the simulated `wireless` tree (seed 5.3): channel and modulation per interface, checked
against the radio's own; the GPS position in the node's description; the knob in the node shim."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from mapemesh.descriptions import load
from mapemesh.node_shim import simulate
from mapemesh.node_shim.daemon import build_knobs
from mapemesh.node_shim.knobs.base import HardwareError, InvalidCommand, Knob, Sysfs, Unsupported
from mapemesh.node_shim.knobs.interval import TelemetryInterval
from mapemesh.node_shim.knobs.radio import RADIO_FILE, FileRadio, RadioConfig, position
from mapemesh.node_shim.telemetry import node_description


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    return simulate.create(tmp_path / "sim", "wireless")


def radio_file(tree: Path) -> dict:
    return json.loads((tree / RADIO_FILE).read_text())["interfaces"]


def test_options_and_state_come_from_the_radio(tree: Path) -> None:
    knob = RadioConfig(FileRadio(Sysfs(tree)))
    assert isinstance(knob, Knob)
    options = knob.get_options()["interfaces"]
    assert options["wlan0"]["technology"] == "wifi" and 36 in options["wlan0"]["channels"]
    assert options["wwan0"]["modulations"] == ["qpsk", "16qam", "64qam", "256qam"]
    assert knob.get_state()["interfaces"]["wlan0"] == {"channel": 6, "modulation": "64qam"}


def test_set_channel_and_modulation_then_reset(tree: Path) -> None:
    knob = RadioConfig(FileRadio(Sysfs(tree)))
    after = knob.apply({"command": "set", "interface": "wlan0", "channel": 36, "modulation": "16qam"})
    assert after["interfaces"]["wlan0"] == {"channel": 36, "modulation": "16qam"} and knob.changed
    assert radio_file(tree)["wlan0"]["channel"] == 36 and radio_file(tree)["wwan0"]["channel"] == 630000
    knob.apply({"command": "set", "interface": "wlan0", "channel": 36})
    assert not knob.changed  # in effect already: nothing written
    knob.apply({"command": "set", "interface": "wwan0", "modulation": "qpsk"})
    assert radio_file(tree)["wwan0"]["modulation"] == "qpsk"
    knob.apply({"command": "reset"})
    assert knob.get_state()["interfaces"] == {"wlan0": {"channel": 6, "modulation": "64qam"},
                                              "wwan0": {"channel": 630000, "modulation": "256qam"}}


@pytest.mark.parametrize("command", [
    {"command": "set", "interface": "wlan0", "channel": 14},  # not a channel this radio has
    {"command": "set", "interface": "wlan0", "modulation": "1024qam"},
    {"command": "set", "interface": "wlan0", "channel": "36"},
    {"command": "set", "interface": "wlan0", "channel": True},
    {"command": "set", "interface": "eth0", "channel": 36},
    {"command": "set", "channel": 36},  # two radios: which one
    {"command": "set", "interface": "wlan0"},
    {"command": "set", "interface": "wlan0", "channel": 36, "power": 20},
    {"command": "tune", "interface": "wlan0", "channel": 36},
    {"command": "reset", "interface": "wlan0"},
])
def test_a_bad_command_changes_nothing(tree: Path, command: dict) -> None:
    knob = RadioConfig(FileRadio(Sysfs(tree)))
    before = (tree / RADIO_FILE).read_bytes()
    with pytest.raises(InvalidCommand) as caught:
        knob.apply(command)
    assert caught.value.options is not None and "interfaces" in caught.value.options
    assert (tree / RADIO_FILE).read_bytes() == before


def test_a_failed_write_leaves_the_radio_as_it_was(tree: Path) -> None:
    knob = RadioConfig(FileRadio(Sysfs(tree)))
    before = (tree / RADIO_FILE).read_bytes()
    path = tree / RADIO_FILE
    (path.parent / f".{path.name}.{os.getpid()}.tmp").mkdir()  # where the new file would be written first
    with pytest.raises(HardwareError):
        knob.apply({"command": "set", "interface": "wlan0", "channel": 36})
    assert path.read_bytes() == before


def test_no_radio_no_knob(tmp_path: Path) -> None:
    with pytest.raises(Unsupported):
        RadioConfig(FileRadio(Sysfs(simulate.create(tmp_path / "arm", "arm"))))
    assert "RadioConfig" not in build_knobs(Sysfs(tmp_path / "arm"), TelemetryInterval())


def test_the_node_description_has_the_knob_and_the_gps_position(tree: Path) -> None:
    assert position(Sysfs(tree)) == {"latitude": 45.442997, "longitude": 9.16278, "altitude": 143.3,
                                     "accuracy": 500.0, "satellites": 2, "timestamp": 1742549118, "fix": True,
                                     "source": "gps"}
    knobs = build_knobs(Sysfs(tree), TelemetryInterval())
    assert "RadioConfig" in knobs
    doc = node_description("edge-1", Sysfs(tree), knobs)
    node = doc["MLSysOpsNode"]
    assert node["location"]["latitude"] == 45.442997 and "radio_config" in node["permitted_actions"]
    assert node["mechanism_options"]["RadioConfig"]["interfaces"]["wwan0"]["technology"] == "5g-nr"
    assert node["mechanism_states"]["RadioConfig"]["interfaces"]["wlan0"]["channel"] == 6
    load(json.loads(json.dumps(doc)))  # a valid MLSysOps node description (with mapemesh's `location`)


def test_reset_goes_back_to_what_the_shim_first_found_across_restarts(tree: Path, tmp_path: Path) -> None:
    from mapemesh.node_shim.shim import Baselines

    first = RadioConfig(FileRadio(Sysfs(tree)))
    Baselines(tmp_path / "baseline.json").apply({first.name: first})
    first.apply({"command": "set", "interface": "wlan0", "channel": 149})
    again = RadioConfig(FileRadio(Sysfs(tree)))  # the shim restarted: it finds channel 149
    Baselines(tmp_path / "baseline.json").apply({again.name: again})
    assert again.apply({"command": "reset"})["interfaces"]["wlan0"]["channel"] == 6
