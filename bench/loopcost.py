"""What one MAPE reaction costs the state store, stage by stage: the loop's stages run in this process, in order,
on a real SQLite store whose every call is counted.

Two paths are counted:
- a reaction: a node's telemetry breaks an application's QoS target, the CPU frequency policy plans, the plan is
  scheduled and executed, and the knob's `knob.applied` comes back to the monitor (and on to analyze);
- a background telemetry event about a node that no policy watches (the policies declare the metrics they
  read, and this event reports another one).

A round trip is one call to the store (`get`, `get_many`, `put`, `commit`, `transact`, `snapshot`, `delete`,
`list`, `append_telemetry`, `telemetry`, `latest`): on SQLite, the local default, each is one transaction
(`update()` and `update_many()` are one `transact`: the change runs inside the write transaction). The same path
on Redis is counted too (`PATH on redis`): there a `transact` is a read and a commit (the change runs in this
process, between them; only the commit when the caller passes what it just read), and a `snapshot` of every
metric reads the metric names first, so each counts 2. `make bench` (mape) prints the counts next to the
reaction's latency; tests/test_loop_cost.py holds the issue's budget (at most 8 round trips per reaction, at most
2 per unwatched telemetry event).
"""

from __future__ import annotations

import asyncio
import os
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from mapemesh import events as catalogue
from mapemesh import settings
from mapemesh.eventing.cloudevent import CloudEvent
from mapemesh.serving.errors import TemporaryError

REPO = Path(__file__).resolve().parent.parent
CALLS = ("get", "get_many", "put", "commit", "transact", "snapshot", "delete", "list", "append_telemetry", "telemetry",
         "latest")
APP = {"MLSysOpsApp": {"name": "shop", "components": [{"metadata": {"name": "web"}, "qos_metrics": [
    {"application_metric_id": "latency_ms", "target": 20, "relation": "lower_or_equal"}]}]}}


class Counting:
    """A store that counts its calls by the stage that makes them (`stage` is set around each stage's call)."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.stage = "setup"
        self.calls: Counter[tuple[str, str]] = Counter()
        self.redis: Counter[str] = Counter()
        """Round trips of the same calls on Redis, by stage (see the module's docstring)."""

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self.inner, name)
        if name not in CALLS:
            return attr

        def counted(*args: Any, **kwargs: Any) -> Any:
            self.calls[(self.stage, name)] += 1
            every_metric = name == "snapshot" and (args[2] if len(args) > 2 else kwargs.get("metrics")) is None
            read_first = name == "transact" and kwargs.get("read") is None  # else its first attempt only commits
            self.redis[self.stage] += 2 if read_first or every_metric else 1
            return attr(*args, **kwargs)

        return counted

    def by_stage(self) -> dict[str, int]:
        out: Counter[str] = Counter()
        for (stage, _), n in self.calls.items():
            out[stage] += n
        return dict(out)


@contextmanager
def _environment(data: Path) -> Iterator[None]:
    saved = {k: os.environ.get(k) for k in ("MAPEMESH_DATA", "MAPEMESH_STATE", "K_SINK")}
    os.environ.update(MAPEMESH_DATA=str(data), MAPEMESH_STATE="sqlite:", K_SINK="http://127.0.0.1:9/unused")
    settings.reset()  # the stages read this process's settings: from this environment
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        settings.reset()


def _policy_file(root: Path) -> Path:
    """The shipped CPU frequency policy, declaring the metric it reads (so other metrics are not its business), with
no analyze interval (so two reactions may follow each other at once)."""
    text = (REPO / "functions" / "policies" / "cpu_frequency" / "policy.py").read_text()
    text = text.replace('"telemetry": {"metrics": [], ', '"telemetry": {"metrics": ["latency_ms"], ')
    text = text.replace('"analyze_interval": "1s"', '"analyze_interval": "0s"')  # one reaction after another
    path = root / "cpu_frequency_declared.py"
    path.write_text(text)
    return path


