"""The CloudEvent catalogue: one pydantic model per event type of the MAPE loop.

Each model is the `data` of one CloudEvent type. Its type name is reverse-DNS (`io.mapemesh.<area>.<what>.v1`)
and its `dataschema` points at the JSON Schema exported to `events/schemas/<type>.json`. External systems
depend on these types and schemas: change them only compatibly, or add a new version.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field

SCHEMA_BASE = "https://mapemesh.dev/schemas/events/"
"""Base of every `dataschema` URI; the file under `events/schemas/` has the same name."""

NonEmpty = Annotated[str, Field(min_length=1)]
AssetKind = Literal["node", "cluster", "continuum", "application", "component", "device", "function"]
ManagementMode = Literal["heuristic", "ml"]
PlanStatus = Literal["Queued", "Scheduled", "Discarded", "Success", "Pending", "Failed"]


class EventData(BaseModel):
    """Base of every catalogue model: strict about unknown fields, with its CloudEvent type attached."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    event_type: ClassVar[str]
    summary: ClassVar[str]

    @classmethod
    def dataschema(cls) -> str:
        """The `dataschema` attribute of events of this type."""
        return f"{SCHEMA_BASE}{cls.event_type}.json"


class Metric(BaseModel):
    """One telemetry sample."""

    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1, description="Metric name, OpenTelemetry style (e.g. node_cpu_frequency_hz).")
    value: float
    unit: str | None = Field(None, description="UCUM unit, e.g. Hz, W, %, s.")
    labels: dict[str, str] = Field(default_factory=dict)
    time: datetime | None = Field(None, description="When the sample was taken (default: the event's time).")


class TelemetryReported(EventData):
    event_type: ClassVar[str] = "io.mapemesh.telemetry.reported.v1"
    summary: ClassVar[str] = "Telemetry samples about one asset, from a node shim, an MQTT bridge or outside."
    asset: str = Field(min_length=1, description="The node, cluster, application or device the samples describe.")
    asset_kind: AssetKind
    metrics: list[Metric] = Field(min_length=1)


class StateChanged(EventData):
    event_type: ClassVar[str] = "io.mapemesh.state.changed.v1"
    summary: ClassVar[str] = "The monitor stage updated knowledge about an asset."
    asset: NonEmpty
    asset_kind: AssetKind
    changed: list[str] = Field(min_length=1, description="Which metrics or knowledge keys changed.")
    cause: str | None = Field(None, description="The id of the event that caused the change.")


class PolicyRequest(EventData):
    """What a stage sends a policy function; the policy answers with the matching reply."""

    policy: NonEmpty
    asset: NonEmpty
    context: dict[str, Any] = Field(default_factory=dict, description="The policy's saved context.")
    application_description: dict[str, Any] | list[dict[str, Any]] | None = None
    system_description: dict[str, Any] | None = None
    current_plan: dict[str, Any] | None = None
    mechanisms: dict[str, Any] = Field(default_factory=dict,
                                       description="Mechanism name -> {state, options} for the asset.")
    telemetry: dict[str, Any] = Field(default_factory=dict, description="The telemetry window the policy asked for.")
    mode: ManagementMode = "heuristic"
    cause: str | None = Field(None, description="The id of the event the loop is reacting to (its cycle).")
    available_assets: list[str] = Field(default_factory=list, description="The registered infrastructure ids.")


class PolicyAnalyzeRequested(PolicyRequest):
    event_type: ClassVar[str] = "io.mapemesh.policy.analyze.requested.v1"
    summary: ClassVar[str] = "The analyze stage asks policy NAME (extension `policy`) for a verdict."


class PolicyAnalyzeReplied(EventData):
    event_type: ClassVar[str] = "io.mapemesh.policy.analyze.replied.v1"
    summary: ClassVar[str] = "A policy's verdict: does the asset need a new plan?"
    policy: NonEmpty
    asset: NonEmpty
    request: str = Field(min_length=1, description="The id of the request event this answers.")
    verdict: bool
    context: dict[str, Any] = Field(default_factory=dict)
    error: str | None = Field(None, description="Set when the policy raised; verdict is then false.")
    traceback: str | None = Field(None, description="The policy's traceback when it raised.")
    cause: str | None = None
    plan: dict[str, Any] | None = Field(None, description="With a true verdict: the policy's plan, made at once "
                                                          "from the same inputs (context is then plan's).")
    inputs: dict[str, Any] = Field(default_factory=dict,
                                   description="What the policy saw: the latest telemetry values (`telemetry`).")


