"""The FPGABitstream knob on the simulated `fpga` tree (a ZCU102): full and partial loads, refusals that write
nothing, rollback of a failed load, the drain of the functions that use the FPGA before it is written, board power."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import httpx
import pytest

from mapemesh.node_shim import simulate
from mapemesh.node_shim.knobs.base import HardwareError, InvalidCommand, Knob, Sysfs, Unsupported
from mapemesh.node_shim.knobs.fpga import DrainFailed, FPGABitstream, board_power
from mapemesh.node_shim.telemetry import Collector, node_description

MANAGER = "sys/class/fpga_manager/fpga0"


class Kernel(Sysfs):
    """The simulated tree with the one side effect the knob depends on: loading a bitstream moves `state` (to
    `operating`, or to `write error` for a bitstream named in `fail`), as the FPGA manager does. Every write is
    logged in `writes`, shared with the drainer's calls so their order shows."""

    def __init__(self, root: Path, log: list[Any], fail: set[str] | None = None, oserror: set[str] | None = None):
        super().__init__(root)
        self.log = log
        self.fail = fail or set()
        self.oserror = oserror or set()

    def write(self, relative: str, value: str | int) -> None:
        if relative.endswith("/firmware") and str(value) in self.oserror:
            self.log.append(("write", relative, str(value), "EIO"))
            raise HardwareError(f"writing {value!r} to {self.path(relative)}: Input/output error")
        super().write(relative, value)
        self.log.append(("write", relative, str(value)))
        if relative.endswith("/firmware"):
            state = "write error" if str(value) in self.fail else "operating"
            super().write(relative.rsplit("/", 1)[0] + "/state", state)


class Drain:
    """A Drainer that records its calls (in the kernel's log) and can refuse, or break (`refuse` an exception)."""

    def __init__(self, log: list[Any], refuse: bool | BaseException = False):
        self.log = log
        self.refuse = refuse

    def drain(self, services: list[str], timeout_s: float) -> None:
        self.log.append(("drain", tuple(services)))
        if isinstance(self.refuse, BaseException):
            raise self.refuse
        if self.refuse:
            raise DrainFailed(f"{', '.join(services)} still ran requests after {timeout_s:g}s")

    def release(self, services: list[str]) -> None:
        self.log.append(("release", tuple(services)))


FUNCTIONS = {"default/detect": {"service": "default/detect", "region": "fabric"},
             "default/fft": {"service": "default/fft", "region": "rp0"},
             "default/fir": {"service": "default/fir", "region": "rp1"}}


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    return simulate.create(tmp_path / "sim", "fpga")


def make(tree: Path, tmp_path: Path, *, fail: set[str] | None = None, oserror: set[str] | None = None,
         refuse: bool | BaseException = False, functions: dict[str, Any] | None = None
         ) -> tuple[FPGABitstream, list[Any]]:
    log: list[Any] = []
    knob = FPGABitstream(Kernel(tree, log, fail, oserror), tmp_path / "fpga.json", drainer=Drain(log, refuse),
                         functions=lambda: dict(FUNCTIONS if functions is None else functions))
    return knob, log


def firmware(tree: Path) -> str:
    return (tree / MANAGER / "firmware").read_text().strip()


def flags(tree: Path) -> str:
    return (tree / MANAGER / "flags").read_text().strip()


def test_options_list_the_bitstreams_and_the_functions(tree: Path, tmp_path: Path) -> None:
    knob, _ = make(tree, tmp_path)
    assert isinstance(knob, Knob)
    options = knob.get_options()
    assert options["managers"] == ["fpga0"]
    assert options["bitstreams"] == ["base.bit.bin", "conv2d.bit.bin", "rp0_fft.bin", "rp0_fir.bin"]
    (tree / "lib/firmware/wifi-fw.bin").write_bytes(b"\x7fELF" + b"\x00" * 64)
    assert "wifi-fw.bin" not in knob.get_options()["bitstreams"]  # other firmware is not offered
    assert options["needs_idle"] is True and options["functions"] == FUNCTIONS
    state = knob.get_state()["managers"]["fpga0"]
    assert state["state"] == "operating" and state["name"] == "Xilinx ZynqMP FPGA Manager" and state["flags"] == 0
    assert state["full"] is None and state["partials"] == {}


