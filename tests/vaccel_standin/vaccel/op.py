"""vaccel/op.py: OpType, libvaccel's VACCEL_OP_* (the members the stand-in's plugins serve; the real enum has
every op libvaccel defines, in its order, which the stand-in does not claim)."""

from enum import IntEnum

OpType = IntEnum("OpType", {"NOOP": 0})