class PolicyPlanRequested(PolicyRequest):
    event_type: ClassVar[str] = "io.mapemesh.policy.plan.requested.v1"
    summary: ClassVar[str] = "The plan stage asks policy NAME (extension `policy`) for a plan."


class PolicyPlanReplied(EventData):
    event_type: ClassVar[str] = "io.mapemesh.policy.plan.replied.v1"
    summary: ClassVar[str] = "A policy's plan: mechanism name -> command."
    policy: NonEmpty
    asset: NonEmpty
    request: NonEmpty
    plan: dict[str, Any] = Field(default_factory=dict)
    context: dict[str, Any] = Field(default_factory=dict)
    error: str | None = None
    traceback: str | None = None
    cause: str | None = None
    inputs: dict[str, Any] = Field(default_factory=dict)


class PlanProposed(EventData):
    event_type: ClassVar[str] = "io.mapemesh.plan.proposed.v1"
    summary: ClassVar[str] = "A plan enters the scheduler's FIFO (status Queued)."
    plan_id: NonEmpty
    policy: NonEmpty
    asset: NonEmpty
    mechanisms: dict[str, Any] = Field(min_length=1, description="Mechanism name -> command.")
    core: bool = Field(False, description="A core policy's plan: scheduled before the others in its cycle.")
    cause: str | None = Field(None, description="The event the plan reacts to; plans with one cause share a cycle.")


class PlanScheduled(EventData):
    event_type: ClassVar[str] = "io.mapemesh.plan.scheduled.v1"
    summary: ClassVar[str] = "The scheduler admitted a plan in this cycle; execute applies it."
    plan_id: NonEmpty
    policy: NonEmpty
    asset: NonEmpty
    mechanisms: dict[str, Any] = Field(min_length=1)
    cycle: int = Field(ge=0, description="The scheduling cycle that admitted it.")


class PlanDiscarded(EventData):
    event_type: ClassVar[str] = "io.mapemesh.plan.discarded.v1"
    summary: ClassVar[str] = "A plan lost to an earlier plan for the same mechanism in the same cycle."
    plan_id: NonEmpty
    policy: NonEmpty
    asset: NonEmpty
    mechanism: str = Field(min_length=1, description="The mechanism both plans wanted.")
    winner: str = Field(min_length=1, description="The plan_id that was scheduled instead.")
    reason: NonEmpty
    cycle: int = Field(ge=0)


class KnobApply(EventData):
    event_type: ClassVar[str] = "io.mapemesh.knob.apply.v1"
    summary: ClassVar[str] = "Execute asks node NAME's shim (extension `node`) to apply a mechanism command."
    node: NonEmpty
    knob: str = Field(min_length=1, description="The MLSysOps mechanism name, e.g. CPUFrequency.")
    command: dict[str, Any]
    plan_id: str | None = None
    requested_by: str = Field(min_length=1, description="Who asked: a plan's policy, an operator, ...")


class KnobApplied(EventData):
    event_type: ClassVar[str] = "io.mapemesh.knob.applied.v1"
    summary: ClassVar[str] = "A node shim applied a command; values before and after."
    node: NonEmpty
    knob: NonEmpty
    request: str = Field(min_length=1, description="The id of the knob.apply event.")
    plan_id: str | None = None
    before: dict[str, Any]
    after: dict[str, Any]
    noop: bool = Field(False, description="True when the command changed nothing (already in effect).")


class KnobFailed(EventData):
    event_type: ClassVar[str] = "io.mapemesh.knob.failed.v1"
    summary: ClassVar[str] = "A node shim refused or failed a command; nothing is left half-applied."
    node: NonEmpty
    knob: NonEmpty
    request: NonEmpty
    plan_id: str | None = None
    code: Literal["invalid", "unsupported", "permission", "hardware", "timeout", "unknown_knob"]
    error: NonEmpty
    rolled_back: bool = Field(False, description="True when a partial change was undone.")


class DeployRequested(EventData):
    event_type: ClassVar[str] = "io.mapemesh.deploy.requested.v1"
    summary: ClassVar[str] = "Execute asks the deploy function to place an application's components."
    app_id: NonEmpty
    plan_id: str | None = None
    placement: dict[str, list[str]] = Field(description="Component name -> cluster names.")
    nodes: dict[str, str] = Field(default_factory=dict, description="Component name -> node (node placement).")


