"""Settings shared by every mapemesh component: one object, filled from flags and environment variables.

Each field has a `MAPEMESH_*` environment variable (Knative's own, `K_SINK` and `K_SERVICE`, keep their names); a
command-line flag overrides it. Defaults stay on loopback. No host, port, path or secret is written anywhere else in
the code, and no other module reads these variables: a process reads them once, as `current()`.

| call              | what it gives                                                                            |
|-------------------|------------------------------------------------------------------------------------------|
| `Settings.load()` | a new object: defaults, then the environment, then the overrides that are not None (flags) |
| `current()`       | this process's object, loaded on first use and kept                                      |
| `reset()`         | forget it: for code that changes its own environment (the fork server gives each function |
|                   | process its Service's env; `mapemesh up` names the identity folder), and for tests        |

Variables of other software stay with the code that hands them on: `OTEL_*` (the OpenTelemetry SDK reads them
itself; `mapemesh.tracing` only asks whether it exports), `VACCEL_*` (libvaccel's, which `runtimes/vaccel.py` edits
before loading it), `FUNCTION_SOURCE`/`FUNCTION_TARGET` (functions-framework's), `POD_*` (the downward API the node
shim is given). `tests/test_layers.py` fails on any other environment read.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from mapemesh.durations import InvalidDuration, parse_go
from mapemesh.eventing.ingress import DEFAULT_MAX_EVENT_BYTES, MIN_MAX_EVENT_BYTES
from mapemesh.serving.admission import WINDOW_MIN_S

ENV_PREFIX = "MAPEMESH_"
DEFAULT_DATA = Path(".mapemesh")
"""The one default data directory (MAPEMESH_DATA unset), relative to the working directory."""


def _env(name: str) -> dict[str, str]:
    return {"env": name}


@dataclass(frozen=True, slots=True)
class Settings:
    """Where mapemesh keeps its data, where it reads manifests, and where it listens."""

    data: Path = DEFAULT_DATA
    """MAPEMESH_DATA: state, the durable event log, endpoints.json and the API token."""
    manifests: Path = Path("knative")
    """MAPEMESH_MANIFESTS: the Knative manifests the embedded mesh runs."""
    host: str = "127.0.0.1"
    """MAPEMESH_HOST: the address servers bind to."""
    broker_port: int = 8080
    """MAPEMESH_BROKER_PORT: the broker ingress port (0 picks a free one)."""
    serving_port: int = 8081
    """MAPEMESH_SERVING_PORT: the local function host's port (0 picks a free one)."""
    max_event_bytes: int = DEFAULT_MAX_EVENT_BYTES
    """MAPEMESH_MAX_EVENT_BYTES: the largest request body the ingress accepts (at least 64 KiB)."""
    durability: str = "fsync"
    """MAPEMESH_DURABILITY: `fsync` (a 202 survives power loss) or `os` (it survives a process crash)."""
    activator_queue: int = 1000
    """MAPEMESH_ACTIVATOR_QUEUE: requests the function host holds per Service before answering 429."""
    state: str = "sqlite:"
    """MAPEMESH_STATE: the state store, `sqlite:` (DATA_DIR/state.db), `sqlite:///PATH` or `redis://HOST:PORT/DB`."""
    log_retention_s: int = 60
    """MAPEMESH_LOG_RETENTION_S: seconds a fully handled event stays in the log before compaction."""
    node: str = ""
    """MAPEMESH_NODE: this machine's node name for the node shim `mapemesh up` starts (default: the hostname)."""
    node_shim_port: int = 8082
    """MAPEMESH_NODE_SHIM_PORT: the node shim's port under `mapemesh up` (0 picks a free one; -1: no shim)."""
    sysfs_root: str = ""
    """MAPEMESH_SYSFS_ROOT: the tree the node shim's knobs drive (default `/`, or a simulated tree when `/sys`
    has no cpufreq)."""
    telemetry_interval_s: float = 5.0
    """MAPEMESH_TELEMETRY_INTERVAL_S: the node shim's first reporting interval (a knob afterwards)."""
    api_port: int = 8083
    """MAPEMESH_API_PORT: the northbound API's port under `mapemesh up` (0 picks a free one; -1: no API)."""
    api_url: str = ""
    """MAPEMESH_API_URL: the northbound API the CLI talks to (a cluster's, through `kubectl port-forward`, say);
    default: the API of the mesh recorded in DATA_DIR."""
    api_token: str = ""
    """MAPEMESH_API_TOKEN: the bearer token for MAPEMESH_API_URL (default: DATA_DIR/api.token)."""
    mqtt_url: str = ""
    """MAPEMESH_MQTT_URL: an MQTT broker (`mqtt://HOST[:PORT]`); when set, `mapemesh up` starts the MQTT bridge to it
    (far-edge devices through NextGenGW, CloudEvents over MQTT)."""
    mqtt_topics: str = ""
    """MAPEMESH_MQTT_TOPICS: the MQTT topics (comma-separated) whose messages the bridge `mapemesh up` starts takes
    in as CloudEvents (default none: only NextGenGW's)."""
    storage_locations: str = ""
    """MAPEMESH_STORAGE_LOCATIONS: the storage gateway's locations file; when set, `mapemesh up` starts the gateway
    (S3 over erasure-coded fragments in those locations)."""
    storage_port: int = 8086
    """MAPEMESH_STORAGE_PORT: the storage gateway's S3 port (0 picks a free one)."""
    storage_name: str = "storage-gateway"
    """MAPEMESH_STORAGE_NAME: the storage gateway's node name in the mesh."""
    identities: bool = True
    """MAPEMESH_IDENTITIES: identities on the event path (`mapemesh.identity`): `mapemesh up` makes a certificate
    authority in DATA_DIR/identity and an identity per component, commands go signed and are refused unless an
    allowed identity signed them. `off` for a development mesh that trusts every sender."""
    accept_batch: bool = False
    """MAPEMESH_ACCEPT_BATCH: also take `application/cloudevents-batch+json` requests at the ingress, a mapemesh-only
    extension; off by default because Knative's broker ingress takes one event per request and answers 400 to a
    batch."""
    local_min_window: str = ""
    """MAPEMESH_LOCAL_MIN_WINDOW: the shortest `autoscaling.knative.dev/window` the local function host admits, a Go
    duration under 6s (`100ms`, say), for tests and benches that watch scale to zero. Default: Knative's 6s, and
    whole seconds, as a cluster's webhook; a Service that needs this setting is refused by a cluster."""

    # -- what a function process is given (by the local host, or a Knative Service's env) --
    k_sink: str = field(default="", metadata=_env("K_SINK"))
    """K_SINK: where a function's extra events go (Knative's SinkBinding contract; the broker's URL with namespace
    and name)."""
    k_service: str = field(default="", metadata=_env("K_SERVICE"))
    """K_SERVICE: the Knative Service this process serves (set by Knative, and by the local host)."""
    broker_url: str = ""
    """MAPEMESH_BROKER_URL: the broker the local host names to its functions (its default/default is the sink when
    K_SINK is unset)."""
    identity: str = ""
    """MAPEMESH_IDENTITY: this process's identity (its key in the identity folder signs what it sends)."""
    identity_dir: str = ""
    """MAPEMESH_IDENTITY_DIR: the identity folder (default DATA_DIR/identity)."""
    command_policy: str = ""
    """MAPEMESH_COMMAND_POLICY: the file of which identities may send which command (default: the one shipped in
    `mapemesh/identity/commands.yaml`)."""
    telemetry_asset: str = ""
    """MAPEMESH_TELEMETRY_ASSET: the asset `mapemesh.telemetry` reports about (default K_SERVICE)."""
    telemetry_retention_s: float = 3600.0
    """MAPEMESH_TELEMETRY_RETENTION_S: seconds telemetry samples stay in the state store."""
    mechanism_endpoints: str = ""
    """MAPEMESH_MECHANISM_ENDPOINTS: the YAML file naming each cluster's mechanism APIs (a mounted ConfigMap in a
    cluster); unset, adapters that need one fail with a clear error."""
    plan_timeout_s: float = 60.0
    """MAPEMESH_PLAN_TIMEOUT_S: a Pending plan with no result after this long becomes Failed."""
    plan_retention_s: float = 86400.0
    """MAPEMESH_PLAN_RETENTION_S: finished plans (Success, Failed, Discarded) are kept this long."""
    trust_config: str = ""
    """MAPEMESH_TRUST_CONFIG: the trust function's configuration (default: its own `trust.yaml`)."""
    kubeconfig: str = ""
    """MAPEMESH_KUBECONFIG: the deploy function's and the node shim's cluster (`in-cluster` for the Pod's service
    account); unset, deploy writes the objects under DATA_DIR."""
    kube_context: str = ""
    """MAPEMESH_KUBE_CONTEXT: the context of MAPEMESH_KUBECONFIG to use (default: its current one)."""
    karmada: bool = True
    """MAPEMESH_KARMADA: deploy through Karmada's PropagationPolicies (`false`: apply to the one cluster)."""
    deploy_status_every_s: float = 5.0
    """MAPEMESH_DEPLOY_STATUS_EVERY_S: how often deploy looks at what it applied."""
    deploy_status_wait_s: float = 300.0
    """MAPEMESH_DEPLOY_STATUS_WAIT_S: how long deploy watches what it applied before it reports it failed."""
    bridge_url: str = ""
    """MAPEMESH_BRIDGE_URL: the MQTT bridge far-edge deployments go through (default: the mesh's, from DATA_DIR)."""
    accel_report_s: float = 5.0
    """MAPEMESH_ACCEL_REPORT_S: how often an accelerated function reports its invocations."""
    vaccel: str = ""
    """MAPEMESH_VACCEL: `local` keeps vAccel calls on mapemesh's local backends even where vAccel imports."""
    vaccel_plugin: str = "cpu"
    """MAPEMESH_VACCEL_PLUGIN: the vAccel plugin a function's sessions ask for (cpu, gpu, remote, ...)."""
    function_source: str = ""
    """MAPEMESH_FUNCTION_SOURCE: the file the function image serves (`mapemesh-function` sets it)."""
    function_target: str = ""
    """MAPEMESH_FUNCTION_TARGET: the function in MAPEMESH_FUNCTION_SOURCE the image serves."""
    zygote_import: bool = False
    """MAPEMESH_ZYGOTE_IMPORT: set while the local fork server imports a function's source (import-time code can tell
    it is not in a function process yet)."""
    log_level: str = "info"
    """MAPEMESH_LOG_LEVEL: the function processes' log level (debug, info, warning, error)."""
    demo_period_s: float = 15.0
    """MAPEMESH_DEMO_PERIOD_S: how often `make run`'s demo application switches between a missed and a met target."""
    given: frozenset[str] = field(default=frozenset(), compare=False, repr=False)
    """The fields the environment or a flag set (`"state" in s.given`: MAPEMESH_STATE was set)."""

    def __post_init__(self) -> None:
        if self.max_event_bytes < MIN_MAX_EVENT_BYTES:
            raise ValueError(f"max_event_bytes must be at least {MIN_MAX_EVENT_BYTES} (64 KiB), "
                             f"got {self.max_event_bytes}")
        if self.durability not in ("fsync", "os"):
            raise ValueError(f"durability must be 'fsync' or 'os', got {self.durability!r}")
        if self.log_retention_s < 0:
            raise ValueError(f"log_retention_s must be >= 0, got {self.log_retention_s}")
        for name in ("broker_port", "serving_port"):
            if not 0 <= getattr(self, name) <= 65535:
                raise ValueError(f"{name} must be 0..65535, got {getattr(self, name)}")
        if not -1 <= self.node_shim_port <= 65535:
            raise ValueError(f"node_shim_port must be 0..65535 (or -1: no node shim), got {self.node_shim_port}")
        if not -1 <= self.api_port <= 65535:
            raise ValueError(f"api_port must be 0..65535 (or -1: no API), got {self.api_port}")
        if self.local_min_window:
            try:
                window = parse_go(self.local_min_window)
            except InvalidDuration:
                window = -1.0
            if not 0 < window <= WINDOW_MIN_S:
                raise ValueError(f"local_min_window must be a Go duration in (0s; 6s], got {self.local_min_window!r}")
        for name in ("plan_timeout_s", "plan_retention_s", "telemetry_retention_s", "deploy_status_every_s",
                     "deploy_status_wait_s", "accel_report_s", "demo_period_s"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        if self.log_level.lower() not in ("debug", "info", "warning", "error", "critical"):
            raise ValueError(f"log_level must be debug, info, warning, error or critical, got {self.log_level!r}")
        if not 0.1 <= self.telemetry_interval_s <= 3600:
            raise ValueError(f"telemetry_interval_s must be within 0.1..3600, got {self.telemetry_interval_s}")

    @classmethod
    def load(cls, environ: dict[str, str] | None = None, **overrides: Any) -> Settings:
        """Defaults, then `MAPEMESH_*` variables, then the overrides that are not None (flags)."""
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for name, variable in VARIABLES.items():
            raw = env.get(variable)
            if raw is not None and raw != "":
                values[name] = _convert(variable, _TYPES[name], raw)
        values.update({k: v for k, v in overrides.items() if v is not None})
        return replace(cls(), **values, given=frozenset(values))

    @property
    def identity_folder(self) -> Path:
        """MAPEMESH_IDENTITY_DIR, else DATA_DIR/identity."""
        return Path(self.identity_dir) if self.identity_dir else self.data / "identity"

    @property
    def sink(self) -> str:
        """Where a function's extra events go: K_SINK, else MAPEMESH_BROKER_URL's default/default ("" when neither
        is set)."""
        if self.k_sink:
            return self.k_sink
        return self.broker_url.rstrip("/") + "/default/default" if self.broker_url else ""

    @property
    def local_min_window_s(self) -> float:
        """MAPEMESH_LOCAL_MIN_WINDOW in seconds (Knative's 6 when unset)."""
        return parse_go(self.local_min_window) if self.local_min_window else WINDOW_MIN_S

    @property
    def event_log_file(self) -> Path:
        return self.data / "eventlog.db"

    @property
    def deployed_manifests(self) -> Path:
        """Manifests added to a running mesh (`mapemesh policy deploy`), read next to MAPEMESH_MANIFESTS."""
        return self.data / "manifests"


VARIABLES: dict[str, str] = {f.name: f.metadata.get("env") or ENV_PREFIX + f.name.upper()
                              for f in fields(Settings) if f.name != "given"}
"""Each field's environment variable."""
_TYPES = {f.name: f.type for f in fields(Settings)}

_current: Settings | None = None


def current() -> Settings:
    """This process's settings: the environment's, read on first use and kept until `reset()`."""
    found = _current
    return found if found is not None else _load_current()


def _load_current() -> Settings:
    global _current
    _current = Settings.load()
    return _current


def reset() -> None:
    """Forget this process's settings: the next `current()` reads the environment again. For code that changes its
    own environment, and for tests that do."""
    global _current
    _current = None


_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")


def _convert(variable: str, annotation: object, raw: str) -> Any:
    kind = str(annotation)
    if kind == "bool":
        if raw.strip().lower() in _TRUE + _FALSE:
            return raw.strip().lower() in _TRUE
        raise ValueError(f"{variable}={raw!r} is not a boolean (1/0, true/false, yes/no, on/off)")
    try:
        if kind == "int":
            return int(raw)
        if kind == "Path":
            return Path(raw)
        if kind == "float":
            return float(raw)
    except ValueError:
        raise ValueError(f"{variable}={raw!r} is not a valid {kind}") from None
    return raw
