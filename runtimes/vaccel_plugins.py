"""Which vAccel plugins a process can load, found before libvaccel looks, and which one serves a session.

libvaccel loads `VACCEL_PLUGINS` (`:`-separated) in a load-time constructor and calls `exit()` with the first
failure's code (ENOENT, 2, for a library `dlopen` cannot find), at `import vaccel`, where no `except` reaches
(libvaccel `src/vaccel.c`, `vaccel_init`; `src/plugin.c`, `vaccel_plugin_parse_and_load`). So a function process
checks each entry first, with `dlopen`'s own search (it passes the name unchanged to `dlopen(3)`):

| entry                      | where it is looked for                                                        |
|----------------------------|-------------------------------------------------------------------------------|
| contains `/`               | that path (relative to the working directory)                                 |
| a bare name                | `LD_LIBRARY_PATH`'s folders, then `/etc/ld.so.cache` (`ldconfig -p`), then   |
|                            | `/lib`, `/usr/lib` (and their 64-bit and multiarch folders)                   |

(`dlopen` also reads the calling object's DT_RUNPATH; libvaccel is not built with one.) A missing entry is left
out with a log line; with none left, the process does not load libvaccel at all and mapemesh's local backends
serve, saying so.

The plugin serving a session is libvaccel's `plugin_find(flags)` (`src/plugin.c`): with REMOTE in the flags the
first VirtIO plugin; else the first loaded plugin whose type shares a bit with the flags; else the first
non-VirtIO one. `served_by` applies it to the loaded plugins' known types (`PLUGIN_TYPES`, from each plugin's
`VACCEL_PLUGIN(.type = ...)`).
"""

from __future__ import annotations

import functools
import logging
import os
import platform
import subprocess
from collections.abc import Mapping
from pathlib import Path

log = logging.getLogger(__name__)

CPU, GPU, SOFTWARE, TORCH, GENERIC, DEBUG, REMOTE = 0x1, 0x2, 0x8, 0x20, 0x80, 0x100, 0x4000
PLUGIN_TYPES = {"noop": DEBUG, "exec": SOFTWARE | GENERIC | CPU, "torch": TORCH | CPU, "rpc": REMOTE}
"""Each plugin's type bits (plugins/noop, plugins/exec: `SOFTWARE | GENERIC | CPU`; vaccel-torch; vaccel-rpc)."""
VIRTIO = frozenset({"rpc"})
DEVICES = {"noop": "none", "exec": "cpu", "torch": "vaccel-torch", "rpc": "remote"}
"""What reports as the device when a plugin served a call (the RPC plugin: the agent's, which it does not tell)."""


def plugin_name(entry: str) -> str:
    """`libvaccel-exec.so` and `/opt/vaccel/lib/libvaccel-exec.so` -> `exec`."""
    stem = Path(entry).name.split(".so", 1)[0]
    return stem.removeprefix("libvaccel-")


@functools.lru_cache(maxsize=1)
def _ld_cache() -> dict[str, str]:
    """`ldconfig -p`: library name -> path, as `/etc/ld.so.cache` maps them (empty where ldconfig is absent)."""
    for ldconfig in ("/sbin/ldconfig", "/usr/sbin/ldconfig", "ldconfig"):
        try:
            out = subprocess.run([ldconfig, "-p"], capture_output=True, text=True, timeout=10).stdout
        except (OSError, subprocess.SubprocessError):
            continue
        found: dict[str, str] = {}
        for line in out.splitlines()[1:]:
            name, _, path = line.strip().partition(" => ")
            found.setdefault(name.split(" (", 1)[0], path.strip())
        return found
    return {}


def _default_dirs() -> list[str]:
    arch = f"{platform.machine()}-linux-gnu"
    return ["/lib", "/usr/lib", "/lib64", "/usr/lib64", f"/lib/{arch}", f"/usr/lib/{arch}"]


def find_library(entry: str, environ: Mapping[str, str] | None = None) -> Path | None:
    """Where `dlopen(entry)` would find the library (table above); None where it would not."""
    env = os.environ if environ is None else environ
    if "/" in entry:
        return Path(entry) if Path(entry).is_file() else None
    for folder in [d for d in env.get("LD_LIBRARY_PATH", "").split(":") if d]:
        if (Path(folder) / entry).is_file():
            return Path(folder) / entry
    cached = _ld_cache().get(entry)
    if cached and Path(cached).is_file():
        return Path(cached)
    for folder in _default_dirs():
        if (Path(folder) / entry).is_file():
            return Path(folder) / entry
    return None


def usable(plugins: str, environ: Mapping[str, str] | None = None) -> tuple[list[str], list[str]]:
    """The `VACCEL_PLUGINS` entries `dlopen` would find, and the ones it would not (empty entries are skipped,
    as libvaccel's `strtok` skips them)."""
    kept, missing = [], []
    for entry in [e for e in plugins.split(":") if e]:
        (kept if find_library(entry, environ) is not None else missing).append(entry)
    return kept, missing


def served_by(flags: int, loaded: list[str]) -> str | None:
    """The plugin (by name) libvaccel's `plugin_find` gives a session with `flags` over the `loaded` entries
    (None: no plugin, the session cannot start)."""
    names = [plugin_name(entry) for entry in loaded]
    if flags & REMOTE:
        return next((n for n in names if n in VIRTIO), None)
    typed = next((n for n in names if PLUGIN_TYPES.get(n, 0) & flags), None)
    return typed or next((n for n in names if n not in VIRTIO), None)