class DeployStatus(EventData):
    event_type: ClassVar[str] = "io.mapemesh.deploy.status.v1"
    summary: ClassVar[str] = "What the deploy function did with a deploy request."
    app_id: NonEmpty
    plan_id: str | None = None
    status: Literal["Applied", "Written", "Failed", "Removed"] = Field(
        description="Applied to a cluster; Written locally (rendered, not applied: no cluster configured); Failed; "
                    "Removed (the application's objects were deleted).")
    clusters: list[str] = Field(default_factory=list)
    objects: int = Field(0, ge=0, description="How many Kubernetes objects were applied or written.")
    message: str | None = None
    deployed: bool | None = Field(None, description="Applied: whether every component runs on its clusters yet "
                                                     "(Karmada's ResourceBindings, or the Deployments).")


class AppSubmitted(EventData):
    event_type: ClassVar[str] = "io.mapemesh.app.submitted.v1"
    summary: ClassVar[str] = "An application description was submitted (northbound API or outside)."
    app_id: NonEmpty
    description: dict[str, Any] = Field(description="The MLSysOps application description (MLSysOpsApp).")
    kind: Literal["application", "ml_model"] = Field(
        "application", description="ml_model: an ML model's serving application (northbound `/ml/deploy_ml`); "
                                   "it is placed and deployed like any application.")


class AppRemoved(EventData):
    event_type: ClassVar[str] = "io.mapemesh.app.removed.v1"
    summary: ClassVar[str] = "An application was removed."
    app_id: NonEmpty


class InfraRegistered(EventData):
    event_type: ClassVar[str] = "io.mapemesh.infra.registered.v1"
    summary: ClassVar[str] = "A node, cluster or continuum description was registered."
    infra_id: NonEmpty
    kind: Literal["node", "cluster", "continuum"]
    description: dict[str, Any]


class InfraUnregistered(EventData):
    event_type: ClassVar[str] = "io.mapemesh.infra.unregistered.v1"
    summary: ClassVar[str] = "A node, cluster or continuum left."
    infra_id: NonEmpty


class ModeChanged(EventData):
    event_type: ClassVar[str] = "io.mapemesh.mode.changed.v1"
    summary: ClassVar[str] = "The management mode (ML or heuristic) or the manual override changed."
    mode: ManagementMode
    manual_override: bool = False
    previous: ManagementMode | None = None


class AccelRequested(EventData):
    event_type: ClassVar[str] = "io.mapemesh.accel.requested.v1"
    summary: ClassVar[str] = "Invoke accelerated function NAME (extension `function`) on an input."
    input: dict[str, Any] = Field(default_factory=dict, description="What the function takes (its own format).")


class AccelReplied(EventData):
    event_type: ClassVar[str] = "io.mapemesh.accel.replied.v1"
    summary: ClassVar[str] = "An accelerated function's answer, with the vAccel backend, plugin and device used."
    function: NonEmpty
    request: NonEmpty = Field(description="The id of the request event this answers.")
    result: dict[str, Any] = Field(default_factory=dict)
    backend: str = Field(description="`vaccel` (vAccel's own library) or `mapemesh-local` (mapemesh's backends).")
    plugin: str = Field(description="The plugin choice the call ran under: cpu, gpu or remote.")
    device: str = Field(description="Where it ran: cpu, cuda, ...")
    latency_ms: float = Field(ge=0)
    error: str | None = None


class MqttRefused(EventData):
    event_type: ClassVar[str] = "io.mapemesh.mqtt.refused.v1"
    summary: ClassVar[str] = "The MQTT bridge took a message that is not a valid CloudEvent (a dead letter)."
    topic: NonEmpty
    reason: NonEmpty
    content_type: str | None = None
    user_properties: list[tuple[str, str]] = Field(default_factory=list)
    payload_base64: str = Field(description="The message's payload (its first 64 KiB), base64.")
    truncated: bool = False


class FarEdgeDeployRequested(EventData):
    event_type: ClassVar[str] = "io.mapemesh.faredge.deploy.requested.v1"
    summary: ClassVar[str] = ("Deploy (or remove) a workload on a far-edge device through LwM2M Software Management "
                              "(the MQTT bridge does it; the deploy function asks).")
    device: NonEmpty
    app_id: NonEmpty
    component: NonEmpty
    plan_id: str | None = None
    action: Literal["deploy", "remove"] = "deploy"
    package: dict[str, Any] = Field(default_factory=dict, description="The embServe package (service.json): at "
                                                                      "least `name` and `service`.")


class FarEdgeStep(EventData):
    event_type: ClassVar[str] = "io.mapemesh.faredge.step.v1"
    summary: ClassVar[str] = "One LwM2M Software Management step on a far-edge device, and how it went."
    device: NonEmpty
    app_id: NonEmpty
    component: NonEmpty
    instance: NonEmpty
    step: Literal["create", "package", "install", "activate", "remove", "rollback"]
    ok: bool
    code: int | None = Field(None, description="The gateway's response code (CoAP, class*32+detail).")
    detail: str | None = None