def measure() -> dict[str, dict[str, int]]:
    """{path: {stage: round trips}} for one reaction and one unwatched background telemetry event (on SQLite, and
    the same calls' round trips on Redis: PATH on redis)."""
    from mapemesh.functions import analyze as analyze_stage
    from mapemesh.functions.analyze import analyze
    from mapemesh.functions.execute import execute
    from mapemesh.functions.monitor import monitor
    from mapemesh.functions.plan import plan
    from mapemesh.functions.schedule import schedule
    from mapemesh.policy.function import PolicyFunction
    from mapemesh.serving import handlers, sink
    from mapemesh.state import from_environment

    with tempfile.TemporaryDirectory(prefix="mapemesh-loopcost-") as tmp, _environment(Path(tmp)):
        from_environment.cache_clear()
        analyze_stage._cache.clear()
        store = Counting(from_environment())
        original, publish = handlers.environment_store, sink.publish
        handlers.environment_store = lambda: store  # type: ignore[assignment]

        async def captured(events: Any, timeout_s: float = 10.0, url: str | None = None) -> None:
            _captured.extend(events)  # extra events, routed as the broker would

        sink.publish = captured  # type: ignore[assignment]
        try:
            policy = PolicyFunction(_policy_file(Path(tmp)), "cpu-frequency")
            asyncio.run(policy.register())
            stages = {"monitor": monitor, "analyze": analyze, "policy": policy.stage(), "plan": plan,
                      "schedule": schedule, "execute": execute}
            for data in (catalogue.InfraRegistered(infra_id="node-1", kind="node", description={
                    "MLSysOpsNode": {"name": "node-1"}}), catalogue.AppSubmitted(app_id="shop", description=APP)):
                asyncio.run(monitor.call(catalogue.make_event(data, "/bench")))
            # A first reaction warms what a running process keeps (the policy registry and the lists of
            # applications and infrastructure, read at most every 0.5 s under telemetry); the second is counted.
            for value in (35.0, 5.0):
                reaction = _run(store, stages, catalogue.TelemetryReported(
                    asset="node-1", asset_kind="node", metrics=[catalogue.Metric(name="latency_ms", value=value)]))
            reaction_redis = dict(store.redis)
            background = _run(store, stages, catalogue.TelemetryReported(
                asset="node-2", asset_kind="node", metrics=[catalogue.Metric(name="node_load1", value=0.5)]))
            background_redis = dict(store.redis)
        finally:
            handlers.environment_store, sink.publish = original, publish  # type: ignore[assignment]
            from_environment().close()
            from_environment.cache_clear()
            analyze_stage._cache.clear()
    return {"reaction": reaction, "background": background, "reaction on redis": reaction_redis,
            "background on redis": background_redis}


ROUTE = {catalogue.TelemetryReported.event_type: "monitor", catalogue.StateChanged.event_type: "analyze",
         catalogue.PolicyAnalyzeRequested.event_type: "policy", catalogue.PolicyPlanRequested.event_type: "policy",
         catalogue.PolicyAnalyzeReplied.event_type: "plan", catalogue.PolicyPlanReplied.event_type: "plan",
         catalogue.PlanProposed.event_type: "schedule", catalogue.PlanScheduled.event_type: "execute",
         catalogue.KnobApplied.event_type: "monitor"}


def _run(store: Counting, stages: dict[str, Any], first: catalogue.EventData) -> dict[str, int]:
    """Route the events as the Triggers do until none is left; the shim's answer stands in for the shim."""
    store.calls.clear()
    store.redis.clear()
    _captured.clear()  # what the set-up sent (a policy's registration asks for analyses) is not this path's
    queue: list[CloudEvent] = [catalogue.make_event(first, "/bench")]
    while queue:
        event = queue.pop(0)
        if event.type == catalogue.KnobApply.event_type:
            apply = catalogue.parse_data(event)
            assert isinstance(apply, catalogue.KnobApply)
            queue.append(catalogue.make_event(catalogue.KnobApplied(
                node=apply.node, knob=apply.knob, request=event.id, plan_id=apply.plan_id, before={},
                after=dict(apply.command)), "/bench/node-shim"))
            continue
        stage = ROUTE.get(event.type)
        if stage is None:
            continue
        after_result = event.type == catalogue.KnobApplied.event_type or (
            event.type == catalogue.StateChanged.event_type and any(
                k.startswith("mechanism:") for k in catalogue.parse_data(event).changed))  # type: ignore[union-attr]
        store.stage = f"{stage} (result)" if after_result else stage
        try:
            outs = _answers(asyncio.run(stages[stage].call(event)))
        except TemporaryError as exc:  # as the broker does: again, no sooner than asked
            time.sleep(exc.delay)
            queue.insert(0, event)
            continue
        queue += outs
    return store.by_stage()


_captured: list[CloudEvent] = []


def _answers(reply: CloudEvent | None) -> list[CloudEvent]:
    extra = list(_captured)
    _captured.clear()
    return extra + ([reply] if reply is not None else [])


def main() -> dict[str, dict[str, int]]:
    counts = measure()
    for path, stages in counts.items():
        print(f"{path}: {sum(stages.values())} store round trips: " + ", ".join(f"{k} {v}" for k, v in stages.items()))
    return counts


if __name__ == "__main__":
    main()
