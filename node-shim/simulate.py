"""Simulated hardware trees: the sysfs files of a CPU frequency driver and RAPL, written under a folder.

Two profiles add edge hardware to an ARM board: `fpga` (a ZCU102: an FPGA manager under
/sys/class/fpga_manager/fpga0, bitstreams in /lib/firmware, INA226 power monitors under /sys/class/hwmon) and
`wireless` (an edge node's radio: `radio.RADIO_FILE`, its state, and `radio.GPS_FILE`, the GPS fix as a Teltonika
router's `/gps/position/status` answers it).

This is for development and tests on machines without the hardware (or without root). `create(root, profile)`
writes the files a kernel would show under `/sys`, with the values it would show (frequencies in kHz), and the
knob drivers read and write them through `Sysfs(root)` exactly as they read and write `/sys` on a real machine.
The tree is plain files: writing one changes only that file, so it does not emulate the kernel's side effects
(a new governor does not fill `scaling_setspeed`, a frequency limit does not move `scaling_cur_freq`).
"""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

CPUFREQ_PROFILES = ("intel_pstate", "acpi-cpufreq", "arm")
"""One profile per kind of CPU frequency driver; `fpga` and `wireless` are ARM boards (cpufreq-dt) with more."""
PROFILES = (*CPUFREQ_PROFILES, "fpga", "wireless")
MARKER = ".mapemesh-simulated"
CPU_DIR = "sys/devices/system/cpu"
POWERCAP_DIR = "sys/class/powercap"

_GENERIC_GOVERNORS = ("conservative", "ondemand", "userspace", "powersave", "performance", "schedutil")


@dataclass(frozen=True)
class _Profile:
    driver: str
    governors: tuple[str, ...]
    governor: str
    min_khz: int
    max_khz: int
    cur_khz: int
    available_khz: tuple[int, ...] | None  # descending, as the kernel lists them
    rapl: bool


_PROFILES: dict[str, _Profile] = {
    "intel_pstate": _Profile(
        driver="intel_pstate", governors=("performance", "powersave"), governor="powersave",
        min_khz=800_000, max_khz=4_200_000, cur_khz=2_100_000, available_khz=None, rapl=True),
    "acpi-cpufreq": _Profile(
        driver="acpi-cpufreq", governors=_GENERIC_GOVERNORS, governor="schedutil",
        min_khz=1_000_000, max_khz=3_400_000, cur_khz=2_200_000,
        available_khz=(3_400_000, 3_000_000, 2_600_000, 2_200_000, 1_800_000, 1_400_000, 1_000_000), rapl=True),
    "arm": _Profile(
        driver="cpufreq-dt", governors=_GENERIC_GOVERNORS, governor="schedutil",
        min_khz=600_000, max_khz=2_400_000, cur_khz=1_200_000,
        available_khz=(2_400_000, 1_800_000, 1_500_000, 1_200_000, 1_000_000, 600_000), rapl=False),
    # The ZCU102's Cortex-A53 (cpufreq-dt), with its FPGA fabric and INA226 monitors (`_write_fpga`).
    "fpga": _Profile(
        driver="cpufreq-dt", governors=_GENERIC_GOVERNORS, governor="schedutil",
        min_khz=299_999, max_khz=1_199_999, cur_khz=1_199_999,
        available_khz=(1_199_999, 599_999, 399_999, 299_999), rapl=False),
}
_PROFILES["wireless"] = _PROFILES["arm"]

FPGA_MANAGER = "sys/class/fpga_manager/fpga0"
FIRMWARE_DIR = "lib/firmware"
# A bitstream's start as bootgen writes it: padding, the bus-width pattern, the sync word; then configuration data.
_PREAMBLE = b"\xff" * 32 + bytes.fromhex("000000bb11220044ffffffffffffffffaa995566")
BITSTREAMS = {"base.bit.bin": _PREAMBLE + b"\x20\x00\x00\x00" * 256,  # full designs
              "conv2d.bit.bin": _PREAMBLE + b"\x30\x00\x80\x01" * 256,
              "rp0_fft.bin": _PREAMBLE + b"\x30\x00\x40\x00" * 64,  # partial ones for reconfigurable partition rp0
              "rp0_fir.bin": _PREAMBLE + b"\x30\x00\x40\x01" * 64}
# (rail, microwatts): three of the ZCU102's INA226 rails (seed 3.3: PL fabric, PS full-power domain, PS DDR)
_INA226 = (("vccint", 2_150_000), ("vccpsintfp", 1_320_000), ("vcc_psddr", 410_000))

_INTEL_PSTATE = {"status": "active", "min_perf_pct": "19", "max_perf_pct": "100", "no_turbo": "0",
                 "num_pstates": "35", "turbo_pct": "33"}

