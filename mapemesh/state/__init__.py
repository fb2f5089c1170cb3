"""The state store: what the stateless functions know (applications, infrastructure, plans and their
statuses, policy contexts, mechanism states and options, management mode, telemetry windows).

One interface (`StateStore`), two implementations: SQLite (the default, a file under the data directory,
shared by every function process on the machine) and Redis (clusters). Documents carry a version; a write
can require the version it read (`expected_version`), so concurrent functions cannot lose each other's
updates. Several documents are read in one round trip (`get_many`, or `snapshot` with a telemetry window) and
written in one transaction (`commit`). `update()` and `update_many()` read, change and write back atomically
(`transact`): on SQLite in one write transaction, one round trip; on Redis a read and a versioned commit, retried
on fresh data when the loser gets `Conflict`. So a stage that touches several documents pays one round trip (two on
Redis), not two per document.
"""

from functools import cache

from mapemesh.state.base import (
    KINDS,
    Conflict,
    Ref,
    StateStore,
    Versioned,
    Write,
    open_store,
    update,
    update_many,
)

__all__ = ["KINDS", "Conflict", "Ref", "StateStore", "Versioned", "Write", "from_environment", "open_store", "update",
           "update_many"]


@cache
def from_environment() -> StateStore:
    """The store a function process is given: MAPEMESH_STATE in MAPEMESH_DATA (set by the function host)."""
    from mapemesh.settings import current

    s = current()
    return open_store(s.state, data=s.data, retention_s=s.telemetry_retention_s)
