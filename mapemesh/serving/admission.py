"""Knative Serving's admission rules for a `Service`, with Knative's own messages, under a cluster's config.

A cluster's webhook (`validation.webhook.serving.knative.dev`) refuses a Service that breaks one of these rules
with the message `check_service` gives; the config comes from the `config-autoscaler`, `config-defaults` and
`config-features` ConfigMaps of `knative-serving` (`KnativeConfig.from_objects`), Knative's stock values where
a key is not set. Sources (knative/serving): A = pkg/apis/autoscaling/annotation_validation.go,
M = pkg/apis/serving/metadata_validation.go, R = pkg/apis/serving/v1/revision_validation.go,
F = pkg/apis/serving/fieldmask.go, K = pkg/apis/serving/k8s_validation.go.

| rule                                                                   | source                        |
|------------------------------------------------------------------------|-------------------------------|
| no `autoscaling.knative.dev/*` on the Service's own metadata           | M ValidateHasNoAutoscaling... |
| initial-scale an integer >= 0; 0 only with `allow-zero-initial-scale`  | A validateInitialScale        |
| min-scale, max-scale int32 >= 0; max >= min unless max is 0;           | A validateMinMaxScale,        |
| max-scale within `max-scale-limit` when one is set                     | validateMaxScaleWithinLimit   |
| window a Go duration in 6s..1h, whole seconds                          | A validateWindow              |
| scale-to-zero-pod-retention-period a Go duration in 0..1h              | A validateLastPodRetention    |
| scale-down-delay a Go duration in 0..1h, whole seconds                 | A validateScaleDownDelay      |
| containerConcurrency in 0..`container-concurrency-max-limit`           | M ValidateContainerConcurrency|
| timeoutSeconds in 0..`max-revision-timeout-seconds`                    | R validateTimeoutSeconds      |
| pod fields behind `config-features` flags (runtimeClassName, affinity, | F PodSpecMask                 |
| nodeSelector, tolerations, securityContext, ...), others never         |                               |
| env `valueFrom.fieldRef` only with `kubernetes.podspec-fieldref`       | F EnvVarSourceMask            |
| emptyDir, hostPath, PVC volumes behind their flags; secret, configMap  | K validateVolume              |
| and projected volumes mounted read-only; every volume mounted          |                               |
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from mapemesh.durations import InvalidDuration, parse_go

A = "autoscaling.knative.dev/"
SERVING_NAMESPACE = "knative-serving"
INT32_MAX = 2**31 - 1
WINDOW_MIN_S, WINDOW_MAX_S = 6.0, 3600.0

STOCK_FEATURES = {"multi-container": "enabled", "kubernetes.podspec-volumes-emptydir": "enabled"}
"""Knative Serving's flags that are on in a stock install (pkg/apis/config/features.go); every other is disabled."""
GATED_POD_FIELDS = {
    "runtimeClassName": "kubernetes.podspec-runtimeclassname", "affinity": "kubernetes.podspec-affinity",
    "nodeSelector": "kubernetes.podspec-nodeselector", "tolerations": "kubernetes.podspec-tolerations",
    "topologySpreadConstraints": "kubernetes.podspec-topologyspreadconstraints",
    "hostAliases": "kubernetes.podspec-hostaliases", "securityContext": "kubernetes.podspec-securitycontext",
    "priorityClassName": "kubernetes.podspec-priorityclassname", "schedulerName": "kubernetes.podspec-schedulername",
    "dnsPolicy": "kubernetes.podspec-dnspolicy", "dnsConfig": "kubernetes.podspec-dnsconfig",
    "hostNetwork": "kubernetes.podspec-hostnetwork", "hostPID": "kubernetes.podspec-hostpid",
    "hostIPC": "kubernetes.podspec-hostipc", "shareProcessNamespace": "kubernetes.podspec-shareprocessnamespace",
    "initContainers": "kubernetes.podspec-init-containers",
}
KNOWN_FLAGS = {*GATED_POD_FIELDS.values(), *STOCK_FEATURES, "kubernetes.podspec-fieldref",
               "kubernetes.podspec-volumes-hostpath", "kubernetes.podspec-persistent-volume-claim"}
