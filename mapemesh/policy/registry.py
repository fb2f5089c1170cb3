"""The policy registry: which policies the loop runs, what each declared, and how each is doing.

One document per policy in the state store (kind `policies`), written by the policy's own function when a
process of it starts (it runs `initialize` there) and by `mapemesh policy deploy`; the analyze stage reads it
to know which policies to ask, and the plan stage records each answer. `mapemesh policy list` shows it.
"""

from __future__ import annotations

import time
from typing import Any

from mapemesh.policy.loader import Declaration
from mapemesh.state.base import StateStore, update

KEEP_FAILURES = 5
"""How many recent failures (with their tracebacks) a policy's document keeps."""


def register(store: StateStore, name: str, *, source: str, shape: str, declaration: Declaration) -> bool:
    """Record (or refresh) a policy and its declaration; its history is kept. Whether it is new, changed (its
    source or declaration) or was not active before: then the assets it binds to are to be analysed again."""
    news = [True]

    def change(doc: dict[str, Any] | None) -> dict[str, Any]:
        news[0] = doc is None or doc.get("status") != "active" or doc.get("source") != source or \
            doc.get("declaration") != declaration.as_dict()
        doc = doc or {"name": name, "analyses": 0, "verdicts": 0, "plans": 0, "failures": 0, "recent_failures": []}
        doc.update(source=source, shape=shape, declaration=declaration.as_dict(), registered=time.time(),
                   status="active", error=None)
        return doc

    update(store, "policies", name, change)
    return news[0]


def register_error(store: StateStore, name: str, *, source: str, error: str) -> None:
    """Record that a policy cannot run (it does not load, or its initialize fails)."""

    def change(doc: dict[str, Any] | None) -> dict[str, Any]:
        doc = doc or {"name": name, "analyses": 0, "verdicts": 0, "plans": 0, "failures": 0, "recent_failures": []}
        doc.update(source=source, status="error", error=error, registered=time.time())
        return doc

    update(store, "policies", name, change)


def record(store: StateStore, name: str, *, asset: str, method: str, verdict: bool | None = None,
           planned: bool = False, error: str | None = None, traceback: str | None = None,
           skipped: str | None = None) -> None:
    """Count one answer (or failure, or skip) of a policy for an asset."""
    now = time.time()

    def change(doc: dict[str, Any] | None) -> dict[str, Any] | None:
        if doc is None:
            return None  # unregistered meanwhile: nothing to count against
        if skipped is not None:
            doc["skipped"] = {"reason": skipped, "asset": asset, "at": now}
            return doc
        doc.pop("skipped", None)
        if error is not None:
            doc["failures"] = int(doc.get("failures", 0)) + 1
            failure = {"at": now, "asset": asset, "method": method, "error": error, "traceback": traceback}
            doc["recent_failures"] = [failure, *(doc.get("recent_failures") or [])][:KEEP_FAILURES]
            doc["last_verdict"] = {"at": now, "asset": asset, "method": method, "verdict": None, "error": error}
            return doc
        if method == "analyze":
            doc["analyses"] = int(doc.get("analyses", 0)) + 1
            doc["verdicts"] = int(doc.get("verdicts", 0)) + (1 if verdict else 0)
            doc["last_verdict"] = {"at": now, "asset": asset, "method": method, "verdict": verdict}
        elif planned:
            doc["plans"] = int(doc.get("plans", 0)) + 1
        return doc

    update(store, "policies", name, change)


def active(store: StateStore) -> dict[str, tuple[Declaration, dict[str, Any]]]:
    """Each runnable policy: its declaration and its registry document."""
    out = {}
    for name, versioned in store.list("policies").items():
        doc = versioned.value
        if doc.get("status") == "active" and isinstance(doc.get("declaration"), dict):
            out[name] = (Declaration.from_dict(doc["declaration"]), doc)
    return out


def stats(store: StateStore, name: str, doc: dict[str, Any] | None = None) -> dict[str, Any]:
    """Policy `name`'s registry document with its counts: the registry's own (failures, skips) and those the
    plan stage keeps per asset in the policy contexts (analyses, verdicts, plans, the newest verdict), summed."""
    found = store.get("policies", name) if doc is None else None
    out = dict(doc if doc is not None else (found.value if found else {}))
    totals = {"analyses": int(out.get("analyses", 0)), "verdicts": int(out.get("verdicts", 0)),
              "plans": int(out.get("plans", 0))}
    last = out.get("last_verdict")
    for context_key, versioned in store.list("policy_contexts").items():
        if context_key.split("/", 1)[0] != name:
            continue
        value = versioned.value
        for field in totals:
            totals[field] += int(value.get(field, 0))
        mine = value.get("last_verdict")
        if mine and (not last or float(mine.get("at", 0)) > float(last.get("at", 0))):
            last = mine
    out.update(totals)
    if last:
        out["last_verdict"] = last
        skipped = out.get("skipped")
        if skipped and float(last.get("at", 0)) > float(skipped.get("at", 0)):
            out.pop("skipped")  # asked since it was skipped
    return out
