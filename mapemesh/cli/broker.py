"""`mapemesh broker`: run the embedded broker alone."""

from __future__ import annotations

from pathlib import Path

import click

from mapemesh.aio import run
from mapemesh.cli._common import settings


@click.group()
def broker() -> None:
    """The embedded Knative-compatible broker."""


@broker.command()
@click.option("--manifests", type=click.Path(path_type=Path), default=None,
              help="Directory of Knative manifests (Broker objects) [env MAPEMESH_MANIFESTS; default knative].")
@click.option("--data", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Data directory (durable log, endpoints.json) [default: the global --data].")
@click.option("--host", default=None, help="Address to bind [env MAPEMESH_HOST; default 127.0.0.1].")
@click.option("--port", type=int, default=None,
              help="Port to bind, 0 for any free one [env MAPEMESH_BROKER_PORT; default 8080].")
@click.option("--max-event-bytes", type=int, default=None,
              help="Largest accepted request body [env MAPEMESH_MAX_EVENT_BYTES; default 1 MiB, min 64 KiB].")
@click.option("--durability", type=click.Choice(["fsync", "os"]), default=None,
              help="fsync: a 202 survives power loss; os: it survives a broker crash "
                   "[env MAPEMESH_DURABILITY; default fsync].")
@click.pass_context
def serve(ctx: click.Context, manifests: Path | None, data: Path | None, host: str | None, port: int | None,
          max_event_bytes: int | None, durability: str | None) -> None:
    """Serve the broker ingress: POST /NAMESPACE/BROKER accepts CloudEvents into the durable log."""
    from mapemesh.eventing.server import serve_broker

    s = settings(ctx, data=data, manifests=manifests, host=host, broker_port=port,
                 max_event_bytes=max_event_bytes, durability=durability)
    if not s.manifests.exists():
        raise click.UsageError(f"manifests directory {s.manifests} does not exist")
    run(serve_broker(s))
