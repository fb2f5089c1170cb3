"""Environment a Service's function processes get from outside its manifest, and the hook that gives it.

The local host asks an `EnvHook` what extra environment each Service's processes get, over the Service's own
env and under what Knative sets (`K_SERVICE`, ...). It polls `changed()` every `host.SCALE_EVERY_S` and, when
it says yes, asks again for every Service: those whose env differs restart their processes with it (the
running ones finish what they took, no request fails for the switch).

| method | returns | the host calls it |
|---|---|---|
| `env_for(spec)` | the extra env for the Service's processes (`{}`: none) | when a Service starts, and for every |
| | | Service after `changed()` said yes |
| `changed()` | whether `env_for` may answer differently than at | every poll: it must be cheap (a `stat`, |
| | the last call of `changed` | not a read) |

`env_for` may raise: that Service keeps the env it has (a Service just started: its own). A poll where it
raised for some Service is tried again at the next poll, whatever `changed()` says then.

The core knows no implementation: the CLI (`mapemesh up`) gives the host the one for the vAccelPlugin knob's
choices (`VaccelEnv` in `runtimes/vaccel_hook.py`); without a hook, a Service runs with its own env only.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from mapemesh.serving.spec import ServiceSpec


@runtime_checkable
class EnvHook(Protocol):
    """Extra environment per Service, and a cheap poll for when it changes."""

    def env_for(self, spec: ServiceSpec) -> dict[str, str]:
        """The env the Service's function processes get over their own."""
        ...

    def changed(self) -> bool:
        """Whether `env_for` may answer differently since the last call of `changed`."""
        ...
