"""`mapemesh storage`: the S3 gateway whose objects are erasure coded across locations (seed section 4)."""

from __future__ import annotations

import json
import sys
import time
import urllib.request
from pathlib import Path

import click

from mapemesh.cli._common import broker_target, settings


@click.group("storage")
def storage() -> None:
    """The storage gateway: S3 over erasure-coded fragments in several locations, its Storage Policy a knob."""


@storage.command("serve")
@click.option("--locations", "locations_file", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="The locations file (YAML) [env MAPEMESH_STORAGE_LOCATIONS].")
@click.option("--data", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Data directory (state store, multipart parts) [default: the global --data].")
@click.option("--name", default=None, help="The gateway's node name in the mesh [env MAPEMESH_STORAGE_NAME].")
@click.option("--host", default=None, help="Address to listen on [env MAPEMESH_HOST].")
@click.option("--port", type=click.IntRange(0, 65535), default=None, help="S3 port [env MAPEMESH_STORAGE_PORT].")
@click.option("--control-port", type=click.IntRange(0, 65535), default=0, show_default=True,
              help="Port of the control face (StoragePolicy commands, status; 0 picks a free one).")
@click.option("--broker", default=None, metavar="URL",
              help="Broker ingress for its events [default: K_SINK, else the mesh in DATA_DIR, /default/default].")
@click.pass_context
def serve(ctx: click.Context, locations_file: Path | None, data: Path | None, name: str | None, host: str | None,
          port: int | None, control_port: int, broker: str | None) -> None:
    """Serve the gateway until Ctrl-C or SIGTERM.

    Exit status: 0 stopped, 2 bad arguments or locations file.
    """
    from mapemesh import endpoints
    from mapemesh.aio import run
    from mapemesh.state import open_store
    from mapemesh.storage.locations import LayoutError, load
    from mapemesh.storage.service import Gateway, serve_gateway

    s = settings(ctx, data=data, host=host, storage_locations=str(locations_file or "") or None,
                 storage_name=name, storage_port=port)
    if not s.storage_locations:
        raise click.UsageError("give --locations FILE (or MAPEMESH_STORAGE_LOCATIONS)")
    try:
        layout = load(Path(s.storage_locations))
    except LayoutError as exc:
        raise click.UsageError(str(exc)) from None
    found = endpoints.read(s.data)
    target = broker_target(s, broker)
    gateway = Gateway(s.storage_name or "storage-gateway", layout, open_store(s.state, data=s.data), s.data,
                      broker=target, manifests=s.deployed_manifests if "broker" in found else None, host=s.host,
                      port=s.storage_port, control_port=control_port, telemetry_every_s=s.telemetry_interval_s)
    run(serve_gateway(gateway))


@storage.command("status")
@click.argument("bucket", required=False)
@click.option("--data", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Data directory of the mesh [default: the global --data].")
@click.option("--watch", "follow", is_flag=True, help="Follow a migration until it is finished.")
@click.option("--output", "-o", type=click.Choice(["human", "json"]), default="human", show_default=True)
@click.pass_context
def status(ctx: click.Context, bucket: str | None, data: Path | None, follow: bool, output: str) -> None:
    """Each bucket's Storage Policy and the progress of its migration (a bar in a terminal).

    Exit status: 0 shown, 3 no gateway recorded in DATA_DIR (or it does not answer), 4 no such bucket.
    """
    from mapemesh import endpoints

    s = settings(ctx, data=data)
    control = endpoints.read(s.data).get("storage-control")
    if not control:
        click.echo(f"Error: no storage gateway recorded in {s.data} (mapemesh storage serve)", err=True)
        ctx.exit(3)
    while True:
        try:
            with urllib.request.urlopen(f"{control}/status", timeout=10) as answer:
                doc = json.loads(answer.read())
        except OSError as exc:
            click.echo(f"Error: the storage gateway at {control} does not answer: {exc}", err=True)
            ctx.exit(3)
        if bucket is not None and bucket not in doc:
            click.echo(f"Error: no bucket {bucket}", err=True)
            ctx.exit(4)
        shown = {bucket: doc[bucket]} if bucket else doc
        if output == "json":
            click.echo(json.dumps(shown, indent=2))
            return
        lines = [_line(name, row) for name, row in shown.items()]
        if sys.stdout.isatty() and follow:
            click.echo("\r\x1b[K" + " | ".join(lines), nl=False)
        else:
            click.echo("\n".join(lines) or "no buckets")
        running = any((row.get("migration") or {}).get("finished") is None and row.get("migration")
                      for row in shown.values())
        if not follow or not running:
            if sys.stdout.isatty() and follow:
                click.echo()
            return
        time.sleep(0.5)


def _line(name: str, row: dict) -> str:  # type: ignore[type-arg]
    policy = row.get("policy") or {}
    text = f"{name}: {policy.get('k')}+{policy.get('m')} on {', '.join(policy.get('locations') or [])}"
    migration = row.get("migration")
    if migration:
        done, total = int(migration.get("done") or 0), int(migration.get("total") or 0)
        width = 30
        filled = width if not total else width * done // total
        bar = "#" * filled + "." * (width - filled)
        state = "done" if migration.get("finished") else "migrating"
        failed = f", {migration['failed']} failed" if migration.get("failed") else ""
        text += f"  [{bar}] {done}/{total} {state}{failed}"
    return text