def test_full_load_drains_every_fpga_function_first(tree: Path, tmp_path: Path) -> None:
    knob, log = make(tree, tmp_path)
    after = knob.apply({"command": "load", "bitstream": "conv2d.bit.bin"})["managers"]["fpga0"]
    assert firmware(tree) == "conv2d.bit.bin" and flags(tree) == "0"
    assert after["full"] == "conv2d.bit.bin" and after["state"] == "operating" and knob.changed
    everyone = ("default/detect", "default/fft", "default/fir")
    assert log[0] == ("drain", everyone)  # before anything is written
    assert log[-1] == ("release", everyone)  # after the fabric is programmed
    assert [entry[1].rsplit("/", 1)[1] for entry in log if entry[0] == "write"] == ["flags", "firmware"]
    last = after["last_reconfiguration"]
    assert last["needs_idle"] is True and last["drained"] == list(everyone) and last["partial"] is False
    # The same bitstream again changes nothing and drains nothing.
    log.clear()
    knob.apply({"command": "load", "bitstream": "conv2d.bit.bin"})
    assert not knob.changed and log == []


def test_partial_load_sets_the_flag_and_drains_only_its_region(tree: Path, tmp_path: Path) -> None:
    knob, log = make(tree, tmp_path)
    knob.apply({"command": "load", "bitstream": "base.bit.bin"})
    log.clear()
    after = knob.apply({"command": "load", "bitstream": "rp0_fft.bin", "partial": True, "region": "rp0"})
    fpga0 = after["managers"]["fpga0"]
    assert firmware(tree) == "rp0_fft.bin" and flags(tree) == "1"
    assert fpga0["full"] == "base.bit.bin" and fpga0["partials"] == {"rp0": "rp0_fft.bin"}
    assert log[0] == ("drain", ("default/detect", "default/fft"))  # rp1's function keeps serving
    assert fpga0["last_reconfiguration"]["region"] == "rp0"
    # A full load replaces every region's bitstream.
    after = knob.apply({"command": "load", "bitstream": "conv2d.bit.bin"})["managers"]["fpga0"]
    assert after["partials"] == {} and flags(tree) == "0"


@pytest.mark.parametrize("command", [
    {"command": "load", "bitstream": "missing.bit.bin"},
    {"command": "load", "bitstream": "../../etc/passwd"},
    {"command": "load", "bitstream": "/lib/firmware/base.bit.bin"},
    {"command": "load", "bitstream": "notes.txt"},
    {"command": "load", "bitstream": "wifi-fw.bin"},  # firmware of another device: no sync word
    {"command": "load", "bitstream": "empty.bit"},
    {"command": "load", "bitstream": "escape.bin"},
    {"command": "load", "bitstream": "base.bit.bin\nrp0_fft.bin"},
    {"command": "load", "bitstream": "rp0_fft.bin", "partial": True},
    {"command": "load", "bitstream": "base.bit.bin", "region": "rp0"},
    {"command": "load", "bitstream": "base.bit.bin", "partial": "yes"},
    {"command": "load", "bitstream": "base.bit.bin", "manager": "fpga7"},
    {"command": "flash", "bitstream": "base.bit.bin"},
    {"command": "load", "bitstream": "base.bit.bin", "reboot": True},
    {"command": "load", "bitstream": "base.bit.bin", "force": "yes"},
    # rp0's bitstream (its name says so) into rp1: it would reprogram rp0 under rp0's running function.
    {"command": "load", "bitstream": "rp0_fir.bin", "partial": True, "region": "rp1"},
])
def test_a_bad_command_is_refused_with_nothing_changed(tree: Path, tmp_path: Path, command: dict[str, Any]) -> None:
    (tree / "lib/firmware/notes.txt").write_text("not a bitstream")
    (tree / "lib/firmware/wifi-fw.bin").write_bytes(b"\x7fELF" + b"\x00" * 64)
    (tree / "lib/firmware/empty.bit").write_bytes(b"")
    (tmp_path / "outside.bin").write_bytes(b"\x01" * 16)
    (tree / "lib/firmware/escape.bin").symlink_to(tmp_path / "outside.bin")
    knob, log = make(tree, tmp_path)
    before = {p: p.read_bytes() for p in (tree / MANAGER).iterdir()}
    with pytest.raises(InvalidCommand) as caught:
        knob.apply(command)
    assert caught.value.options is not None and "bitstreams" in caught.value.options
    assert log == []  # neither drained nor written
    assert {p: p.read_bytes() for p in (tree / MANAGER).iterdir()} == before
    assert not (tmp_path / "fpga.json").exists()


