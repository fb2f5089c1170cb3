"""MLSysOps descriptions as typed models: applications, nodes, clusters and the continuum.

The upstream formats (`MLSysOpsApp`, `MLSysOpsNode`, `MLSysOpsCluster`, `MLSysOpsContinuum`) load unmodified;
a description that does not fit gets a `DescriptionError` naming the field path of every problem
(`MLSysOpsApp.components[1].containers[0].image: Field required`). Parts the upstream format leaves open
(sensors, network resources, power, most platform requirements) are kept as given; the parts mapemesh acts
on (placement, containers, ports, env, QoS metrics, hardware) are checked. mapemesh's own additions are marked
as such (`replicas`, `function`, `runtime_class_name`, `replica_scheduling`, `image_per_architecture`,
`mechanisms`, `mechanism_options`, `mechanism_states`, `storage`, `min_trust`, a node's `location` and
`isolated`). JSON Schemas are exported with the event schemas (`make schemas`).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

NonEmpty = Annotated[str, Field(min_length=1)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class _Open(BaseModel):
    model_config = ConfigDict(extra="allow", allow_inf_nan=False)


class Metadata(_Strict):
    name: NonEmpty
    uid: str | None = None


class NodePlacement(_Strict):
    continuum_layer: list[str] | None = None
    mobility: bool | None = None
    labels: list[str] | None = Field(None, description="`key:value` node labels the component needs.")
    node: str | None = Field(None, description="A node the component is pinned to.")


class Resource(_Open):
    requests: str | int | float | None = None
    limits: str | int | float | None = None


class Cpu(Resource):
    architecture: list[str] | None = None
    frequency: float | None = None


class PlatformRequirements(_Open):
    cpu: Cpu | None = None
    memory: Resource | None = None
    disk: str | int | float | None = None
    gpu: dict[str, Any] | None = None


class FieldRef(_Strict):
    field_path: NonEmpty


class ValueFrom(_Strict):
    field_ref: FieldRef


class Env(_Strict):
    name: NonEmpty
    value: str | None = None
    value_from: ValueFrom | None = None


class Port(_Strict):
    container_port: int = Field(ge=1, le=65535)
    protocol: Literal["TCP", "UDP", "SCTP"] = "TCP"


class Container(_Strict):
    image: NonEmpty
    platform_requirements: PlatformRequirements | None = None
    image_pull_policy: Literal["Always", "IfNotPresent", "Never"] | None = None
    command: list[str] | None = None
    env: list[Env] | None = None
    ports: list[Port] | None = None
    image_per_architecture: dict[str, str] | None = Field(None, description="mapemesh: an image per architecture.")


class QosMetric(_Strict):
    application_metric_id: NonEmpty
    target: float
    relation: Literal["lower_or_equal", "lower", "greater_or_equal", "greater", "equal", "lower_than",
                      "greater_than"] = "lower_or_equal"
    system_metrics_hints: list[str] | None = None


class ReplicaScheduling(_Strict):
    type: Literal["Duplicated", "Divided"] = "Duplicated"
    weights: dict[str, int] | None = None


class Component(_Strict):
    metadata: Metadata
    node_placement: NodePlacement | None = None
    sensors: list[dict[str, Any]] | None = None
    restart_policy: str | None = None
    containers: list[Container] = Field(min_length=1)
    qos_metrics: list[QosMetric] | None = None
    host_network: bool | None = None
    runtime_class_name: str | None = Field(None, description="mapemesh: the component's RuntimeClass.")
    replicas: int | None = Field(None, ge=0, description="mapemesh: replicas of the Deployment (default 1).")
    function: bool | None = Field(None, description="mapemesh: run as a Knative Service.")
    replica_scheduling: ReplicaScheduling | None = Field(None, description="mapemesh: Karmada replica scheduling.")
    min_trust: float | None = Field(None, ge=0, le=1, description="mapemesh: the lowest reputation credit (seed 7.1) "
                                                                  "of a node or cluster the component may run on.")
    annotations: dict[str, str] | None = Field(
        None, description="mapemesh: the component's pod annotations; on a far-edge component, the layer-agnostic "
                          "adapter's `communication-adapter.fita/image`, `/ports`, `/service-name`, `/pull-policy`.")


class Interaction(_Strict):
    component_name1: NonEmpty
    type: str
    component_name2: NonEmpty


class AchievementWeight(_Strict):
    metric_id: NonEmpty
    weight: float


class GlobalSatisfaction(_Strict):
    threshold: float
    relation: str
    achievement_weights: list[AchievementWeight] | None = None


class ClusterPlacement(_Strict):
    cluster_id: list[str] = Field(min_length=1)


class BucketTargets(_Strict):
    """A bucket the application uses on the storage gateway, and what its Storage Policy must keep to (seed 4.1)."""

    bucket: NonEmpty
    regions: list[str] | None = Field(None, description="Locations of these regions only (legal, compliance).")
    min_parity: int | None = Field(None, ge=0, description="At least this many redundant fragments.")
    max_parity: int | None = Field(None, ge=0, description="At most this many redundant fragments.")
    max_latency_ms: float | None = Field(None, gt=0, description="A location slower than this (probed) is replaced.")


class App(_Strict):
    name: NonEmpty
    cluster_placement: ClusterPlacement | None = None
    components: list[Component] = Field(min_length=1)
    component_interactions: list[Interaction] | None = None
    permitted_actions: list[str] | None = None
    global_satisfaction: GlobalSatisfaction | None = None
    storage: list[BucketTargets] | None = Field(None, description="mapemesh: the buckets it uses and their targets.")


class Application(_Strict):
    """An MLSysOps application description."""

    MLSysOpsApp: App


class NodeCpu(_Open):
    cores: int | None = Field(None, ge=1)
    architecture: str | None = None
    frequency: list[float] | None = None
    performance_indicator: float | None = None


class Hardware(_Open):
    cpu: NodeCpu | None = None
    memory: float | str | None = Field(None, description="GiB.")
    disk: float | str | None = None
    gpu: dict[str, Any] | None = None


class Environment(_Open):
    node_type: str | None = None
    os: str | None = None
    container_runtime: list[str] | None = None


class Location(_Open):
    """A position (WGS 84 degrees; altitude in metres, accuracy as the receiver gives it)."""

    latitude: float = Field(ge=-90, le=90)
    longitude: float = Field(ge=-180, le=180)
    altitude: float | None = None
    accuracy: float | None = None


class Node(_Strict):
    name: NonEmpty
    continuum_layer: str | None = None
    cluster_id: str | None = None
    mobility: bool | None = None
    labels: list[str] | None = None
    sensors: list[dict[str, Any]] | None = None
    environment: Environment | None = None
    hardware: Hardware | None = None
    network_resources: dict[str, Any] | None = None
    permitted_actions: list[str] | None = None
    power: dict[str, Any] | None = None
    mechanisms: list[str] | None = Field(None, description="mapemesh: the knobs the node shim offers.")
    mechanism_options: dict[str, Any] | None = Field(
        None, description="mapemesh: each knob's options (what a policy may ask of it), as its node shim gives them.")
    mechanism_states: dict[str, Any] | None = Field(
        None, description="mapemesh: each knob's state when the node shim registered the node.")
    sdf: dict[str, Any] | None = Field(
        None, description="mapemesh: a far-edge device's IETF SDF description, as its gateway announced it.")
    location: Location | None = Field(
        None, description="mapemesh: where the node is (seed 5.3: its GPS fix); upstream has only `mobility`.")
    isolated: dict[str, Any] | None = Field(
        None, description="mapemesh: set by the monitor while the node is isolated (io.mapemesh.node.isolated.v1): "
                          "reason, by, at; placement leaves it out.")


class NodeDescription(_Strict):
    """An MLSysOps node description."""

    MLSysOpsNode: Node


class Cluster(_Strict):
    cluster_id: NonEmpty
    nodes: list[str] = Field(default_factory=list)


class ClusterDescription(_Strict):
    """An MLSysOps cluster description."""

    MLSysOpsCluster: Cluster


class Continuum(_Strict):
    continuum_id: NonEmpty
    clusters: list[str] = Field(default_factory=list)


class ContinuumDescription(_Strict):
    """An MLSysOps continuum description."""

    MLSysOpsContinuum: Continuum


MODELS: dict[str, type[BaseModel]] = {"MLSysOpsApp": Application, "MLSysOpsNode": NodeDescription,
                                      "MLSysOpsCluster": ClusterDescription, "MLSysOpsContinuum": ContinuumDescription}
"""The top-level key of each description and its model."""


RELATIONS: dict[str, Any] = {
    "lower_or_equal": lambda value, target: value <= target,
    "lower": lambda value, target: value < target,
    "lower_than": lambda value, target: value < target,
    "greater_or_equal": lambda value, target: value >= target,
    "greater": lambda value, target: value > target,
    "greater_than": lambda value, target: value > target,
    "equal": lambda value, target: value == target,
}
"""A QoS metric's relation: whether `value` meets `target`."""


