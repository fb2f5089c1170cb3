"""Knative `Service` manifests (`serving.knative.dev/v1`) as the local host runs them.

A Service the local host runs is one a cluster's webhook admits: `services_from` checks each under Knative's config
as the manifests give it (`config-autoscaler`, `config-defaults`, `config-features` in `knative-serving`, stock
values otherwise; `mapemesh.serving.admission`) and reports a refused one not ready with Knative's message. The
same config gives the defaults a cluster fills in (stable window, revision timeout, initial scale). The one
relaxation is explicit: `MAPEMESH_LOCAL_MIN_WINDOW` (tests and benches) admits windows under Knative's 6s.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from mapemesh import manifests
from mapemesh.durations import parse_go
from mapemesh.serving.admission import WINDOW_MIN_S, KnativeConfig, check_service

SERVING_V1 = "serving.knative.dev/v1"
A = "autoscaling.knative.dev/"
DEFAULT_TARGET = 100  # Knative's default soft concurrency target per instance
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
    return default if raw is None else parse_go(str(raw).strip())  # admission has refused what does not parse


def parse_service(m: manifests.Manifest, config: KnativeConfig | None = None,
                  min_window_s: float = WINDOW_MIN_S) -> ServiceSpec:
    """A ServiceSpec from its manifest, with the defaults `config` gives; InvalidService says what is wrong: the
    messages of Knative's webhook first (`check_service`), then what the local host needs besides."""
    config = config or KnativeConfig()
    refused = check_service(m.body, config, min_window_s)
    if refused:
        raise InvalidService("; ".join(line.replace("\n", " ") for line in refused))
    spec = m.body.get("spec") or {}
    template = spec.get("template") or {}
    annotations = (template.get("metadata") or {}).get("annotations") or {}
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
    timeout = tspec.get("timeoutSeconds") or config.revision_timeout_s  # 0: the default, as Knative defaults it
    return ServiceSpec(
        m.namespace, m.name, source, target, env,
        min_scale=min_scale, max_scale=max_scale,
        initial_scale=_int(annotations, "initial-scale", config.initial_scale),
        target_concurrency=_int(annotations, "target", DEFAULT_TARGET, minimum=1),
        window_s=_duration(annotations, "window", config.stable_window_s),
        retention_s=_duration(annotations, "scale-to-zero-pod-retention-period", 0.0),
        container_concurrency=tspec.get("containerConcurrency", 0), timeout_s=float(timeout),
        runtime_class=tspec.get("runtimeClassName"), image=containers[0].get("image"), origin=m.origin,
        labels={str(k): str(v) for k, v in ((m.body.get("metadata") or {}).get("labels") or {}).items()},
        priority=str(((m.body.get("metadata") or {}).get("annotations") or {}).get("mapemesh.dev/priority",
                                                                                    "normal")))


def services_from(found: manifests.ManifestSet, min_window_s: float = WINDOW_MIN_S,
                  config: KnativeConfig | None = None) -> tuple[dict[str, ServiceSpec], dict[str, str]]:
    """The runnable Services, and the reasons others cannot run ("ns/name" -> reason), under `config` (default: the
    Knative config among `found`'s objects)."""
    config = config or knative_config(found)
    ok: dict[str, ServiceSpec] = {}
    bad: dict[str, str] = {}
    for m in found.of(SERVING_V1, "Service"):
        try:
            ok[m.key] = parse_service(m, config, min_window_s)
        except InvalidService as exc:
            bad[m.key] = str(exc)
    return ok, bad


def knative_config(found: manifests.ManifestSet) -> KnativeConfig:
    """Knative Serving's config as the manifests set it (stock values for keys they do not)."""
    return KnativeConfig.from_objects(m.body for m in found.objects)
