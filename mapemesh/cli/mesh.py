"""`mapemesh up` and `mapemesh status`: the embedded mesh as a whole."""

from __future__ import annotations

import json
from pathlib import Path

import click
import httpx

from mapemesh import endpoints
from mapemesh.aio import run
from mapemesh.cli._common import settings

EXIT_UNREACHABLE = 3


@click.command()
@click.option("--manifests", type=click.Path(path_type=Path), default=None,
              help="Knative manifests to run [env MAPEMESH_MANIFESTS; default knative].")
@click.option("--data", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Data directory [default: the global --data].")
@click.option("--host", default=None, help="Address to bind [env MAPEMESH_HOST; default 127.0.0.1].")
@click.option("--port", type=int, default=None, help="Broker port, 0 for any [env MAPEMESH_BROKER_PORT; 8080].")
@click.option("--serving-port", type=int, default=None,
              help="Function host port, 0 for any [env MAPEMESH_SERVING_PORT; default 8081].")
@click.option("--node-shim-port", type=int, default=None,
              help="This machine's node shim port, 0 for any, -1 for no shim [env MAPEMESH_NODE_SHIM_PORT; 8082].")
@click.option("--api-port", type=int, default=None,
              help="The northbound API's port, 0 for any, -1 for no API [env MAPEMESH_API_PORT; default 8083].")
@click.option("--node", default=None, help="This machine's node name [env MAPEMESH_NODE; default: the hostname].")
@click.option("--sysfs-root", default=None,
              help="Tree the node shim drives [env MAPEMESH_SYSFS_ROOT; default /, or a simulated tree when /sys "
                   "has no cpufreq].")
@click.option("--accept-batch/--no-accept-batch", default=None,
              help="Also take application/cloudevents-batch+json requests, a mapemesh-only extension (Knative's "
                   "ingress answers 400 to them) [env MAPEMESH_ACCEPT_BATCH; default off].")
@click.pass_context
def up(ctx: click.Context, manifests: Path | None, data: Path | None, host: str | None, port: int | None,
       serving_port: int | None, node_shim_port: int | None, api_port: int | None, node: str | None,
       sysfs_root: str | None, accept_batch: bool | None) -> None:
    """Run the broker, the local function host, this machine's node shim and the northbound API (token in
    DATA_DIR/api.token); Ctrl-C or SIGTERM stops them."""
    from mapemesh.runtimes.vaccel_hook import VaccelEnv
    from mapemesh.up import serve_mesh

    s = settings(ctx, data=data, manifests=manifests, host=host, broker_port=port, serving_port=serving_port,
                 node_shim_port=node_shim_port, api_port=api_port, node=node, sysfs_root=sysfs_root,
                 accept_batch=accept_batch)
    if not s.manifests.exists():
        raise click.UsageError(f"manifests directory {s.manifests} does not exist")
    if s.sysfs_root and not Path(s.sysfs_root).is_dir():
        raise click.UsageError(f"--sysfs-root {s.sysfs_root} is not a directory (make one with "
                               f"`mapemesh node-shim simulate --profile acpi-cpufreq DIR`)")
    if s.storage_locations:  # a bad locations file said now, before anything starts
        from mapemesh.storage.locations import LayoutError, load

        try:
            load(Path(s.storage_locations))
        except LayoutError as exc:
            raise click.UsageError(f"MAPEMESH_STORAGE_LOCATIONS: {exc}") from None
    try:
        run(serve_mesh(s, VaccelEnv.in_data(s.data)))  # the vAccelPlugin knob's choices, followed
    except OSError as exc:  # a port in use, most often: say which, not a traceback
        raise click.ClickException(f"cannot start the mesh: {exc} (ports: broker {s.broker_port}, function host "
                                   f"{s.serving_port}, node shim {s.node_shim_port}, API {s.api_port}; 0 picks a "
                                   "free one)") from None


@click.command()
@click.option("--data", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Data directory of the running mesh [default: the global --data].")
@click.option("--output", "-o", type=click.Choice(["human", "json"]), default="human", show_default=True)
@click.pass_context
def status(ctx: click.Context, data: Path | None, output: str) -> None:
    """Functions (ready, processes, runtime class), triggers and broker counters of the running mesh.

    Exit status: 0 shown, 2 no mesh recorded in DATA_DIR, 3 a component did not answer.
    """
    s = settings(ctx, data=data)
    found = endpoints.read(s.data)
    if not found:
        raise click.UsageError(f"no running mesh recorded in {s.data / endpoints.FILE} (start one with "
                               f"`mapemesh up`)")
    doc: dict[str, object] = {"endpoints": found}
    failed = False
    for name, path, field in (("serving", "/status", "functions"), ("broker", "/stats", "triggers")):
        if name not in found:
            continue
        try:
            answer = httpx.get(found[name] + path, timeout=10).raise_for_status().json()
        except httpx.HTTPError as exc:
            doc[f"{name}_error"] = str(exc)
            failed = True
            continue
        doc[field] = answer.get(field, {})
        if name == "broker":
            doc["log"] = answer.get("log", {})
    if output == "json":
        click.echo(json.dumps(doc, indent=2))
    else:
        _print_human(doc)
    ctx.exit(EXIT_UNREACHABLE if failed else 0)


def _print_human(doc: dict) -> None:  # type: ignore[type-arg]
    for name, url in doc["endpoints"].items():
        click.echo(f"{name}: {url}")
    for key in ("serving_error", "broker_error"):
        if key in doc:
            click.echo(f"{key.split('_')[0]} did not answer: {doc[key]}")
    functions = doc.get("functions") or {}
    click.echo(f"\nfunctions ({len(functions)}); each runs here as a local process, forked on demand:")
    for key, f in functions.items():
        state = "NOT READY: " + str(f.get("reason")) if not f.get("ready") else (
            "scaled to zero" if f.get("scaled_to_zero") else f"{f['processes']} process(es) {f.get('pids')}")
        click.echo(f"  {key}: {state}; runtime class {f.get('runtime_class', 'default')}; "
                   f"cold starts {f.get('cold_starts', 0)}")
    triggers = doc.get("triggers") or {}
    click.echo(f"\ntriggers ({len(triggers)}):")
    for key, t in triggers.items():
        ready = "ready" if t.get("ready") else f"NOT READY: {t.get('reason')}"
        click.echo(f"  {key} -> {t.get('subscriber')}: {ready}; accepted {t.get('accepted', 0)}, delivered "
                   f"{t.get('delivered', 0)}, retried {t.get('retried', 0)}, dead-lettered "
                   f"{t.get('dead_lettered', 0)}, dropped {t.get('dropped', 0)}")
    log = doc.get("log") or {}
    if log:
        click.echo(f"\nbroker log: {log.get('appended', 0)} events appended since start")
