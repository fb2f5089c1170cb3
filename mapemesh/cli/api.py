"""`mapemesh api serve`: the northbound API alone, as a cluster runs it (a Deployment beside Knative)."""

from __future__ import annotations

from pathlib import Path

import click

from mapemesh.aio import run, stop_signals, until_stopped
from mapemesh.cli._common import broker_target, settings


@click.group("api")
def api() -> None:
    """The northbound API (MLSysOps routes); `mapemesh up` runs one itself."""


@api.command("serve")
@click.option("--data", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Data directory: api.token (made when absent) and the event feed's log [default: the global "
                   "--data].")
@click.option("--host", default=None, help="Address to bind [env MAPEMESH_HOST; default 127.0.0.1].")
@click.option("--port", type=int, default=None, help="Port, 0 for any [env MAPEMESH_API_PORT; default 8083].")
@click.option("--broker", default=None, metavar="URL",
              help="Where actions go, a broker ingress URL [default: K_SINK (a SinkBinding's), else the broker in "
                   "DATA_DIR/endpoints.json].")
@click.option("--events-port", type=int, default=-1, show_default=True,
              help="Also take the mesh's events on this port (a Trigger's subscriber) for /events/stream; -1: none, "
                   "the stream then reads the embedded broker's log in DATA_DIR.")
@click.pass_context
def serve(ctx: click.Context, data: Path | None, host: str | None, port: int | None, broker: str | None,
          events_port: int) -> None:
    """Serve the API until Ctrl-C or SIGTERM. Actions become CloudEvents posted to the broker, one per request;
    reads come from the state store (MAPEMESH_STATE)."""
    from mapemesh.api.server import start_api

    s = settings(ctx, data=data, host=host, api_port=port)
    if s.api_port < 0:
        raise click.UsageError("--port must be 0..65535")
    target = broker_target(s, broker)
    if not target:
        raise click.UsageError("no broker: give --broker URL, or set K_SINK (a SinkBinding does on a cluster)")

    async def main() -> None:
        stop = stop_signals()  # a SIGTERM while starting still stops cleanly
        feed = None
        if events_port >= 0:
            from mapemesh.api.feed import start_feed

            feed = await start_feed(s.event_log_file, s.host, events_port)
        running = await start_api(s, target)
        click.echo(f"northbound API on {running.url} (actions to {target}; token in {s.data / 'api.token'}"
                   + (f"; event feed on {feed.url}" if feed else "") + ")", err=True)
        try:
            await until_stopped(stop)
        finally:
            await running.stop()
            if feed is not None:
                await feed.stop()

    run(main())