OPEN_POD_FIELDS = {"containers", "volumes", "serviceAccountName", "imagePullSecrets", "enableServiceLinks",
                   "automountServiceAccountToken", "containerConcurrency", "timeoutSeconds",
                   "responseStartTimeoutSeconds", "idleTimeoutSeconds"}


@dataclass(frozen=True, slots=True)
class KnativeConfig:
    """The Knative Serving settings admission depends on; the defaults are a stock install's."""

    allow_zero_initial_scale: bool = False
    initial_scale: int = 1
    max_scale_limit: int = 0
    stable_window_s: float = 60.0
    scale_to_zero_grace_period_s: float = 30.0
    revision_timeout_s: int = 300
    max_revision_timeout_s: int = 600
    container_concurrency_max_limit: int = 1000
    allow_container_concurrency_zero: bool = True
    features: Mapping[str, str] = field(default_factory=dict)
    errors: tuple[str, ...] = ()
    """Problems in the ConfigMaps themselves (Knative would not start with them; the stock value is used)."""

    def enabled(self, flag: str) -> bool:
        """Whether a `config-features` flag admits its field ("enabled" or "allowed")."""
        return self.features.get(flag, STOCK_FEATURES.get(flag, "disabled")) in ("enabled", "allowed")

    @classmethod
    def from_objects(cls, objects: Iterable[Mapping[str, Any]]) -> KnativeConfig:
        """The config from the `knative-serving` ConfigMaps among `objects` (kubectl apply merges their keys into
        the stock ones, so a key not given keeps its stock value)."""
        maps: dict[str, Mapping[str, Any]] = {}
        for obj in objects:
            meta = obj.get("metadata") or {}
            if obj.get("kind") == "ConfigMap" and meta.get("namespace") == SERVING_NAMESPACE:
                maps[str(meta.get("name"))] = obj.get("data") or {}
        errors: list[str] = []
        values: dict[str, Any] = {}
        auto, defaults = maps.get("config-autoscaler", {}), maps.get("config-defaults", {})
        for key, attr, kind in (("allow-zero-initial-scale", "allow_zero_initial_scale", bool),
                                ("initial-scale", "initial_scale", int), ("max-scale-limit", "max_scale_limit", int),
                                ("stable-window", "stable_window_s", "duration"),
                                ("scale-to-zero-grace-period", "scale_to_zero_grace_period_s", "duration")):
            if key in auto:
                _convert(values, errors, "config-autoscaler", key, attr, kind, auto[key])
        for key, attr, kind in (("revision-timeout-seconds", "revision_timeout_s", int),
                                ("max-revision-timeout-seconds", "max_revision_timeout_s", int),
                                ("container-concurrency-max-limit", "container_concurrency_max_limit", int),
                                ("allow-container-concurrency-zero", "allow_container_concurrency_zero", bool)):
            if key in defaults:
                _convert(values, errors, "config-defaults", key, attr, kind, defaults[key])
        features = {}
        for key, value in (maps.get("config-features") or {}).items():
            text = str(value).strip().lower()
            if text in ("enabled", "disabled", "allowed"):
                features[key] = text
            elif key in KNOWN_FLAGS:  # a flag admission reads, with a value Knative would not parse
                errors.append(f"config-features: cannot parse the feature flag '{key}' = '{value}'")
            # other keys (secure-pod-defaults: AllowRootBounded, queueproxy.*, _example) are not flags here
        config = cls(**values, features=features)
        if config.initial_scale < 0 or (config.initial_scale == 0 and not config.allow_zero_initial_scale):
            errors.append(f"config-autoscaler: initial-scale = {config.initial_scale}, must be at least 0 (or at "
                          "least 1 when allow-zero-initial-scale is false)")
            values.pop("initial_scale")
        if not WINDOW_MIN_S <= config.stable_window_s <= WINDOW_MAX_S:
            errors.append(f"config-autoscaler: stable-window = {auto.get('stable-window')}, must be in [6s; 1h0m0s] "
                          "range")
            values.pop("stable_window_s")
        if config.revision_timeout_s > config.max_revision_timeout_s:
            errors.append(f"config-defaults: revision-timeout-seconds ({config.revision_timeout_s}) cannot be greater "
                          f"than max-revision-timeout-seconds ({config.max_revision_timeout_s})")
            values.pop("revision_timeout_s", None)
            values.pop("max_revision_timeout_s", None)
        return cls(**values, features=features, errors=tuple(errors))


