"""Knob drivers: each one an MLSysOps mechanism (`apply`, `get_state`, `get_options`) for one kind of hardware."""

from mapemesh.node_shim.knobs.base import (
    Command,
    HardwareError,
    InvalidCommand,
    Knob,
    KnobError,
    PermissionDenied,
    Sysfs,
    Transaction,
    Unsupported,
)

__all__ = ["Command", "HardwareError", "InvalidCommand", "Knob", "KnobError", "PermissionDenied", "Sysfs",
           "Transaction", "Unsupported"]