_RAPL_PACKAGE = {
    "name": "package-0", "enabled": "1", "energy_uj": "123456789", "max_energy_range_uj": "262143328850",
    "constraint_0_name": "long_term", "constraint_0_power_limit_uw": "65000000",
    "constraint_0_time_window_us": "27983872", "constraint_0_max_power_uw": "95000000",
    "constraint_1_name": "short_term", "constraint_1_power_limit_uw": "95000000",
    "constraint_1_time_window_us": "2440", "constraint_1_max_power_uw": "190000000",
}
# (sub-zone, name, max power in uW, energy counter in uJ)
_RAPL_SUBZONES = (("0:0", "core", "95000000", "61728394"), ("0:1", "uncore", "30000000", "4567890"),
                  ("0:2", "dram", "20000000", "12345678"))


def create(root: Path, profile: str, cpus: int = 4) -> Path:
    """Write a simulated sysfs tree for `profile` under `root` (as if `root` were `/`) and return `root`."""
    if profile not in _PROFILES:
        raise ValueError(f"unknown profile {profile!r} (valid: {', '.join(PROFILES)})")
    if cpus < 1:
        raise ValueError(f"cpus must be at least 1, not {cpus}")
    root = Path(root)
    if root.exists():
        if not root.is_dir():
            raise ValueError(f"{root} exists and is not a directory")
        if any(root.iterdir()):
            if profile_of(root) is None:
                raise ValueError(f"{root} is not empty and was not created by simulate.create; refusing to write there")
            _empty(root)  # our own tree from before: start again so no file of the old profile is left
    root.mkdir(parents=True, exist_ok=True)
    spec = _PROFILES[profile]
    cpu_dir = root / CPU_DIR
    _write(cpu_dir / "online", "0" if cpus == 1 else f"0-{cpus - 1}")
    for cpu in range(cpus):
        _write_cpufreq(cpu_dir / f"cpu{cpu}" / "cpufreq", spec)
    if profile == "intel_pstate":
        for name, value in _INTEL_PSTATE.items():
            _write(cpu_dir / "intel_pstate" / name, value)
    if spec.rapl:
        _write_rapl(root / POWERCAP_DIR)
    if profile == "fpga":
        _write_fpga(root)
    if profile == "wireless":
        from mapemesh.node_shim.knobs import radio

        radio.simulate(root)
    # The marker goes last: a tree that was only half written is not mistaken for a finished one.
    _write(root / MARKER, profile)
    log.debug("simulated %s tree with %d cpus under %s", profile, cpus, root)
    return root


def profile_of(root: Path) -> str | None:
    """The profile of the simulated tree at `root`, or None when `root` is not one."""
    try:
        profile = (Path(root) / MARKER).read_text().strip()
    except OSError:
        return None
    return profile if profile in _PROFILES else None


def _write_cpufreq(folder: Path, spec: _Profile) -> None:
    files = {
        "scaling_driver": spec.driver,
        "scaling_governor": spec.governor,
        "scaling_available_governors": " ".join(spec.governors),
        "cpuinfo_min_freq": str(spec.min_khz),
        "cpuinfo_max_freq": str(spec.max_khz),
        "scaling_min_freq": str(spec.min_khz),
        "scaling_max_freq": str(spec.max_khz),
        "scaling_cur_freq": str(spec.cur_khz),
        "scaling_setspeed": str(spec.cur_khz) if spec.governor == "userspace" else "<unsupported>",
    }
    if spec.available_khz is not None:
        files["scaling_available_frequencies"] = " ".join(str(khz) for khz in spec.available_khz)
    for name, value in files.items():
        _write(folder / name, value)


def _write_rapl(powercap: Path) -> None:
    for name, value in _RAPL_PACKAGE.items():
        _write(powercap / "intel-rapl:0" / name, value)
    for zone, name, max_power_uw, energy_uj in _RAPL_SUBZONES:
        files = {
            "name": name, "enabled": "1", "energy_uj": energy_uj,
            "max_energy_range_uj": _RAPL_PACKAGE["max_energy_range_uj"],
            "constraint_0_name": "long_term", "constraint_0_power_limit_uw": "0",
            "constraint_0_time_window_us": "976", "constraint_0_max_power_uw": max_power_uw,
        }
        for file, value in files.items():
            _write(powercap / f"intel-rapl:{zone}" / file, value)


def _write_fpga(root: Path) -> None:
    files = {"name": "Xilinx ZynqMP FPGA Manager", "state": "operating", "flags": "0", "firmware": "",
             "status": ""}
    for name, value in files.items():
        _write(root / FPGA_MANAGER / name, value)
    for name, content in BITSTREAMS.items():
        (root / FIRMWARE_DIR).mkdir(parents=True, exist_ok=True)
        (root / FIRMWARE_DIR / name).write_bytes(content)
    for n, (rail, microwatts) in enumerate(_INA226):
        folder = root / "sys/class/hwmon" / f"hwmon{n}"
        _write(folder / "name", "ina226")
        _write(folder / "power1_input", str(microwatts))
        _write(folder / "power1_label", rail)


def _write(path: Path, value: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(value + "\n")  # sysfs attributes end with a newline


def _empty(root: Path) -> None:
    for child in root.iterdir():
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child)
        else:
            child.unlink()