def test_a_failed_load_puts_the_previous_bitstream_back(tree: Path, tmp_path: Path) -> None:
    knob, log = make(tree, tmp_path, fail={"conv2d.bit.bin"})
    knob.apply({"command": "load", "bitstream": "base.bit.bin"})
    knob.apply({"command": "load", "bitstream": "rp0_fir.bin", "partial": True, "region": "rp0"})
    record = (tmp_path / "fpga.json").read_text()
    log.clear()
    with pytest.raises(HardwareError) as caught:
        knob.apply({"command": "load", "bitstream": "conv2d.bit.bin"})
    assert "write error" in str(caught.value) and caught.value.rolled_back
    loads = [entry[2] for entry in log if entry[0] == "write" and entry[1].endswith("/firmware")]
    assert loads == ["conv2d.bit.bin", "base.bit.bin", "rp0_fir.bin"]  # the failed one, then what it replaced
    assert flags(tree) == "1" and (tree / MANAGER / "state").read_text().strip() == "operating"
    assert (tmp_path / "fpga.json").read_text() == record  # the record still says what the fabric holds
    assert log[-1] == ("release", ("default/detect", "default/fft", "default/fir"))  # released after a failure too


def test_an_oserror_on_the_write_rolls_back_the_flags(tree: Path, tmp_path: Path) -> None:
    knob, _ = make(tree, tmp_path, oserror={"rp0_fft.bin"})
    knob.apply({"command": "load", "bitstream": "base.bit.bin"})
    knob.apply({"command": "load", "bitstream": "rp0_fir.bin", "partial": True, "region": "rp0"})
    with pytest.raises(HardwareError) as caught:
        knob.apply({"command": "load", "bitstream": "rp0_fft.bin", "partial": True, "region": "rp0"})
    assert caught.value.rolled_back
    assert firmware(tree) == "rp0_fir.bin" and flags(tree) == "1"
    assert knob.get_state()["managers"]["fpga0"]["partials"] == {"rp0": "rp0_fir.bin"}


def test_a_failed_first_load_cannot_be_rolled_back_and_says_so(tree: Path, tmp_path: Path) -> None:
    knob, _ = make(tree, tmp_path, fail={"base.bit.bin"})
    with pytest.raises(HardwareError) as caught:
        knob.apply({"command": "load", "bitstream": "base.bit.bin"})
    assert not caught.value.rolled_back  # the boot's bitstream is not known to the knob
    assert flags(tree) == "0"


@pytest.mark.parametrize("refuse", [True, RuntimeError("the host's loop is gone")])
def test_nothing_is_written_when_the_drain_fails_and_the_functions_are_let_go(
        tree: Path, tmp_path: Path, refuse: bool | BaseException) -> None:
    knob, log = make(tree, tmp_path, refuse=refuse)
    with pytest.raises(DrainFailed) as caught:
        knob.apply({"command": "load", "bitstream": "conv2d.bit.bin"})
    assert caught.value.code == "timeout"
    everyone = ("default/detect", "default/fft", "default/fir")
    assert log == [("drain", everyone), ("release", everyone)]  # a drain cut short may have held some of them
    assert firmware(tree) == "" and flags(tree) == "0"


