"""The state store: what the stateless functions know (applications, infrastructure, plans and their
statuses, policy contexts, mechanism states and options, management mode, telemetry windows).

One interface (`StateStore`), two implementations: SQLite (the default, a file under the data directory,
shared by every function process on the machine) and Redis (clusters). Documents carry a version; a write
can require the version it read (`expected_version`), so concurrent functions cannot lose each other's
updates: the loser gets `Conflict` and `update()` retries it on fresh data. Several documents are read in one
round trip (`get_many`) and written in one transaction (`commit`, and `update_many` over both), so a stage that
touches several pays two round trips, not two per document.
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
