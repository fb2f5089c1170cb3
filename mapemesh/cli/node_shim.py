"""`mapemesh node-shim`: run a node's shim, or make a simulated hardware tree for it."""

from __future__ import annotations

from pathlib import Path

import click

from mapemesh import endpoints
from mapemesh.aio import run, stop_signals, until_stopped
from mapemesh.cli._common import broker_target, settings


@click.group("node-shim")
def node_shim() -> None:
    """The node shim: hardware knobs (CPU frequency, RAPL power caps, NVIDIA GPU clocks) and telemetry."""


@node_shim.command("serve")
@click.option("--node", default=None, help="Node name [env MAPEMESH_NODE; default: the hostname].")
@click.option("--data", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Data directory (token, journal, endpoints.json) [default: the global --data].")
@click.option("--sysfs-root", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Drive the knobs in this tree instead of / (see `node-shim simulate`).")
@click.option("--simulate", "profile", default=None,
              type=click.Choice(["intel_pstate", "acpi-cpufreq", "arm", "fpga", "wireless"]),
              help="Drive a simulated tree of this kind (made once in DATA_DIR/simulated-sysfs) instead of /.")
@click.option("--broker", default=None,
              help="Broker URL for telemetry and registration [default: K_SINK (a SinkBinding's), else the broker "
                   "in DATA_DIR/endpoints.json].")
@click.option("--register", type=click.Choice(["mesh", "kubernetes", "none"]), default="mesh", show_default=True,
              help="How knob commands find this shim: mesh, a Trigger in DATA_DIR/manifests of the mesh recorded "
                   "there; kubernetes, a Trigger applied to the cluster, owned by this pod (env POD_NAME, "
                   "POD_NAMESPACE, POD_UID, POD_IP; RBAC to apply triggers; kubeconfig MAPEMESH_KUBECONFIG, default "
                   "the pod's service account); none.")
@click.option("--host", default=None, help="Address to bind [env MAPEMESH_HOST; default 127.0.0.1].")
@click.option("--port", type=int, default=None, help="Port, 0 for any [env MAPEMESH_NODE_SHIM_PORT; default 8082].")
@click.option("--interval", type=float, default=None,
              help="First telemetry interval in seconds [env MAPEMESH_TELEMETRY_INTERVAL_S; default 5].")
@click.pass_context
def serve(ctx: click.Context, node: str | None, data: Path | None, sysfs_root: Path | None, profile: str | None,
          broker: str | None, register: str, host: str | None, port: int | None, interval: float | None) -> None:
    """Serve the knob API and the CloudEvent endpoint, report telemetry, until Ctrl-C or SIGTERM.

    With a mesh in DATA_DIR it also adds the Trigger that routes this node's knob commands to the shim
    (DATA_DIR/manifests/node-shim-NODE.yaml, removed when the shim stops). Knobs keep working while the
    broker is unreachable; telemetry waits and is sent when it is back.
    """
    import os

    from mapemesh.node_shim.daemon import (
        Pod,
        default_node,
        register_on_cluster,
        simulated_root,
        start_node_shim,
        trigger_name,
        write_trigger,
    )

    s = settings(ctx, data=data, host=host, node_shim_port=port, telemetry_interval_s=interval)
    if s.node_shim_port < 0:
        raise click.UsageError("--port must be 0..65535")
    if sysfs_root is not None and profile is not None:
        raise click.UsageError("give --sysfs-root or --simulate, not both")
    if sysfs_root is not None and not sysfs_root.is_dir():
        raise click.UsageError(f"--sysfs-root {sysfs_root} is not a directory (make one with "
                               f"`mapemesh node-shim simulate --profile acpi-cpufreq {sysfs_root}`)")
    if register == "kubernetes":
        if s.node_shim_port == 0:
            raise click.UsageError("--register kubernetes needs a fixed --port (the Trigger names it)")
        try:
            Pod.from_environment(dict(os.environ))
        except ValueError as exc:
            raise click.UsageError(f"--register kubernetes: {exc}") from None
    found = endpoints.read(s.data)
    target = broker_target(s, broker)
    name = node or s.node or default_node()
    in_mesh = register == "mesh" and "broker" in found
    if in_mesh and (s.deployed_manifests / f"{trigger_name(name)}.yaml").exists():
        raise click.UsageError(f"node {name} has a node shim in this mesh already ({s.deployed_manifests}/"
                               f"{trigger_name(name)}.yaml; `mapemesh up` runs one for this machine): use --node")
    root = simulated_root(s.data, profile) if profile else sysfs_root or (Path(s.sysfs_root) if s.sysfs_root
                                                                          else None)

    async def main() -> None:
        stop = stop_signals()
        running = await start_node_shim(name, s.data, sysfs_root=root, broker=target, host=s.host,
                                        port=s.node_shim_port, interval_s=s.telemetry_interval_s)
        unregister = None
        try:
            trigger = write_trigger(s.deployed_manifests, name, running.url) if in_mesh else None
            if register == "kubernetes":
                unregister = await register_on_cluster(name, s.node_shim_port, dict(os.environ),
                                                       s.kubeconfig or "in-cluster")
        except BaseException:
            await running.stop()
            raise
        click.echo(f"node shim for {name} on {running.url} (knobs: {', '.join(sorted(running.shim.knobs))}; "
                   f"sysfs {running.sysfs.root}; token in {s.data / 'node-shim.token'})", err=True)
        try:
            await until_stopped(stop)
        finally:
            if trigger is not None:
                trigger.unlink(missing_ok=True)
            if unregister is not None:
                await unregister()
            await running.stop()

    run(main())


@node_shim.command("simulate")
@click.option("--profile", type=click.Choice(["intel_pstate", "acpi-cpufreq", "arm", "fpga", "wireless"]),
              required=True, help="Which kind of machine: its cpufreq driver, governors, frequencies and RAPL "
              "domains; `fpga` a ZCU102 (FPGA manager, bitstreams, INA226), `wireless` an edge radio and GPS.")
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