def test_a_partial_bitstream_whose_name_names_no_region_drains_every_function(tree: Path, tmp_path: Path) -> None:
    knob, log = make(tree, tmp_path)
    (tree / "lib/firmware/fir_small.bin").write_bytes((tree / "lib/firmware/rp0_fir.bin").read_bytes())
    after = knob.apply({"command": "load", "bitstream": "fir_small.bin", "partial": True, "region": "rp1"})
    everyone = ("default/detect", "default/fft", "default/fir")
    assert log[0] == ("drain", everyone) and log[-1] == ("release", everyone)  # which region it writes is not known
    assert after["managers"]["fpga0"]["partials"] == {"rp1": "fir_small.bin"}
    # A region it loaded is known from then on: rp1's bitstream is refused for rp0.
    (tree / "lib/firmware/rp1_fft.bin").write_bytes((tree / "lib/firmware/rp0_fft.bin").read_bytes())
    knob_without_functions, _ = make(tree, tmp_path, functions={})
    with pytest.raises(InvalidCommand, match="programs region 'rp1'"):
        knob_without_functions.apply({"command": "load", "bitstream": "rp1_fft.bin", "partial": True, "region": "rp0"})


def test_a_failed_partial_load_into_an_empty_region_undid_nothing_and_says_so(tree: Path, tmp_path: Path) -> None:
    knob, _ = make(tree, tmp_path, fail={"rp0_fft.bin"})
    knob.apply({"command": "load", "bitstream": "base.bit.bin"})
    with pytest.raises(HardwareError) as caught:
        knob.apply({"command": "load", "bitstream": "rp0_fft.bin", "partial": True, "region": "rp0"})
    assert not caught.value.rolled_back  # rp0 held nothing to load again
    assert knob.get_state()["managers"]["fpga0"]["partials"] == {}


def test_functions_that_cannot_be_drained_keep_the_fabric_as_it_is(tree: Path, tmp_path: Path) -> None:
    knob = FPGABitstream(Sysfs(tree), tmp_path / "fpga.json", functions=lambda: dict(FUNCTIONS))
    with pytest.raises(Unsupported, match="force"):
        knob.apply({"command": "load", "bitstream": "conv2d.bit.bin"})
    assert firmware(tree) == ""
    last = knob.apply({"command": "load", "bitstream": "conv2d.bit.bin", "force": True})["last_reconfiguration"]
    assert firmware(tree) == "conv2d.bit.bin" and last["drained"] == [] and last["forced"] is True
    idle = FPGABitstream(Sysfs(tree), tmp_path / "fpga.json", functions=dict)
    last = idle.apply({"command": "load", "bitstream": "base.bit.bin"})["managers"]["fpga0"]["last_reconfiguration"]
    assert last["drained"] == [] and last["forced"] is False


def test_where_no_one_knows_the_functions_only_force_reprograms(tree: Path, tmp_path: Path) -> None:
    # A cluster's shim: the functions run in pods, and nothing on the node can drain them.
    knob = FPGABitstream(Sysfs(tree), tmp_path / "fpga.json")
    assert knob.get_options()["functions"] is None
    with pytest.raises(Unsupported, match='"force": true'):
        knob.apply({"command": "load", "bitstream": "rp0_fft.bin", "partial": True, "region": "rp0"})
    assert firmware(tree) == "" and not (tmp_path / "fpga.json").exists()
    after = knob.apply({"command": "load", "bitstream": "rp0_fft.bin", "partial": True, "region": "rp0",
                        "force": True})
    assert firmware(tree) == "rp0_fft.bin" and flags(tree) == "1"
    assert after["last_reconfiguration"]["forced"] is True and after["last_reconfiguration"]["drained"] == []


