"""Mechanism adapters: functions that apply a cluster's mechanism by calling an outside system's HTTP API (a 5G
core's slice configuration for `UPFSelect`, a datacenter scheduler's order for `JobOrder`), answering as a node
shim does.

| call                                     | does                                                                    |
|------------------------------------------|-------------------------------------------------------------------------|
| `endpoint(store, mechanism, asset)`      | the API's base URL for the asset's cluster, from the endpoints file     |
| `applied(event, data, before, after)`    | the `knob.applied` answer, signed by this function's identity           |
| `failed(event, data, code, error)`       | the `knob.failed` answer, signed likewise                               |
| `document(answer)`                       | an answer's JSON object (`Malformed` when it is not one)                |
| `await through(event, data, source,      | `exchange(client, api)` run against the asset's API (`endpoint`: none   |
| store, what, exchange)`                  | is `unsupported`), giving the state before and after, read back:        |
|                                          | `applied`, or `failed` (`Refused`: invalid; no                          |
|                                          | answer in time: timeout; an error answer, a malformed one or a wrong    |
|                                          | read-back: hardware)                                                    |

Time: each HTTP call may take CALL_TIMEOUT_S (5 s) and the whole exchange (up to four calls) DEADLINE_S (20 s), so
an adapter answers `knob.applied` or `knob.failed` well inside its Trigger's delivery timeout (PT30S in
knative/base/upf.yaml and jobs.yaml): a slow API ends as a `timeout` failure, not as a delivery the broker gave up.

The endpoints file (YAML; the one MAPEMESH_MECHANISM_ENDPOINTS names, a ConfigMap mounted in a cluster) maps each
mechanism to its API per cluster: `{UPFSelect: {CLUSTER: URL}, JobOrder: {CLUSTER: URL}}`. An asset's cluster is
the `cluster_id` of its registered `MLSysOpsNode` description (its own name when it has none). The file is read
on each command, so an operator's edit holds from the next one. The URL comes from the operator's file, never from
a registration: whoever may register infrastructure may not point an adapter at an address of their choosing.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import yaml

from mapemesh import events as catalogue
from mapemesh import settings
from mapemesh.eventing.cloudevent import CloudEvent
from mapemesh.identity.guard import sign_as
from mapemesh.state import StateStore
from mapemesh.tls import client_context

ENDPOINTS_ENV = "MAPEMESH_MECHANISM_ENDPOINTS"
CALL_TIMEOUT_S = 5.0
"""One HTTP call's limit (connect, read, write, pool)."""
DEADLINE_S = 20.0
"""The whole exchange's limit: well inside the adapters' Trigger delivery timeout (PT30S)."""


class Unconfigured(LookupError):
    """No endpoint for the asset's cluster."""


class Refused(ValueError):
    """The outside system refused the command as wrong (an unknown UE, another batch): the command's fault."""


class Unapplied(RuntimeError):
    """The outside system accepted the command but reads back something else."""


class Malformed(ValueError):
    """The outside system answered, but not with the document its API describes."""


def document(answer: httpx.Response) -> dict[str, Any]:
    """The answer's JSON object; HTTPStatusError on an error status, Malformed when the body is not a JSON object."""
    answer.raise_for_status()
    try:
        doc = answer.json()
    except ValueError:
        raise Malformed(f"{answer.request.method} {answer.request.url.path} answered no JSON") from None
    if not isinstance(doc, dict):
        raise Malformed(f"{answer.request.method} {answer.request.url.path} answered a JSON "
                        f"{type(doc).__name__}, not an object")
    return doc


def cluster_of(store: StateStore, asset: str) -> str:
    """The cluster the asset belongs to, as its registration says (the asset's own name otherwise)."""
    doc = store.get("infrastructure", asset)
    node = ((doc.value.get("description") or {}).get("MLSysOpsNode") or {}) if doc is not None else {}
    return str(node.get("cluster_id") or asset)


def endpoint(store: StateStore, mechanism: str, asset: str) -> str:
    """The base URL of `mechanism`'s API for `asset`'s cluster; Unconfigured when the file names none."""
    path = settings.current().mechanism_endpoints
    if not path:
        raise Unconfigured(f"{ENDPOINTS_ENV} names no endpoints file, so {mechanism} has no API to call")
    try:
        doc = yaml.safe_load(Path(path).read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise Unconfigured(f"endpoints file {path}: {exc}") from None
    cluster = cluster_of(store, asset)
    url = ((doc.get(mechanism) or {}) if isinstance(doc, dict) else {}).get(cluster)
    if not url:
        raise Unconfigured(f"endpoints file {path} names no {mechanism} API for cluster {cluster}")
    return str(url).rstrip("/")


def _answer(data: catalogue.KnobApplied | catalogue.KnobFailed, source: str) -> CloudEvent:
    node = data.node
    out = catalogue.make_event(data, source, subject=node, extensions={"node": node})
    name = settings.current().identity
    return sign_as(out, name) if name else out  # the result's reporter, verifiable


def applied(event: CloudEvent, data: catalogue.KnobApply, before: dict[str, Any], after: dict[str, Any],
            source: str) -> CloudEvent:
    """The command's result: the mechanism's state before and after (read back)."""
    return _answer(catalogue.KnobApplied(node=data.node, knob=data.knob, request=event.id, plan_id=data.plan_id,
                                                before=before, after=after, noop=before == after), source)


def failed(event: CloudEvent, data: catalogue.KnobApply, code: str, error: str, source: str) -> CloudEvent:
    """The command's failure (`code` as the node shim's: invalid, unsupported, hardware, timeout, ...)."""
    return _answer(catalogue.KnobFailed(node=data.node, knob=data.knob, request=event.id, plan_id=data.plan_id,
                                               code=code, error=error), source)  # type: ignore[arg-type]


async def through(event: CloudEvent, data: catalogue.KnobApply, source: str, store: StateStore, what: str,
                  exchange: Callable[[httpx.AsyncClient, str], Awaitable[tuple[dict[str, Any], dict[str, Any]]]]
                  ) -> CloudEvent:
    """Apply the command with `exchange` against `what` at the asset's API for the command's mechanism (within
    DEADLINE_S), and answer as a node shim does."""
    try:
        api = endpoint(store, data.knob, data.node)
    except Unconfigured as exc:
        return failed(event, data, "unsupported", str(exc), source)
    try:
        async with asyncio.timeout(DEADLINE_S), \
                httpx.AsyncClient(timeout=CALL_TIMEOUT_S, verify=client_context()) as client:
            before, after = await exchange(client, api)
    except Refused as exc:
        return failed(event, data, "invalid", f"{what} refused it: {exc}", source)
    except httpx.TimeoutException as exc:
        return failed(event, data, "timeout", f"{what} at {api} did not answer in {CALL_TIMEOUT_S:g} s: {exc}",
                      source)
    except TimeoutError:
        return failed(event, data, "timeout", f"{what} at {api} did not finish in {DEADLINE_S:g} s", source)
    except (httpx.HTTPError, ValueError, Unapplied) as exc:
        return failed(event, data, "hardware", f"{what} at {api}: {exc}", source)
    return applied(event, data, before, after, source)