class FarEdgeDeployed(EventData):
    event_type: ClassVar[str] = "io.mapemesh.faredge.deployed.v1"
    summary: ClassVar[str] = "A far-edge workload deployed, removed, or not (rolled back), with its instance."
    device: NonEmpty
    app_id: NonEmpty
    component: NonEmpty
    plan_id: str | None = None
    instance: str | None = None
    status: Literal["Active", "Failed", "Removed"]
    message: str | None = None


class StorageAccessed(EventData):
    event_type: ClassVar[str] = "io.mapemesh.storage.accessed.v1"
    summary: ClassVar[str] = ("An object of the storage gateway was read, written or deleted (seed 4.1.1: the bucket, "
                              "the time, the client's country; its address is not kept).")
    bucket: NonEmpty
    operation: Literal["get", "put", "delete"]
    country: str = Field(description="ISO 3166 alpha-2 from the gateway's address table; ZZ when unknown.")
    bytes: int = Field(0, ge=0)


class StorageMigration(EventData):
    event_type: ClassVar[str] = "io.mapemesh.storage.migration.v1"
    summary: ClassVar[str] = "A bucket's objects moving to its new Storage Policy: how far along."
    bucket: NonEmpty
    k: int = Field(ge=1)
    m: int = Field(ge=0)
    locations: list[str]
    total: int = Field(ge=0)
    done: int = Field(ge=0)
    failed: int = Field(0, ge=0)
    finished: bool = False


class TrustUpdated(EventData):
    event_type: ClassVar[str] = "io.mapemesh.trust.updated.v1"
    summary: ClassVar[str] = ("A node's or cluster's reputation credit moved (seed 7.1.3): the credit in [0, 1] and "
                              "the trust indices it is the weighted sum of.")
    asset: NonEmpty
    asset_kind: Literal["node", "cluster"]
    credit: float = Field(ge=0, le=1)
    previous: float | None = Field(None, ge=0, le=1, description="The credit last reported (None: the first).")
    indices: dict[str, float] = Field(description="Each index's value in [0, 1].")
    cause: str | None = Field(None, description="The id of the event that moved it.")


class NodeIsolated(EventData):
    event_type: ClassVar[str] = "io.mapemesh.node.isolated.v1"
    summary: ClassVar[str] = ("A node was isolated (seed 5.3: a compromised or malfunctioning node) or let back in: "
                              "placement leaves an isolated node out until an isolation with isolated=false.")
    node: NonEmpty
    isolated: bool = Field(True, description="False: the isolation is lifted.")
    reason: NonEmpty
    by: NonEmpty = Field(description="Who decided: trust (its credit fell under the threshold), a policy, an operator.")
    credit: float | None = Field(None, ge=0, le=1, description="The node's trust credit then, when trust decided.")
    location: dict[str, Any] | None = Field(
        None, description="Where the node is (its description's location, the GPS fix of seed 5.3), to find it.")


class AuthRefused(EventData):
    event_type: ClassVar[str] = "io.mapemesh.auth.refused.v1"
    summary: ClassVar[str] = ("A command was refused where it would have been applied (seed 7.1.4): unsigned, not "
                              "verified, or from an identity the command policy does not allow. Nothing changed.")
    receiver: NonEmpty = Field(description="Who refused it: node-shim-NAME, deploy, the storage gateway, ...")
    command: NonEmpty = Field(description="The refused event's type.")
    command_id: NonEmpty = Field(description="The refused event's id.")
    command_source: NonEmpty = Field(description="The refused event's source (as it claims).")
    sender: NonEmpty = Field(description="The verified signer, else the event's claimed source.")
    rule: Literal["unsigned", "unverified", "not-allowed", "no-trust-anchor"]
    reason: NonEmpty


CATALOGUE: dict[str, type[EventData]] = {
    model.event_type: model
    for model in (
        TelemetryReported, StateChanged,
        PolicyAnalyzeRequested, PolicyAnalyzeReplied, PolicyPlanRequested, PolicyPlanReplied,
        PlanProposed, PlanScheduled, PlanDiscarded,
        KnobApply, KnobApplied, KnobFailed,
        DeployRequested, DeployStatus,
        AppSubmitted, AppRemoved, InfraRegistered, InfraUnregistered,
        ModeChanged,
        AccelRequested, AccelReplied,
        MqttRefused, FarEdgeDeployRequested, FarEdgeStep, FarEdgeDeployed,
        StorageAccessed, StorageMigration,
        TrustUpdated, AuthRefused, NodeIsolated,
    )
}
