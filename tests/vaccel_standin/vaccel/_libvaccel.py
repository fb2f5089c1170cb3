"""libvaccel, simulated: its load-time constructor, its plugins and the exec plugin's call.

At import (libvaccel's `vaccel_init` constructor): each `VACCEL_PLUGINS` entry is `dlopen`ed (ctypes: the real
search); one that cannot be opened makes the process exit with 2 (VACCEL_ENOENT), one without the plugin symbol
with 80 (VACCEL_ELIBBAD), as `vaccel_plugin_parse_and_load` and `exit(ret)` do.
"""

import ctypes
import errno
import os
import sys
from pathlib import Path

REMOTE = 0x4000
PLUGINS = []
"""Loaded plugins in load order: (name, type bits, is_virtio)."""


class Struct(ctypes.Structure):
    """libvaccel's `struct vaccel_arg` (src/include/vaccel/arg.h)."""

    _fields_ = [("buf", ctypes.c_void_p), ("size", ctypes.c_size_t), ("type", ctypes.c_uint32),
                ("custom_type_id", ctypes.c_uint32), ("owned", ctypes.c_bool)]


def _bootstrap():
    if os.environ.get("VACCEL_BOOTSTRAP_ENABLED") == "0":
        return
    for entry in [e for e in os.environ.get("VACCEL_PLUGINS", "").split(":") if e]:
        try:
            lib = ctypes.CDLL(entry, mode=os.RTLD_LAZY)
        except OSError as exc:
            sys.stderr.write(f"[vaccel] Could not dlopen plugin {entry}: {exc}\n[vaccel] Could not load plugins\n")
            sys.stderr.flush()
            os._exit(errno.ENOENT)
        try:
            kind = ctypes.c_uint.in_dll(lib, "vaccel_standin_plugin_type").value
        except ValueError:
            sys.stderr.write(f"[vaccel] {entry} is not a vAccel plugin\n")
            sys.stderr.flush()
            os._exit(errno.ELIBBAD)
        name = Path(entry).name.split(".so", 1)[0].removeprefix("libvaccel-")
        PLUGINS.append((name, kind, bool(kind & REMOTE)))


def plugin_find(hint):
    """libvaccel's plugin_find (src/plugin.c)."""
    if not PLUGINS:
        return None
    if hint & REMOTE:
        return next((p for p in PLUGINS if p[2]), None)
    return next((p for p in PLUGINS if p[1] & hint), None) or next((p for p in PLUGINS if not p[2]), None)


def exec_plugin(library, symbol, read, nr_read, write, nr_write):
    """plugins/exec: dlopen (EINVAL), dlsym (ENOSYS), call (a non-zero return is VACCEL_EBACKEND, EPROTO)."""
    try:
        lib = ctypes.CDLL(str(library))
    except OSError:
        return errno.EINVAL
    try:
        fn = getattr(lib, symbol)
    except AttributeError:
        return errno.ENOSYS
    fn.restype = ctypes.c_int
    fn.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p, ctypes.c_size_t]
    return errno.EPROTO if fn(read, nr_read, write, nr_write) else 0


_bootstrap()
