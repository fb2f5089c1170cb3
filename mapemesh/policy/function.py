"""A policy served as a function: one MLSysOps policy file, answering the loop's analyze and plan requests.

The policy stays pure: the stages send it everything it may ask for, in the request, and it answers with a
reply event carrying its verdict (or plan), its new context, and, when it raised or answered in a malformed
way, the error and traceback. As in MLSysOps, a true verdict is followed at once by `plan` on the same
inputs, and the analyze reply carries the plan: one round trip instead of two. A failing policy answers
with the failure; it never blocks another policy. Each process of the function loads the file once and
registers the policy's declaration in the state store before its first event (the policy's Service has
`initial-scale: 1`, so a new revision registers at once and then scales to zero).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from pydantic import ValidationError

import mapemesh
from mapemesh import events as catalogue
from mapemesh import settings
from mapemesh.eventing.cloudevent import CloudEvent
from mapemesh.policy import registry
from mapemesh.policy.loader import Policy, PolicyError, PolicyFailure, load_policy
from mapemesh.serving.handlers import Stage
from mapemesh.state import from_environment

log = logging.getLogger(__name__)
SOURCE = "/mapemesh/policies/"


class PolicyFunction:
    """Loads one policy file (lazily, in the function's process) and answers requests with it."""

    def __init__(self, path: Path, name: str, timeout_s: float = 30.0):
        self.path = Path(path)
        self.name = name
        self.timeout_s = timeout_s
        self._policy: Policy | None = None
        self._error: str | None = None

    async def load(self) -> Policy:
        """The initialized policy; PolicyError (remembered: the file does not change under a process)."""
        if self._policy is not None:
            return self._policy
        if self._error is not None:
            raise PolicyError(self._error)
        try:
            policy = load_policy(self.path, self.name)
            policy.timeout_s = self.timeout_s
            await policy.initialize()
        except PolicyError as exc:
            self._error = str(exc)
            raise
        self._policy = policy
        return policy

    async def register(self) -> None:
        """Write the policy's declaration (or why it cannot run) to the registry."""
        store = from_environment()
        try:
            policy = await self.load()
        except PolicyError as exc:
            log.error("policy %s cannot run: %s", self.name, exc)
            registry.register_error(store, self.name, source=str(self.path), error=str(exc))
            return
        assert policy.declaration is not None
        news = registry.register(store, self.name, source=str(self.path), shape=policy.shape,
                                 declaration=policy.declaration)
        log.info("policy %s registered (%s shape, scope %s)", self.name, policy.shape, policy.declaration.scope)
        if news:
            await self._announce()

    async def _announce(self) -> None:
        """A new (or changed) policy is asked about what is there already: a `state.changed` of the continuum
        (`changed: [policy]`, extension `policy` = this one) makes the analyze stage run it for every
        application or node it binds to. Without it an application submitted before the policy registered
        would wait for its next change."""
        from mapemesh.serving import sink

        change = catalogue.StateChanged(asset="continuum", asset_kind="continuum", changed=["policy"])
        event = catalogue.make_event(change, SOURCE + self.name, subject="continuum", extensions={"policy": self.name})
        try:
            await sink.publish([event])
        except sink.SinkError as exc:  # no broker (a test, a policy served alone): the next change asks it
            log.warning("policy %s: could not ask for the analysis of existing assets: %s", self.name, exc)

    async def handle(self, event: CloudEvent) -> CloudEvent | None:
        """Answer an analyze or plan request for this policy; refuse anything else (what `stage` does)."""
        try:
            data = catalogue.parse_data(event)
        except catalogue.UnknownEventType:
            raise mapemesh.PermanentError(f"policy {self.name} does not take {event.type} events") from None
        except (ValidationError, ValueError) as exc:
            raise mapemesh.PermanentError(f"{event.type} {event.id}: invalid data: {exc}") from None
        if not isinstance(data, catalogue.PolicyAnalyzeRequested | catalogue.PolicyPlanRequested):
            raise mapemesh.PermanentError(f"policy {self.name} does not take {event.type} events")
        return await self.answer(data, event=event)

    def stage(self) -> Stage:
        """The function serving this policy: a typed handler for each of its two requests."""
        takes = (catalogue.PolicyAnalyzeRequested, catalogue.PolicyPlanRequested)
        handlers = {t.event_type: self.answer for t in takes}
        return Stage(f"policy:{self.name}", SOURCE + self.name, handlers, on_start=self.register)

    async def answer(self, data: catalogue.PolicyAnalyzeRequested | catalogue.PolicyPlanRequested, *,
                     event: CloudEvent) -> CloudEvent:
        """The policy's answer to one analyze or plan request (refused when it is for another policy)."""
        if data.policy != self.name:
            raise mapemesh.PermanentError(f"request for policy {data.policy!r} reached policy {self.name!r}")
        inputs: dict[str, Any] = {
            "context": data.context, "application_description": data.application_description,
            "system_description": data.system_description, "current_plan": data.current_plan,
            "mechanisms": data.mechanisms, "telemetry": data.telemetry, "ml_connector": None,
            "available_assets": getattr(data, "available_assets", []),
        }
        common = {"policy": self.name, "asset": data.asset, "request": event.id, "cause": data.cause,
                  "inputs": {"telemetry": (data.telemetry or {}).get("data") or {}}}
        try:
            policy = await self.load()
        except PolicyError as exc:
            answer: Any = PolicyFailure("initialize", str(exc), "")
        else:
            answer = await (policy.analyze(inputs) if isinstance(data, catalogue.PolicyAnalyzeRequested)
                            else policy.plan(inputs))
        reply: catalogue.EventData
        if isinstance(data, catalogue.PolicyAnalyzeRequested):
            planned: Any = None
            if not isinstance(answer, PolicyFailure) and answer[0]:
                # As MLSysOps does: a true verdict is followed at once by plan, on the same inputs.
                planned = await policy.plan({**inputs, "context": answer[1]})
                answer = planned if isinstance(planned, PolicyFailure) else answer
            if isinstance(answer, PolicyFailure):
                reply = catalogue.PolicyAnalyzeReplied(**common, verdict=False, context=data.context,
                                                       error=f"{answer.method}: {answer.error}",
                                                       traceback=answer.traceback or None)
            elif planned is not None:
                reply = catalogue.PolicyAnalyzeReplied(**common, verdict=True, plan=planned[0], context=planned[1])
            else:
                reply = catalogue.PolicyAnalyzeReplied(**common, verdict=answer[0], context=answer[1])
        elif isinstance(answer, PolicyFailure):
            reply = catalogue.PolicyPlanReplied(**common, context=data.context,
                                                error=f"{answer.method}: {answer.error}",
                                                traceback=answer.traceback or None)
        else:
            reply = catalogue.PolicyPlanReplied(**common, plan=answer[0], context=answer[1])
        try:
            return catalogue.make_event(reply, SOURCE + self.name, subject=data.asset,
                                        extensions={"policy": self.name})
        except (ValueError, TypeError) as exc:  # pydantic's serialization errors are ValueErrors
            # A context or plan holding something JSON cannot carry (a numpy float, an object): the policy's fault.
            failed = reply.model_copy(update={
                "context": data.context, "plan": None if isinstance(reply, catalogue.PolicyAnalyzeReplied) else {},
                "error": f"{type(exc).__name__}: the answer is not JSON-serializable: {exc}"[:2000],
                **({"verdict": False} if isinstance(reply, catalogue.PolicyAnalyzeReplied) else {})})
            return catalogue.make_event(failed, SOURCE + self.name, subject=data.asset,
                                        extensions={"policy": self.name})


def policy_function(path: Path, name: str, timeout_s: float = 30.0) -> Stage:
    """The mapemesh function serving the policy file at `path` as policy `name`.

    The local host registers the policy when each process starts (`on_start`). In a container on Knative
    (`K_SERVICE` is set when functions-framework imports this, outside the local fork server) it registers
    at import, in the background, so that a new revision registers before any request: the analyze stage
    only asks registered policies.
    """
    served = PolicyFunction(path, name, timeout_s).stage()
    s = settings.current()
    if s.k_service and not s.zygote_import:
        served.start_soon()
    return served
