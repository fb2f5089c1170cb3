"""The local function host's environment hook for the vAccelPlugin knob's choices.

The knob (`mapemesh.node_shim.knobs.vaccel`) writes each accelerated function's plugin to
DATA_DIR/vaccel-plugins.json (`vaccel.CHOICES_FILE`); `VaccelEnv` gives the host the environment for it, so the
host restarts the function's processes with the plugin (`mapemesh.serving.envhook` says how). `mapemesh up`
passes it to the host; the core imports nothing from here.

| `VaccelEnv` method | returns |
|---|---|
| `env_for(spec)` | `vaccel.plugin_env` for the Service's plugin choice when it is an accelerated function (label |
| | `mapemesh.dev/accel: NAME`) with a choice in the file; else `{}` (the Service's own env) |
| `changed()` | whether the file's inode, mtime or size differ from the last call's (a `stat`: cheap to poll) |

`accel_functions(services)` lists the accelerated functions among a host's Services, name -> {service,
priority}: the vAccelPlugin knob's `functions` option. `fpga_functions(services)` lists those that use the FPGA
(label `mapemesh.dev/fpga`: the partial region they use, or `fabric`), namespace/name -> {service, region}: what
the FPGABitstream knob drains before it reconfigures the fabric (keyed as the host keys them, so that two Services
of one name in two namespaces are both drained).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from mapemesh.runtimes import vaccel
from mapemesh.serving.spec import ServiceSpec

FPGA_LABEL = "mapemesh.dev/fpga"
"""A Service that uses the FPGA: the value names its partial region (DFX), or `fabric` for the whole fabric."""


class VaccelEnv:
    """The vAccel plugin environment of each accelerated function, from the vAccelPlugin knob's choices."""

    def __init__(self, choices: Path):
        self.choices = choices
        """DATA_DIR/vaccel-plugins.json: each accelerated function's vAccel plugin (the vAccelPlugin knob's)."""
        self._seen: tuple[int, int, int] | None = None

    @classmethod
    def in_data(cls, data: Path) -> VaccelEnv:
        """The hook for the choices in the data directory `data`."""
        return cls(data / vaccel.CHOICES_FILE)

    def env_for(self, spec: ServiceSpec) -> dict[str, str]:
        """The env an accelerated function gets for its vAccel plugin choice (none until the knob sets one)."""
        name = spec.labels.get(vaccel.ACCEL_LABEL)
        if name is None:
            return {}
        choice = vaccel.read_choices(self.choices).get(name)
        return vaccel.plugin_env(choice["plugin"], choice.get("rpc_address")) if choice else {}

    def changed(self) -> bool:
        """Whether the choices file was written, replaced or removed since the last call."""
        try:
            stat = self.choices.stat()
            seen: tuple[int, int, int] | None = (stat.st_ino, stat.st_mtime_ns, stat.st_size)
        except FileNotFoundError:
            seen = None
        if seen == self._seen:
            return False
        self._seen = seen
        return True


def accel_functions(services: Mapping[str, ServiceSpec]) -> dict[str, dict[str, Any]]:
    """The accelerated functions among `services` (namespace/name -> spec): name -> {service, priority}."""
    return {name: {"service": key, "priority": spec.priority} for key, spec in services.items()
            if (name := spec.labels.get(vaccel.ACCEL_LABEL))}


def fpga_functions(services: Mapping[str, ServiceSpec]) -> dict[str, dict[str, Any]]:
    """The Services among `services` that use the FPGA: namespace/name -> {service, region}."""
    return {spec.key: {"service": key, "region": region} for key, spec in services.items()
            if (region := spec.labels.get(FPGA_LABEL))}
