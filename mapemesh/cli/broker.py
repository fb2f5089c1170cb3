"""`mapemesh broker`: run the embedded broker alone."""

from __future__ import annotations

import json
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
@click.option("--log-retention", "log_retention_s", type=int, default=None, metavar="SECONDS",
              help="How long handled events stay in the log [env MAPEMESH_LOG_RETENTION_S; default 60].")
@click.option("--accept-batch/--no-accept-batch", default=None,
              help="Also take application/cloudevents-batch+json requests, a mapemesh-only extension (Knative's "
                   "ingress answers 400 to them) [env MAPEMESH_ACCEPT_BATCH; default off].")
@click.pass_context
def serve(ctx: click.Context, manifests: Path | None, data: Path | None, host: str | None, port: int | None,
          max_event_bytes: int | None, durability: str | None, log_retention_s: int | None,
          accept_batch: bool | None) -> None:
    """Serve the broker ingress: POST /NAMESPACE/BROKER accepts CloudEvents into the durable log."""
    from mapemesh.eventing.server import serve_broker

    s = settings(ctx, data=data, manifests=manifests, host=host, broker_port=port,
                 max_event_bytes=max_event_bytes, durability=durability, log_retention_s=log_retention_s,
                 accept_batch=accept_batch)
    if not s.manifests.exists():
        raise click.UsageError(f"manifests directory {s.manifests} does not exist")
    run(serve_broker(s))


@broker.command()
@click.option("--broker", "broker_url", default=None, metavar="URL",
              help="The broker's base URL [default: the broker in DATA_DIR/endpoints.json].")
@click.option("--output", "-o", type=click.Choice(["human", "json"]), default="human", show_default=True)
@click.pass_context
def stats(ctx: click.Context, broker_url: str | None, output: str) -> None:
    """Show each trigger: ready or why not, and its accepted/delivered/retried/dead-lettered/dropped counts.

    Exit status: 0 shown, 3 broker unreachable.
    """
    import httpx

    from mapemesh.cli.events import EXIT_UNREACHABLE, broker_base

    base = broker_base(ctx, broker_url)
    try:
        doc = httpx.get(f"{base}/stats", timeout=10).raise_for_status().json()
    except httpx.HTTPError as exc:
        click.echo(f"error: cannot read stats from {base}: {exc}", err=True)
        ctx.exit(EXIT_UNREACHABLE)
    if output == "json":
        click.echo(json.dumps(doc, indent=2))
        return
    rows = doc["triggers"]
    if not rows:
        click.echo("no triggers")
    header = ("TRIGGER", "READY", "ACCEPTED", "DELIVERED", "RETRIED", "DEAD-LETTERED", "DROPPED", "P50", "P99")
    table = [header]
    for key, r in rows.items():
        lat = r.get("latency") or {}
        table.append((key, "yes" if r["ready"] else "NO", *(str(r[k]) for k in (
            "accepted", "delivered", "retried", "dead_lettered", "dropped")),
            _ms(lat.get("p50_s")), _ms(lat.get("p99_s"))))
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    for row in table:
        click.echo("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
    for key, r in rows.items():
        if not r["ready"]:
            click.echo(f"{key} not ready: {r['reason']}")
    log_stats = doc.get("log", {})
    click.echo(f"log: {log_stats.get('appended', 0)} events appended since the broker started")


def _ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"<={seconds * 1000:g}ms"