class DescriptionError(ValueError):
    """A description that does not fit its format; `problems` are `path: message` lines, `errors` the same as
    (location, message, error type), the location a tuple of keys and list indexes."""

    def __init__(self, problems: list[str], errors: list[tuple[tuple[int | str, ...], str, str]] | None = None):
        super().__init__("; ".join(problems))
        self.problems = problems
        self.errors = errors if errors is not None else [((), p, "value_error") for p in problems]


def _path(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def load(doc: Any, kind: str | None = None) -> BaseModel:
    """The description as its model (the kind from its top-level key, or `kind`); DescriptionError otherwise."""
    if not isinstance(doc, dict):
        raise DescriptionError([f"(document): a mapping with one of {', '.join(MODELS)} is expected"])
    found = kind or next((k for k in MODELS if k in doc), None)
    if found is None or found not in MODELS:
        keys = ", ".join(map(str, doc)) or "none"
        raise DescriptionError([f"(document): no {' / '.join(MODELS)} key (found: {keys})"])
    try:
        return MODELS[found].model_validate(doc)
    except ValidationError as exc:
        found_errors = exc.errors()
        raise DescriptionError([f"{_path(e['loc'])}: {e['msg']}" for e in found_errors],
                               [(tuple(e["loc"]), e["msg"], e["type"]) for e in found_errors]) from None
