"""A bucket's Storage Policy changing while the bucket stays in use: its objects move to the new code in the
background, each doing only the work the change needs.

| old -> new                        | an object's work                                                             |
|-----------------------------------|------------------------------------------------------------------------------|
| same k, fewer parity (5+2 -> 5+1) | none written: the extra fragments are dropped                                |
| same k, more parity (3+1 -> 3+2)  | the new parity fragments computed from any k (`codec.extend`) and written    |
| same code, other locations        | the fragments whose location changed copied there                            |
| another k (3+1 -> 4+1)            | re-coded: read, decoded, encoded anew, every fragment written                |

Each object's metadata is swapped in one versioned write once its new fragments are all written, then the
fragments it no longer uses are deleted. Writes go to the new policy from the moment it is set, and an object
rewritten during its migration keeps its new version (the swap loses the race and its fragments are deleted):
reads and writes go on throughout. Progress is in the bucket's document (`migration`: target, total, done,
failed, started, finished) and in `io.mapemesh.storage.migration.v1` events.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from mapemesh import events as catalogue
from mapemesh.state import Conflict, update
from mapemesh.storage import codec
from mapemesh.storage.gateway import ECStore, fragment_key

log = logging.getLogger(__name__)
REPORT_EVERY = 20
MAX_SWEEPS = 3
Report = Callable[[catalogue.EventData], Awaitable[None]]


def _same(doc: dict[str, Any], policy: dict[str, Any]) -> bool:
    placed = [p["location"] for p in sorted(doc["fragments"], key=lambda p: p["i"])]
    return int(doc["k"]) == int(policy["k"]) and placed == list(policy["locations"])


async def migrate_object(ec: ECStore, stored: Any, policy: dict[str, Any]) -> bool:
    """Move one object (its versioned document) to `policy`; False when it changed meanwhile (nothing to do)."""
    doc = stored.value
    if _same(doc, policy):
        return True
    k, m, locations = int(policy["k"]), int(policy["m"]), list(policy["locations"])
    version = uuid.uuid4().hex
    bucket, key = doc["bucket"], doc["key"]
    old = {int(p["i"]): p for p in doc["fragments"]}
    written: list[dict[str, Any]] = []
    if k == int(doc["k"]):
        placed, fresh = [], {}
        for i in range(k + m):
            if i in old and old[i]["location"] == locations[i]:
                placed.append(old[i])  # stays where it is: nothing to do
            else:
                fresh[i] = {"i": i, "location": locations[i], "key": fragment_key(bucket, key, version, i)}
        if fresh:
            have = await ec.read(doc)
            moved = {i: have[i] for i in fresh if i in have}
            missing = [i for i in fresh if i not in have]
            if missing:
                moved.update(await asyncio.to_thread(codec.extend, have, k, int(doc["padlen"]), missing))
            await ec.write(list(fresh.values()), moved)
            written = list(fresh.values())
            placed += written
        new = {**doc, "fragments": sorted(placed, key=lambda p: p["i"])}
    else:
        data = await asyncio.to_thread(codec.decode, await ec.read(doc), int(doc["k"]), int(doc["padlen"]))
        fragments, padlen = await asyncio.to_thread(codec.encode, data, k, m)
        written = [{"i": i, "location": locations[i], "key": fragment_key(bucket, key, version, i)}
                   for i in range(k + m)]
        await ec.write(written, fragments)
        new = {**doc, "k": k, "padlen": padlen, "fragments": written}
    try:
        ec.store.put("objects", f"{bucket}/{key}", new, expected_version=stored.version)
    except Conflict:
        await ec.forget(written)  # rewritten or deleted meanwhile: its new version is the one to keep
        return False
    kept = {p["key"] for p in new["fragments"]}
    await ec.forget([p for p in doc["fragments"] if p["key"] not in kept or p not in new["fragments"]])
    return True


async def migrate(ec: ECStore, bucket: str, policy: dict[str, Any], report: Report | None = None) -> dict[str, Any]:
    """Move every object of `bucket` to `policy` (already the bucket's); the migration's final record."""
    head = f"{bucket}/"
    keys = sorted(k for k in ec.store.list("objects") if k.startswith(head))
    state = {"target": policy, "total": len(keys), "done": 0, "failed": 0, "started": time.time(), "finished": None}

    async def record(final: bool = False) -> None:
        if final:
            state["finished"] = time.time()
        update(ec.store, "buckets", bucket, lambda d: None if d is None else {**d, "migration": dict(state)})
        if report is not None:
            await report(catalogue.StorageMigration(bucket=bucket, k=int(policy["k"]), m=int(policy["m"]),
                                                    locations=list(policy["locations"]), total=state["total"],
                                                    done=state["done"], failed=state["failed"], finished=final))

    await record()
    for _ in range(MAX_SWEEPS):
        for key in keys:
            if ec.bucket(bucket)["policy"] != policy:
                log.info("bucket %s: its policy changed again; this migration stops", bucket)
                await record(final=True)
                return state
            current = ec.store.get("objects", key)
            if current is not None:
                try:
                    await migrate_object(ec, current, policy)
                except Exception as exc:  # a location down, say: the object stays on its old code (still readable)
                    state["failed"] += 1
                    log.warning("migrating %s to %s failed: %s", key, policy, exc)
            state["done"] += 1
            if state["done"] % REPORT_EVERY == 0:
                await record()
        # A put that read the old policy just before it changed may land after the listing: sweep again.
        keys = sorted(k for k, v in ec.store.list("objects").items()
                      if k.startswith(head) and not _same(v.value, policy))
        if not keys or state["failed"]:
            break
        state["total"] += len(keys)
    await record(final=True)
    return state
