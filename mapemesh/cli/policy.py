"""`mapemesh policy`: work on policies (so far: test one offline against recorded events)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from mapemesh.aio import run


@click.group()
def policy() -> None:
    """Policies: MLSysOps policy files (initialize, analyze, plan)."""


@policy.command("test")
@click.argument("path", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--events", "events_file", required=True,
              type=click.Path(exists=True, dir_okay=False, path_type=Path, allow_dash=True),
              help="Recorded events, one structured CloudEvent (JSON) per line; '-' reads standard input.")
@click.option("--output", "-o", type=click.Choice(["human", "json"]), default="human", show_default=True)
def test(path: Path, events_file: Path, output: str) -> None:
    """Replay recorded events through the policy at PATH offline and print the plans it would make.

    Exit status: 0 the policy ran cleanly, 1 it failed on some event (shown), 2 bad usage.
    """
    from mapemesh.eventing.binding import from_structured
    from mapemesh.eventing.cloudevent import MalformedEvent
    from mapemesh.policy import PolicyError, load_policy
    from mapemesh.policy.replay import replay

    text = sys.stdin.read() if str(events_file) == "-" else events_file.read_text(encoding="utf-8")
    events = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            events.append(from_structured(json.loads(line)))
        except (ValueError, MalformedEvent) as exc:
            raise click.UsageError(f"{events_file} line {number}: not a structured CloudEvent: {exc}") from None
    try:
        result = run(replay(load_policy(path), events))
    except PolicyError as exc:
        raise click.UsageError(str(exc)) from None
    if output == "json":
        click.echo(json.dumps(result.as_dict(), indent=2))
    else:
        click.echo(f"{result.events} events, {result.analyses} analyses ({result.spaced} skipped by "
                   f"analyze_interval), {len(result.plans)} plan(s), {len(result.failures)} failure(s)")
        for p in result.plans:
            click.echo(f"  plan {p.plan_id[:8]} for {p.asset} ({p.status}) after event {p.inputs.get('event')}: "
                       f"{json.dumps(p.mechanisms)}")
        for event_id, failure in result.failures:
            click.echo(f"  FAILED {failure.method} on event {event_id}: {failure.error}")
        for skipped in result.skipped:
            click.echo(f"  skipped {skipped}")
    sys.exit(1 if result.failures else 0)