def test_no_fpga_manager_no_knob(tmp_path: Path) -> None:
    with pytest.raises(Unsupported):
        FPGABitstream(Sysfs(simulate.create(tmp_path / "arm", "arm")), tmp_path / "fpga.json")


def test_board_power_is_telemetry_and_the_knob_is_in_the_description(tree: Path, tmp_path: Path) -> None:
    assert board_power(Sysfs(tree)) == {"vccint": 2.15, "vccpsintfp": 1.32, "vcc_psddr": 0.41}
    knob, _ = make(tree, tmp_path)
    metrics = {(m.name, m.labels.get("rail")): m.value for m in Collector(Sysfs(tree), {knob.name: knob}).collect()}
    assert metrics[("node_board_power_total_watts", None)] == pytest.approx(3.88)
    assert metrics[("node_board_power_watts", "vccint")] == 2.15
    doc = node_description("zcu102", Sysfs(tree), {knob.name: knob})["MLSysOpsNode"]
    assert "FPGABitstream" in doc["mechanisms"] and doc["hardware"]["fpga"] == {"managers": ["fpga0"]}
    assert doc["mechanism_options"]["FPGABitstream"]["bitstreams"][0] == "base.bit.bin"
    assert doc["mechanism_states"]["FPGABitstream"]["managers"]["fpga0"]["state"] == "operating"
    json.dumps(doc)


class Host:
    """The local host's drain and release as the shim's HostDrainer calls them (on the host's event loop)."""

    def __init__(self, log: list[Any]):
        self.log = log

    async def drain(self, keys: list[str], timeout_s: float) -> None:
        self.log.append(("drain", tuple(keys)))

    async def release(self, keys: list[str]) -> None:
        self.log.append(("release", tuple(keys)))


def test_the_shim_offers_the_knob_and_drains_through_the_host(tmp_path: Path) -> None:
    from mapemesh.node_shim.daemon import HostDrainer, start_node_shim
    from mapemesh.runtimes.vaccel_hook import FPGA_LABEL

    from .test_fpga_drain import spec

    root = simulate.create(tmp_path / "sim", "fpga")
    log: list[Any] = []

    async def main() -> None:
        services = {"default/fft": spec("fft", "rp0"), "default/web": spec("web", None)}
        assert services["default/fft"].labels == {FPGA_LABEL: "rp0"}
        running = await start_node_shim("zcu102", tmp_path / "data", sysfs_root=root, services=lambda: services,
                                        drainer=HostDrainer(Host(log), asyncio.get_running_loop()))
        try:
            headers = {"Authorization": f"Bearer {(tmp_path / 'data' / 'node-shim.token').read_text().strip()}"}
            async with httpx.AsyncClient(base_url=running.url, headers=headers) as http:
                described = (await http.get("/knobs/FPGABitstream")).json()
                assert described["options"]["functions"] == {"default/fft": {"service": "default/fft",
                                                                             "region": "rp0"}}
                answer = await http.post("/knobs/FPGABitstream", json={"command": "load", "bitstream": "rp0_fir.bin",
                                                                       "partial": True, "region": "rp0"})
                assert answer.status_code == 200, answer.text
                assert answer.json()["after"]["last_reconfiguration"]["drained"] == ["default/fft"]
                refused = await http.post("/knobs/FPGABitstream", json={"bitstream": "../../etc/passwd"})
                assert refused.status_code == 422 and "bitstreams" in refused.json()["options"]
                journal = (await http.get("/journal")).json()
                assert [e.get("code") for e in journal if e["knob"] == "FPGABitstream"] == [None, "invalid"]
        finally:
            await running.stop()

    asyncio.run(main())
    assert log == [("drain", ("default/fft",)), ("release", ("default/fft",))]
    assert firmware(root) == "rp0_fir.bin" and flags(root) == "1"
