"""Knative `Service` manifests (`serving.knative.dev/v1`) as the local host runs them."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from mapemesh import manifests
from mapemesh.durations import InvalidDuration, parse_go, parse_iso

SERVING_V1 = "serving.knative.dev/v1"
A = "autoscaling.knative.dev/"
DEFAULT_TARGET = 100  # Knative's default soft concurrency target per instance
DEFAULT_TIMEOUT_S = 300.0  # Knative's default revision timeout
DEFAULT_WINDOW_S = 60.0  # Knative's default stable window
LOCAL_MAX_SCALE = 16  # max-scale 0 means "no limit"; one machine has one


class InvalidService(ValueError):
    """A Service the local host cannot run; the message says why."""


@dataclass(frozen=True, slots=True)
class ServiceSpec:
    """One function: where its code is and how it scales."""

    namespace: str
    name: str
    source: str
    target: str
    env: dict[str, str]
    min_scale: int
    max_scale: int
    initial_scale: int
    target_concurrency: int
    window_s: float
    retention_s: float
    container_concurrency: int
    timeout_s: float
    runtime_class: str | None
    image: str | None
    origin: str = field(compare=False)
    """Where the manifest is (moving it in its file does not make a new revision)."""
    labels: dict[str, str] = field(default_factory=dict)
    """The Service's labels (`mapemesh.dev/accel: NAME` marks an accelerated function)."""
    priority: str = "normal"
    """The Service's `mapemesh.dev/priority` annotation (low, normal, high): whom a policy moves first."""

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"

    @property
    def capacity(self) -> int:
        """Requests one process takes at once: containerConcurrency when set (a hard limit), else the target."""
        return self.container_concurrency or self.target_concurrency


def _int(annotations: dict[str, Any], key: str, default: int, minimum: int = 0) -> int:
    raw = annotations.get(A + key)
    if raw is None:
        return default
    try:
        value = int(str(raw))
    except ValueError:
        raise InvalidService(f"annotation {A}{key}: {raw!r} is not an integer") from None
    if value < minimum:
        raise InvalidService(f"annotation {A}{key} must be >= {minimum}, got {value}")
    return value


def _duration(annotations: dict[str, Any], key: str, default: float) -> float:
    raw = annotations.get(A + key)
    if raw is None:
        return default
    text = str(raw).strip()
    try:  # Knative writes Go durations (60s, 1m30s, 500ms); ISO-8601 is accepted too
        return parse_go(text) if not text.startswith("P") else parse_iso(text, A + key)
    except InvalidDuration:
        raise InvalidService(f"annotation {A}{key}: {raw!r} is not a duration (e.g. 60s, 1m30s)") from None


def parse_service(m: manifests.Manifest) -> ServiceSpec:
    """A ServiceSpec from its manifest; InvalidService says what is wrong."""
    spec = m.body.get("spec") or {}
    template = spec.get("template") or {}
    tmeta = template.get("metadata") or {}
    annotations = {**((m.body.get("metadata") or {}).get("annotations") or {}), **(tmeta.get("annotations") or {})}
    tspec = template.get("spec") or {}
    containers = tspec.get("containers") or []
    if not containers or not isinstance(containers[0], dict):
        raise InvalidService("spec.template.spec.containers[0] is required")
    env = {str(e.get("name")): str(e.get("value", "")) for e in containers[0].get("env") or []
           if isinstance(e, dict) and e.get("name")}
    source, target = env.get("FUNCTION_SOURCE"), env.get("FUNCTION_TARGET")
    if not source or not target:
        raise InvalidService("the container needs env FUNCTION_SOURCE and FUNCTION_TARGET to run locally")
    min_scale = _int(annotations, "min-scale", 0)
    max_scale = _int(annotations, "max-scale", 0) or LOCAL_MAX_SCALE
    if max_scale < max(min_scale, 1):
        raise InvalidService(f"max-scale {max_scale} is below min-scale {min_scale}")
    cc = tspec.get("containerConcurrency", 0)
    if not isinstance(cc, int) or cc < 0:
        raise InvalidService("spec.template.spec.containerConcurrency must be a non-negative integer")
    timeout = tspec.get("timeoutSeconds", DEFAULT_TIMEOUT_S)
    if not isinstance(timeout, int | float) or timeout <= 0:
        raise InvalidService("spec.template.spec.timeoutSeconds must be positive")
    window = _duration(annotations, "window", DEFAULT_WINDOW_S)
    if window <= 0:
        raise InvalidService(f"annotation {A}window must be positive")
    return ServiceSpec(
        m.namespace, m.name, source, target, env,
        min_scale=min_scale, max_scale=max_scale,
        initial_scale=_int(annotations, "initial-scale", 1),
        target_concurrency=_int(annotations, "target", DEFAULT_TARGET, minimum=1),
        window_s=window,
        retention_s=_duration(annotations, "scale-to-zero-pod-retention-period", 0.0),
        container_concurrency=cc, timeout_s=float(timeout),
        runtime_class=tspec.get("runtimeClassName"), image=containers[0].get("image"), origin=m.origin,
        labels={str(k): str(v) for k, v in ((m.body.get("metadata") or {}).get("labels") or {}).items()},
        priority=str(((m.body.get("metadata") or {}).get("annotations") or {}).get("mapemesh.dev/priority",
                                                                                    "normal")))


def services_from(found: manifests.ManifestSet) -> tuple[dict[str, ServiceSpec], dict[str, str]]:
    """The runnable Services, and the reasons others cannot run ("ns/name" -> reason)."""
    ok: dict[str, ServiceSpec] = {}
    bad: dict[str, str] = {}
    for m in found.of(SERVING_V1, "Service"):
        try:
            ok[m.key] = parse_service(m)
        except InvalidService as exc:
            bad[m.key] = str(exc)
    return ok, bad
