"""`mapemesh node-shim`: run a node's shim, or make a simulated hardware tree for it."""

from __future__ import annotations

from pathlib import Path

import click

from mapemesh import endpoints
from mapemesh.aio import run, until_stopped
from mapemesh.cli._common import settings


@click.group("node-shim")
def node_shim() -> None:
    """The node shim: hardware knobs (CPU frequency, RAPL power caps, NVIDIA GPU clocks) and telemetry."""


@node_shim.command("serve")
@click.option("--node", default=None, help="Node name [env MAPEMESH_NODE; default: the hostname].")
@click.option("--data", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Data directory (token, journal, endpoints.json) [default: the global --data].")
@click.option("--sysfs-root", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Drive the knobs in this tree instead of / (see `node-shim simulate`).")
@click.option("--broker", default=None,
              help="Broker URL for telemetry and registration [default: the broker in DATA_DIR/endpoints.json].")
@click.option("--host", default=None, help="Address to bind [env MAPEMESH_HOST; default 127.0.0.1].")
@click.option("--port", type=int, default=None, help="Port, 0 for any [env MAPEMESH_NODE_SHIM_PORT; default 8082].")
@click.option("--interval", type=float, default=None,
              help="First telemetry interval in seconds [env MAPEMESH_TELEMETRY_INTERVAL_S; default 5].")
@click.pass_context
def serve(ctx: click.Context, node: str | None, data: Path | None, sysfs_root: Path | None, broker: str | None,
          host: str | None, port: int | None, interval: float | None) -> None:
    """Serve the knob API and the CloudEvent endpoint, report telemetry, until Ctrl-C or SIGTERM.

    With a mesh in DATA_DIR it also adds the Trigger that routes this node's knob commands to the shim
    (DATA_DIR/manifests/node-shim-NODE.yaml, removed when the shim stops). Knobs keep working while the
    broker is unreachable; telemetry waits and is sent when it is back.
    """
    from mapemesh.node_shim.daemon import default_node, start_node_shim, write_trigger

    s = settings(ctx, data=data, host=host, node_shim_port=port, telemetry_interval_s=interval)
    if s.node_shim_port < 0:
        raise click.UsageError("--port must be 0..65535")
    if sysfs_root is not None and not sysfs_root.is_dir():
        raise click.UsageError(f"--sysfs-root {sysfs_root} is not a directory (make one with "
                               f"`mapemesh node-shim simulate --profile acpi-cpufreq {sysfs_root}`)")
    found = endpoints.read(s.data)
    target = broker or (found["broker"].rstrip("/") + "/default/default" if "broker" in found else None)
    name = node or s.node or default_node()
    if "broker" in found and (s.deployed_manifests / f"node-shim-{name}.yaml").exists():
        raise click.UsageError(f"node {name} has a node shim in this mesh already ({s.deployed_manifests}/"
                               f"node-shim-{name}.yaml; `mapemesh up` runs one for this machine): use --node")

    async def main() -> None:
        running = await start_node_shim(name, s.data, sysfs_root=sysfs_root or (Path(s.sysfs_root) if s.sysfs_root
                                                                                 else None),
                                        broker=target, host=s.host, port=s.node_shim_port,
                                        interval_s=s.telemetry_interval_s)
        try:
            trigger = write_trigger(s.deployed_manifests, name, running.url) if "broker" in found else None
        except BaseException:
            await running.stop()
            raise
        click.echo(f"node shim for {name} on {running.url} (knobs: {', '.join(sorted(running.shim.knobs))}; "
                   f"sysfs {running.sysfs.root}; token in {s.data / 'node-shim.token'})", err=True)
        try:
            await until_stopped()
        finally:
            if trigger is not None:
                trigger.unlink(missing_ok=True)
            await running.stop()

    run(main())


@node_shim.command("simulate")
@click.option("--profile", type=click.Choice(["intel_pstate", "acpi-cpufreq", "arm"]), required=True,
              help="Which kind of machine: its cpufreq driver, governors, frequencies and RAPL domains.")
@click.option("--cpus", type=click.IntRange(1, 256), default=4, show_default=True)
@click.argument("directory", type=click.Path(file_okay=False, path_type=Path))
def simulate_cmd(profile: str, cpus: int, directory: Path) -> None:
    """Create a simulated sysfs tree in DIRECTORY for `node-shim serve --sysfs-root DIRECTORY`.

    Exit status: 0 created, 2 DIRECTORY is not empty (and not a simulated tree made before).
    """
    from mapemesh.node_shim import simulate

    try:
        simulate.create(directory, profile, cpus=cpus)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    click.echo(f"simulated {profile} machine with {cpus} CPUs in {directory}")
