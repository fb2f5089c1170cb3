"""vaccel/plugin.py: PluginType, an IntFlag of libvaccel's VACCEL_PLUGIN_* (MAX: the enum's guard)."""

from enum import IntFlag

PluginType = IntFlag("PluginType", {
    "CPU": 0x0001, "GPU": 0x0002, "FPGA": 0x0004, "SOFTWARE": 0x0008, "TENSORFLOW": 0x0010, "TORCH": 0x0020,
    "JETSON": 0x0040, "GENERIC": 0x0080, "DEBUG": 0x0100, "PROFILING": 0x0200, "REMOTE": 0x4000, "MAX": 0x10000})
