"""`mapemesh trace ID`: the causal chain of a reaction, from the mesh's own log."""

from __future__ import annotations

import json
from pathlib import Path

import click

from mapemesh.cli._common import settings

EXIT_NOT_FOUND = 4


@click.command("trace")
@click.argument("ident", metavar="ID")
@click.option("--data", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Data directory of the mesh [default: the global --data].")
@click.option("--output", "-o", type=click.Choice(["human", "json"]), default="human", show_default=True)
@click.pass_context
def trace(ctx: click.Context, ident: str, data: Path | None, output: str) -> None:
    """Print the causal chain of ID (an event id, a plan id or a trace id): every event from the first cause to the
    last effect, which Trigger and function made each one, and each hop's latency.

    Read from the broker's log in DATA_DIR (events are kept MAPEMESH_LOG_RETENTION_S after they are handled); no
    collector needed. Exit status: 0 shown, 3 no log, 4 nothing with that id.
    """
    from mapemesh.eventing.chain import TraceNotFound, find, summary
    from mapemesh.eventing.log import open_readonly

    s = settings(ctx, data=data)
    if not s.event_log_file.exists():
        click.echo(f"Error: no event log at {s.event_log_file} (a mesh's DATA_DIR holds one)", err=True)
        ctx.exit(3)
    db = open_readonly(s.event_log_file)
    try:
        found = find(db, ident)
    except TraceNotFound as exc:
        click.echo(f"Error: {exc}", err=True)
        ctx.exit(EXIT_NOT_FOUND)
    finally:
        db.close()
    if output == "json":
        click.echo(json.dumps(found.to_dict(), indent=2))
        return
    click.echo(f"trace {found.trace_id}: {len(found.steps)} events, {found.end_to_end_ms:.2f} ms end to end")
    click.echo(f"{'at':>10} {'hop':>9}  event")

    def show(step, depth: int) -> None:  # type: ignore[no-untyped-def]
        event = step.logged.event
        offset = (step.logged.received_ns - found.root.logged.received_ns) / 1e6
        hop = f"{step.latency_ms:8.2f}ms" if step.parent else " " * 10
        by = ""
        if step.via:
            by = f"{step.via.split('/')[-1]} ({step.label}) -> "
        said = summary(event)
        extra = " ".join([*(f"{k}={event.get(k)}" for k in ("subject", "policy", "node") if event.get(k) is not None),
                          *(f"{k}={_short(v)}" for k, v in said.items())])
        click.echo(f"+{offset:8.2f}ms {hop} {'  ' * depth}{by}{event.type} {extra}".rstrip())
        for child in sorted(step.children, key=lambda s: s.logged.received_ns):
            show(child, depth + 1)

    show(found.root, 0)


def _short(value: object, width: int = 72) -> str:
    """A value as compact JSON, cut at `width` characters (`-o json` has it whole)."""
    text = json.dumps(value, separators=(",", ":"))
    return text if len(text) <= width else text[:width - 3] + "..."