def _convert(values: dict[str, Any], errors: list[str], where: str, key: str, attr: str, kind: object,
             raw: object) -> None:
    text = str(raw).strip()
    try:
        if kind is bool:
            if text.lower() not in ("true", "false"):
                raise ValueError
            values[attr] = text.lower() == "true"
        elif kind is int:
            values[attr] = int(text)
        else:
            values[attr] = parse_go(text)
    except (ValueError, InvalidDuration):
        errors.append(f"{where}: {key} = {raw!r} is not a valid {'duration' if kind == 'duration' else kind.__name__}")


def check_service(service: Mapping[str, Any], config: KnativeConfig | None = None,
                  min_window_s: float = WINDOW_MIN_S) -> list[str]:
    """Knative's messages for every rule `service` breaks under `config` (empty: the webhook admits it).

    `min_window_s` below Knative's 6s is the local host's explicit relaxation (`MAPEMESH_LOCAL_MIN_WINDOW`): windows
    down to it are admitted at millisecond precision; a cluster refuses them."""
    config = config or KnativeConfig()
    errors: list[str] = []
    meta = service.get("metadata") or {}
    for key in sorted(meta.get("annotations") or {}):
        if key.startswith(A.rstrip("/")):
            errors.append(f'invalid key name "{key}": metadata.annotations\nautoscaling annotations must be put '
                          'under "spec.template.metadata.annotations" to work')
    template = (service.get("spec") or {}).get("template") or {}
    annotations = {str(k): str(v) for k, v in ((template.get("metadata") or {}).get("annotations") or {}).items()}
    errors += _annotations(annotations, config, "spec.template.metadata.annotations.", min_window_s)
    errors += _pod_spec(template.get("spec") or {}, config, "spec.template.spec.")
    return errors


def _annotations(annotations: dict[str, str], config: KnativeConfig, at: str,
                 min_window_s: float = WINDOW_MIN_S) -> list[str]:
    errors: list[str] = []
    key = A + "initial-scale"
    if key in annotations:
        raw = annotations[key]
        value = _atoi(raw)
        if value is None:
            errors.append(f"invalid value: {raw}: {at}{key}")
        elif value < 0:
            errors.append(f"invalid value: {raw}: {at}{key} must be greater than 0")
        elif value == 0 and not config.allow_zero_initial_scale:
            errors.append(f"invalid value: {raw}: {at}{key}=0 not allowed by cluster")
    bounds: dict[str, int] = {}
    for name in ("min-scale", "max-scale"):
        key = A + name
        if key not in annotations:
            continue
        raw = annotations[key]
        value = _atoi(raw)
        if value is None:
            errors.append(f"invalid value: {raw}: {at}{key}")
        elif not 0 <= value <= INT32_MAX:
            errors.append(f"expected 0 <= {raw} <= {INT32_MAX}: {at}{key}")
        else:
            bounds[name] = value
    low, high = bounds.get("min-scale", 0), bounds.get("max-scale", 0)
    if high != 0 and high < low:
        errors.append(f"max-scale={high} is less than min-scale={low}: {at}{A}max-scale, {at}{A}min-scale")
    if "max-scale" in bounds and config.max_scale_limit:
        if high > config.max_scale_limit:
            errors.append(f"expected 1 <= {high} <= {config.max_scale_limit}: {at}{A}max-scale")
        if high == 0:
            errors.append(f"max-scale=0 (unlimited), must be less than {config.max_scale_limit}: {at}{A}max-scale")
    relaxed = min_window_s < WINDOW_MIN_S
    for name, low_s, whole in (("window", min_window_s, not relaxed),
                               ("scale-to-zero-pod-retention-period", 0.0, False),
                               ("scale-down-delay", 0.0, True)):
        key = A + name
        if key not in annotations:
            continue
        raw = annotations[key]
        try:
            seconds = parse_go(raw)
        except InvalidDuration:
            errors.append(f"invalid value: {raw}: {at}{key}")
            continue
        if not low_s <= seconds <= WINDOW_MAX_S or (name == "window" and seconds <= 0):
            errors.append(f"expected {_go(low_s)} <= {raw} <= 1h0m0s: {at}{key}")
        elif (whole or (name == "window" and seconds >= WINDOW_MIN_S)) and seconds != math.floor(seconds):
            errors.append(f"must be specified with at most second precision: {at}{key}")
    return errors


