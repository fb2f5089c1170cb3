"""The `vAccelPlugin` knob: which vAccel plugin each accelerated function on this node uses.

Commands:
- `{"function": "digits", "plugin": "cpu" | "gpu" | "remote", "rpc_address": "tcp://HOST:PORT"}` (the address
  only, and always, with `remote`: tcp://, unix:// or vsock://);
- `{"functions": {"digits": {"plugin": "cpu"}, "other": {"plugin": "gpu"}}}` to set several at once;
- `{"command": "reset"}`: every function back to its Service's own setting.

The choices are kept in DATA_DIR/vaccel-plugins.json (written atomically, so they outlive a restart). On this
machine the local function host restarts the function's processes with the plugin's environment
(`mapemesh.runtimes.vaccel.plugin_env`) between requests: the processes it has finish what they took, new
ones serve what comes next, and no request fails for the switch. On a cluster the same choice is rendered into
the function's Service (env, and urunc's vAccel annotations): `mapemesh.runtimes.choice.with_plugin`.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mapemesh.node_shim.knobs.base import Command, HardwareError, InvalidCommand, check_keys
from mapemesh.runtimes import vaccel

_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
_ADDRESS = re.compile(r"^(tcp://[^\s/:]+:\d{1,5}|unix:///\S+|vsock://\d+:\d{1,5})$")


def _valid_address(address: Any) -> bool:
    """A vAccel RPC address: tcp://HOST:PORT, unix:///PATH or vsock://CID:PORT, the port within 1..65535."""
    if not isinstance(address, str) or not _ADDRESS.fullmatch(address):
        return False
    return address.startswith("unix://") or 1 <= int(address.rsplit(":", 1)[1]) <= 65535


class VAccelPlugin:
    """Per-function vAccel plugin choices, in a file the local host follows."""

    name = "vAccelPlugin"

    def __init__(self, path: Path, functions: Callable[[], dict[str, dict[str, Any]]] | None = None,
                 on_change: Callable[[], Any] | None = None, gpu_present: Callable[[], bool] | None = None):
        self.path = path
        self.functions = functions
        """The accelerated functions this node runs, name -> {priority, service}; None: not known here."""
        self.on_change = on_change
        self.gpu_present = gpu_present or (lambda: False)
        self.changed = False

    def get_options(self) -> dict[str, Any]:
        known = self.functions() if self.functions is not None else None
        return {"plugins": list(vaccel.PLUGINS), "functions": known, "gpu": self.gpu_present(),
                "commands": ["set", "reset"],
                "rpc_address": "tcp://HOST:PORT, unix:///PATH or vsock://CID:PORT (remote only)"}

    def get_state(self) -> dict[str, Any]:
        return {"functions": vaccel.read_choices(self.path)}

    def apply(self, command: Command) -> dict[str, Any]:
        options = self.get_options()
        check_keys(command, {"command", "function", "plugin", "rpc_address", "functions"}, options)
        action = command.get("command", "set")
        before = vaccel.read_choices(self.path)
        if action == "reset":
            check_keys(command, {"command"}, options)
            after: dict[str, dict[str, Any]] = {}
        elif action == "set":
            if "functions" in command:
                if {"function", "plugin", "rpc_address"} & set(command):
                    raise InvalidCommand("give either `functions` or `function` with `plugin`, not both",
                                         options=options)
                wanted = command["functions"]
                if not isinstance(wanted, dict) or not wanted:
                    raise InvalidCommand("functions must be a non-empty object: name -> {plugin, rpc_address}",
                                         options=options)
            else:
                wanted = {command.get("function"): {k: command[k] for k in ("plugin", "rpc_address")
                                                    if k in command}}
            after = dict(before)
            for name, choice in wanted.items():
                after[self._check_name(name, options)] = self._check_choice(name, choice, options)
        else:
            raise InvalidCommand(f"command must be 'set' or 'reset', not {action!r}", options=options)
        self.changed = after != before
        if self.changed:
            self._write(after)
            if self.on_change is not None:
                self.on_change()
        return self.get_state()

    def _check_name(self, name: Any, options: dict[str, Any]) -> str:
        if not isinstance(name, str) or not _NAME.fullmatch(name):
            raise InvalidCommand(f"function {name!r} is not a function name (lowercase letters, digits, '-')",
                                 options=options)
        known = options.get("functions")
        if known is not None and name not in known:
            raise InvalidCommand(f"no accelerated function {name!r} here (there are: {', '.join(sorted(known))})",
                                 options=options)
        return name

    def _check_choice(self, name: str, choice: Any, options: dict[str, Any]) -> dict[str, Any]:
        if not isinstance(choice, dict):
            raise InvalidCommand(f"{name}: a choice is an object {{plugin, rpc_address}}", options=options)
        unknown = sorted(set(choice) - {"plugin", "rpc_address"})
        if unknown:
            raise InvalidCommand(f"{name}: unknown key(s) {', '.join(unknown)}", options=options)
        plugin = choice.get("plugin")
        if plugin not in vaccel.PLUGINS:
            raise InvalidCommand(f"{name}: plugin must be one of {', '.join(vaccel.PLUGINS)}, not {plugin!r}",
                                 options=options)
        address = choice.get("rpc_address")
        if plugin == "remote":
            if not _valid_address(address):
                raise InvalidCommand(f"{name}: the remote plugin needs rpc_address tcp://HOST:PORT, unix:///PATH "
                                     f"or vsock://CID:PORT, not {address!r}", options=options)
            return {"plugin": plugin, "rpc_address": address}
        if address is not None:
            raise InvalidCommand(f"{name}: rpc_address goes with the remote plugin only", options=options)
        return {"plugin": plugin}

    def _write(self, functions: dict[str, dict[str, Any]]) -> None:
        from mapemesh.files import write_atomically

        try:
            write_atomically(self.path, json.dumps({"functions": functions, "at": time.time()}, indent=1,
                                                   sort_keys=True) + "\n")
        except OSError as exc:
            raise HardwareError(f"cannot write {self.path}: {exc}") from exc
