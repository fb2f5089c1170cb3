"""`mapemesh policy`: scaffold a policy, test it offline, deploy it to a running mesh, list what runs."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import click
import httpx

from mapemesh import endpoints
from mapemesh.aio import run
from mapemesh.cli._common import settings

EXIT_UNREACHABLE = 3


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


@policy.command("new")
@click.argument("name")
@click.option("--root", type=click.Path(file_okay=False, path_type=Path), default=Path("."), show_default=True,
              help="The project to scaffold in (it gets functions/, knative/ and bunnyfiles/ entries).")
def new(name: str, root: Path) -> None:
    """Scaffold policy NAME: its MLSysOps policy module, function, Knative Service and Trigger, bunnyfile.

    Exit status: 0 written, 2 bad name or the policy exists already (nothing is written then).
    """
    from mapemesh.runtimes.policy_service import InvalidPolicyName
    from mapemesh.runtimes.scaffold import ScaffoldError, new_policy

    try:
        written = new_policy(name, root)
    except (ScaffoldError, InvalidPolicyName) as exc:
        raise click.UsageError(str(exc)) from None
    for path in written:
        click.echo(f"wrote {path}")
    module = written[0]
    click.echo(f"next: edit {module}, try it with `mapemesh policy test {module} --events FILE.jsonl`, "
               f"then run it with `mapemesh up` (or `mapemesh policy deploy {module}` into a running mesh)")


@policy.command("deploy")
@click.argument("path", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--name", help="Policy name (default: from the file name, policy-cpu_freq.py -> cpu-freq).")
@click.option("--data", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Data directory of the running mesh [default: the global --data].")
@click.option("--wait/--no-wait", default=True, show_default=True, help="Wait until the policy's function is ready.")
@click.option("--timeout", type=float, default=30.0, show_default=True, help="Seconds to wait.")
@click.pass_context
def deploy(ctx: click.Context, path: Path, name: str | None, data: Path | None, wait: bool, timeout: float) -> None:
    """Add the MLSysOps policy file at PATH to a running mesh, without a restart.

    The file is checked first (it loads, initialize declares something usable); then it is copied under
    DATA_DIR/policies, its Service and Trigger go to DATA_DIR/manifests (the mesh reads them within a second),
    and it is registered. Deploying a changed file under the same name replaces the policy.

    Exit status: 0 deployed, 2 bad policy or no mesh in DATA_DIR, 3 the function did not become ready.
    """
    from mapemesh.policy import PolicyError, load_policy, registry
    from mapemesh.runtimes.policy_service import InvalidPolicyName, check_name
    from mapemesh.runtimes.scaffold import deploy_files, name_from_file
    from mapemesh.state import open_store

    s = settings(ctx, data=data)
    try:
        name = check_name(name or name_from_file(path))
        loaded = load_policy(path, name)
        declaration = run(loaded.initialize())
    except (PolicyError, InvalidPolicyName) as exc:
        raise click.UsageError(str(exc)) from None
    found = endpoints.read(s.data)
    if "serving" not in found:
        raise click.UsageError(f"no running mesh recorded in {s.data / endpoints.FILE} (start one with `mapemesh up "
                               f"--data {s.data}`)")
    copy, manifest = deploy_files(name, path, s.data)
    store = open_store(s.state, data=s.data)
    try:
        registry.register(store, name, source=str(copy), shape=loaded.shape, declaration=declaration)
    finally:
        store.close()
    click.echo(f"policy {name} ({loaded.shape} shape, scope {declaration.scope}) deployed: {manifest}")
    if not wait:
        return
    key = f"default/policy-{name}"
    deadline = time.monotonic() + timeout
    row: dict[str, object] = {}
    while time.monotonic() < deadline:
        try:
            row = httpx.get(found["serving"] + "/status", timeout=5).raise_for_status().json()["functions"].get(key) \
                or {}
        except httpx.HTTPError as exc:
            click.echo(f"policy {name} is deployed, but the mesh in {s.data} did not answer: {exc}", err=True)
            ctx.exit(EXIT_UNREACHABLE)
        if row.get("ready") and row.get("source") == str(copy.with_name("__init__.py")):
            click.echo(f"policy {name} is running as Service {key}")
            return
        time.sleep(0.1)
    click.echo(f"policy {name} is not ready after {timeout:g}s: {row.get('reason') or 'no answer'}", err=True)
    ctx.exit(EXIT_UNREACHABLE)


@policy.command("list")
@click.option("--data", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Data directory of the mesh [default: the global --data].")
@click.option("--output", "-o", type=click.Choice(["human", "json"]), default="human", show_default=True)
@click.pass_context
def list_(ctx: click.Context, data: Path | None, output: str) -> None:
    """Each policy the loop knows: its status, mode, scope, last verdict and failures.

    Exit status: 0 shown, 2 no mesh state in DATA_DIR.
    """
    from mapemesh.policy import registry
    from mapemesh.state import open_store

    s = settings(ctx, data=data)
    if s.state.startswith("sqlite:") and s.state in ("sqlite:", "sqlite://") and not (s.data / "state.db").exists():
        raise click.UsageError(f"no mesh state in {s.data} (start one with `mapemesh up --data {s.data}`)")
    store = open_store(s.state, data=s.data)
    try:
        docs = {name: registry.stats(store, name, v.value) for name, v in sorted(store.list("policies").items())}
        mode = store.get("settings", "mode")
    finally:
        store.close()
    current = (mode.value if mode else {}) or {"mode": "heuristic", "manual_override": False}
    if output == "json":
        click.echo(json.dumps({"mode": current, "policies": docs}, indent=2, default=str))
        return
    click.echo(f"management mode: {current.get('mode', 'heuristic')}"
               + (" (manual override: the loop makes no plans)" if current.get("manual_override") else ""))
    if not docs:
        click.echo("no policies registered")
        return
    click.echo(f"{'POLICY':<22} {'STATUS':<8} {'MODE':<9} {'SCOPE':<11} {'ANALYSES':>8} {'PLANS':>5} "
               f"{'FAILURES':>8}  LAST")
    for name, doc in docs.items():
        declaration = doc.get("declaration") or {}
        kind = "ml" if declaration.get("machine_learning") else "heuristic"
        last = doc.get("last_verdict") or {}
        if doc.get("status") == "error":
            note = f"cannot run: {doc.get('error')}"
        elif doc.get("skipped"):
            note = f"skipped: {doc['skipped']['reason']}"
        elif last.get("error"):
            note = f"failed on {last.get('asset')}: {last['error']}"
        elif last:
            note = f"verdict {last.get('verdict')} for {last.get('asset')}"
        else:
            note = "not asked yet"
        click.echo(f"{name:<22} {doc.get('status', '?'):<8} {kind:<9} {declaration.get('scope', '?'):<11} "
                   f"{doc.get('analyses', 0):>8} {doc.get('plans', 0):>5} {doc.get('failures', 0):>8}  {note}")
