"""The live terminal view of the mesh's events (`mapemesh watch`, `make run`): one line per event that matters.

Telemetry is folded into one line per asset at most every `telemetry_every_s`; state-changed events, policy
requests and "nothing to do" verdicts (the loop's plumbing) are shown only with `everything`.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

PLUMBING = ("io.mapemesh.state.changed.v1", "io.mapemesh.policy.analyze.requested.v1",
            "io.mapemesh.policy.plan.requested.v1")
_TELEMETRY_SHOWN = ("node_cpu_utilization", "node_cpu_frequency_hz", "node_memory_used_ratio", "node_rapl_power_w",
                    "latency_ms")


def _short(value: Any, width: int = 90) -> str:
    text = value if isinstance(value, str) else json.dumps(value, sort_keys=True, default=str)
    return text if len(text) <= width else text[:width - 1] + "…"


def _id(value: Any) -> str:
    return str(value or "-")[:8]


def _metric(name: str, value: float) -> str:
    if name.endswith("_hz"):
        return f"{name.removesuffix('_hz')} {value / 1e9:.2f} GHz"
    if name.endswith("_utilization") or name.endswith("_ratio"):
        return f"{name} {value * 100 if value <= 1 else value:.0f}%"
    return f"{name} {value:g}"


def _flat(doc: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(doc, dict) and doc:
        out: dict[str, Any] = {}
        for k, v in doc.items():
            out.update(_flat(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    return {prefix: doc}


def _value(key: str, value: Any) -> str:
    if isinstance(value, int | float) and not isinstance(value, bool) and key.endswith("_hz"):
        return f"{value / 1e9:.2f} GHz"
    return _short(value, 24)


def _changes(before: Any, after: Any, shown: int = 3) -> str:
    """What differs between a knob's values before and after: `path old -> new`, the first few; a change that
    is the same for every CPU (or other numbered item) is one `cpus.*.x` entry."""
    old, new = _flat(before), _flat(after)
    groups: dict[str, set[tuple[str, str]]] = {}
    for k in sorted(set(old) | set(new)):
        if old.get(k) != new.get(k):
            pattern = ".".join("*" if part.isdigit() else part for part in k.split("."))
            groups.setdefault(pattern, set()).add((_value(k, old.get(k)), _value(k, new.get(k))))
    changed = [(p, c) for p, values in groups.items() if len(values) == 1 for c in values]
    changed += [(k, (_value(k, old.get(k)), _value(k, new.get(k)))) for p, values in groups.items()
                if len(values) > 1 for k in sorted(set(old) | set(new))
                if old.get(k) != new.get(k) and ".".join("*" if s.isdigit() else s for s in k.split(".")) == p]
    if not changed:
        return "no change"
    parts = [f"{k} {a} -> {b}" for k, (a, b) in changed[:shown]]
    return ", ".join(parts) + (f" (+{len(changed) - shown} more)" if len(changed) > shown else "")


def _deploy_requested(d: dict[str, Any]) -> str:
    where = {**({"clusters": d["placement"]} if d.get("placement") else {}),
             **({"nodes": d["nodes"]} if d.get("nodes") else {})}
    return f"{d.get('app_id')}: place {_short(where)}"


def _telemetry(d: dict[str, Any]) -> str:
    latest: dict[str, float] = {}
    for m in d.get("metrics") or []:
        if isinstance(m, dict) and "name" in m:
            latest[str(m["name"])] = float(m.get("value", 0))
    chosen = [n for n in _TELEMETRY_SHOWN if n in latest] or sorted(latest)[:3]
    more = len(latest) - len(chosen)
    return (f"{d.get('asset')}: " + ", ".join(_metric(n, latest[n]) for n in chosen)
            + (f" (+{more} more)" if more > 0 else ""))


_FORMATS: dict[str, tuple[str, Callable[[dict[str, Any]], str]]] = {
    "io.mapemesh.telemetry.reported.v1": ("telemetry", _telemetry),
    "io.mapemesh.state.changed.v1": ("monitor", lambda d: f"{d.get('asset')}: {', '.join(d.get('changed') or [])}"),
    "io.mapemesh.policy.analyze.requested.v1": ("analyze", lambda d: f"ask policy {d.get('policy')} about "
                                                                     f"{d.get('asset')}"),
    "io.mapemesh.policy.analyze.replied.v1": ("analyze", lambda d: f"policy {d.get('policy')} on {d.get('asset')}: "
                                              + (f"error {d.get('error')}" if d.get("error") else
                                                 ("needs a new plan" if d.get("verdict") else "nothing to do"))),

    "io.mapemesh.policy.plan.requested.v1": ("plan", lambda d: f"ask policy {d.get('policy')} for a plan for "
                                                               f"{d.get('asset')}"),
    "io.mapemesh.policy.plan.replied.v1": ("plan", lambda d: f"policy {d.get('policy')} on {d.get('asset')}: "
                                           + (f"error {d.get('error')}" if d.get("error") else
                                              _short(d.get("plan") or {}))),
    "io.mapemesh.plan.proposed.v1": ("plan", lambda d: f"plan {_id(d.get('plan_id'))} by {d.get('policy')} for "
                                                       f"{d.get('asset')}: {_short(d.get('mechanisms'))}"),
    "io.mapemesh.plan.scheduled.v1": ("schedule", lambda d: f"plan {_id(d.get('plan_id'))} ({d.get('policy')}) "
                                                            f"scheduled in cycle {d.get('cycle')}"),
    "io.mapemesh.plan.discarded.v1": ("schedule", lambda d: f"plan {_id(d.get('plan_id'))} ({d.get('policy')}) "
                                                            f"discarded: {d.get('reason')}"),
    "io.mapemesh.knob.apply.v1": ("execute", lambda d: f"{d.get('knob')} on {d.get('node')}: "
                                                       f"{_short(d.get('command'))}"),
    "io.mapemesh.knob.applied.v1": ("knob", lambda d: f"{d.get('node')} {d.get('knob')}: "
                                    + ("already in effect" if d.get("noop") else _changes(d.get("before"),
                                                                                          d.get("after")))),
    "io.mapemesh.knob.failed.v1": ("knob", lambda d: f"{d.get('node')} {d.get('knob')} FAILED ({d.get('code')}): "
                                                     f"{d.get('error')}"),
    "io.mapemesh.deploy.requested.v1": ("deploy", lambda d: _deploy_requested(d)),
    "io.mapemesh.deploy.status.v1": ("deploy", lambda d: f"{d.get('app_id')}: {d.get('status')} "
                                                         f"{','.join(d.get('clusters') or [])} "
                                                         f"({d.get('objects', 0)} objects)"),
    "io.mapemesh.app.submitted.v1": ("api", lambda d: f"{d.get('kind', 'application')} {d.get('app_id')} "
                                                      "submitted"),
    "io.mapemesh.app.removed.v1": ("api", lambda d: f"{d.get('app_id')} removed"),
    "io.mapemesh.infra.registered.v1": ("api", lambda d: f"{d.get('kind')} {d.get('infra_id')} registered"),
    "io.mapemesh.infra.unregistered.v1": ("api", lambda d: f"{d.get('infra_id')} unregistered"),
    "io.mapemesh.mode.changed.v1": ("api", lambda d: f"mode {d.get('previous')} -> {d.get('mode')}"
                                    + (" (manual override)" if d.get("manual_override") else "")),
    "io.mapemesh.faredge.step.v1": ("faredge", lambda d: f"{d.get('app_id')}/{d.get('component')} on "
                                                         f"{d.get('device')} (instance {d.get('instance')}): "
                                                         f"{d.get('step')} " + ("ok" if d.get("ok") else
                                                                                f"FAILED: {d.get('detail')}")),
    "io.mapemesh.mqtt.refused.v1": ("mqtt", lambda d: f"message on {d.get('topic')} refused: {d.get('reason')}"),
}


class LiveView:
    """Turns structured CloudEvents (dicts) into lines; None for what is not shown."""

    def __init__(self, everything: bool = False, telemetry_every_s: float = 5.0,
                 clock: Callable[[], float] = time.monotonic):
        self.everything = everything
        self.telemetry_every_s = telemetry_every_s
        self.clock = clock
        self._telemetry_shown: dict[str, float] = {}

    def line(self, event: dict[str, Any]) -> str | None:
        kind = str(event.get("type", ""))
        data = event.get("data")
        if not isinstance(data, dict):
            data = {}
        if not self.everything and (kind in PLUMBING or (kind == "io.mapemesh.policy.analyze.replied.v1" and
                                                         not data.get("verdict") and not data.get("error"))):
            return None
        if kind == "io.mapemesh.telemetry.reported.v1" and not self.everything:
            asset, now = str(data.get("asset")), self.clock()
            if now - self._telemetry_shown.get(asset, float("-inf")) < self.telemetry_every_s:
                return None
            self._telemetry_shown[asset] = now
        stage, describe = _FORMATS.get(kind, (kind.removeprefix("io.mapemesh.").split(".")[0] or "event",
                                              lambda d: f"{event.get('type')} from {event.get('source')}"))
        try:
            text = describe(data)
        except (TypeError, ValueError, AttributeError):  # an event that does not fit its schema: show it raw
            text = _short(data)
        at = str(event.get("time") or "")[11:19] or time.strftime("%H:%M:%S")
        return f"{at}  {stage:<9} {text}"