def _pod_spec(spec: Mapping[str, Any], config: KnativeConfig, at: str) -> list[str]:
    errors: list[str] = []
    cc = spec.get("containerConcurrency")
    if cc is not None:
        low = 0 if config.allow_container_concurrency_zero else 1
        if isinstance(cc, bool) or not isinstance(cc, int) or not low <= cc <= config.container_concurrency_max_limit:
            errors.append(f"expected {low} <= {cc} <= {config.container_concurrency_max_limit}: "
                          f"{at}containerConcurrency")
    timeout = spec.get("timeoutSeconds")
    if timeout is not None and timeout != 0 and (
            isinstance(timeout, bool) or not isinstance(timeout, int) or not 0 <= timeout
            <= config.max_revision_timeout_s):
        errors.append(f"expected 0 <= {timeout} <= {config.max_revision_timeout_s}: {at}timeoutSeconds")
    for name in spec:
        flag = GATED_POD_FIELDS.get(name)
        if (flag is not None and not config.enabled(flag)) or (flag is None and name not in OPEN_POD_FIELDS):
            errors.append(f"must not set the field(s): {at}{name}")
    containers = spec.get("containers") or []
    if len(containers) > 1 and not config.enabled("multi-container"):
        errors.append(f"multi-container is off, but found {len(containers)} containers")
    mounts: dict[str, bool] = {}
    for c, container in enumerate(containers if isinstance(containers, list) else []):
        for e, env in enumerate((container or {}).get("env") or []):
            source = (env or {}).get("valueFrom") or {}
            for ref in ("fieldRef", "resourceFieldRef"):
                if ref in source and not config.enabled("kubernetes.podspec-fieldref"):
                    errors.append(f"must not set the field(s): {at}containers[{c}].env[{e}].valueFrom.{ref}")
        for mount in (container or {}).get("volumeMounts") or []:
            mounts[str(mount.get("name"))] = mounts.get(str(mount.get("name")), True) and bool(mount.get("readOnly"))
    for v, volume in enumerate(spec.get("volumes") or []):
        name = str((volume or {}).get("name"))
        if "emptyDir" in volume and not config.enabled("kubernetes.podspec-volumes-emptydir"):
            errors.append(f"EmptyDir volume support is disabled, but found EmptyDir volume {name}")
        elif "hostPath" in volume and not config.enabled("kubernetes.podspec-volumes-hostpath"):
            errors.append(f"HostPath volume support is disabled, but found HostPath volume {name}")
        elif "persistentVolumeClaim" in volume and not config.enabled("kubernetes.podspec-persistent-volume-claim"):
            errors.append(f"Persistent volume claim support is disabled, but found persistent volume claim {name}")
        elif not any(k in volume for k in ("secret", "configMap", "projected", "emptyDir", "hostPath",
                                           "persistentVolumeClaim")):
            errors.append(f"must not set the field(s): {at}volumes[{v}]")
        if name not in mounts:
            errors.append(f'volume with name "{name}" not mounted: {at}volumes[{v}].name')
        elif any(k in volume for k in ("secret", "configMap", "projected")) and not mounts[name]:
            errors.append(f"volume mount should be readOnly for this type of volume: {at}containers[*].volumeMounts")
    return errors


def _atoi(raw: str) -> int | None:
    """Go's strconv.Atoi: an optional sign, then ASCII digits; None for anything else."""
    text = raw.strip()
    sign, digits = (text[0], text[1:]) if text[:1] in ("+", "-") else ("", text)
    return int(sign + digits) if digits.isascii() and digits.isdigit() else None


def _go(seconds: float) -> str:
    """Go's Duration.String for the bounds used here (6s, 0s, 100ms, 1.5s)."""
    if seconds == 0:
        return "0s"
    return f"{seconds:g}s" if seconds >= 1 else f"{seconds * 1000:g}ms"
