"""`mapemesh simulate`: the outside systems a cluster's mechanisms drive, simulated (a 5G core, a datacenter job
scheduler), to try the UPFSelect and JobOrder mechanisms and their policies with."""

from __future__ import annotations

from typing import TYPE_CHECKING

import click

from mapemesh.aio import run
from mapemesh.cli._common import broker_target, settings

if TYPE_CHECKING:
    from mapemesh.sim import Simulator

BROKER = click.option("--broker", default=None, metavar="URL",
                      help="The broker ingress its registration and telemetry go to [default: K_SINK, else the mesh "
                           "recorded in DATA_DIR, at /default/default].")
CLUSTER = click.option("--cluster", default="cluster-1", show_default=True, help="The cluster it serves.")
PORT = click.option("--port", type=click.IntRange(min=0), default=0, show_default=True,
                    help="Port of its API (0 picks a free one; the address is printed).")
EVERY = click.option("--telemetry-every", "every_s", type=click.FloatRange(min=0, min_open=True), default=1.0,
                     show_default=True, metavar="SECONDS", help="Period of its telemetry.")


@click.group("simulate")
def simulate() -> None:
    """Simulated systems for the cluster mechanisms: a 5G core (UPFSelect), a job scheduler (JobOrder)."""


def _broker(ctx: click.Context, broker: str | None) -> str:
    target = broker_target(settings(ctx), broker)
    if not target:
        raise click.UsageError("no broker: give --broker URL, set K_SINK, or start a mesh in DATA_DIR")
    return target


def _serve(sim: Simulator) -> None:
    from mapemesh.sim import serve

    def started(s: Simulator) -> None:
        click.echo(s.url)  # the API's address, on stdout alone (a script reads it)

    run(serve(sim, started))


@simulate.command("5g-core")
@click.argument("name")
@CLUSTER
@BROKER
@PORT
@EVERY
@click.pass_context
def core(ctx: click.Context, name: str, cluster: str, broker: str | None, port: int, every_s: float) -> None:
    """A 5G core NAME with three UPFs (near, middle, far) and one UE, until Ctrl-C or SIGTERM.

    Its slice API is what the UPFSelect adapter calls (name it for CLUSTER in the file MAPEMESH_MECHANISM_ENDPOINTS
    names); `PUT /upfs/UPF/load {"mbps": N}` raises or calms a UPF's load."""
    from mapemesh.sim.core5g import example

    _serve(example(name, cluster, _broker(ctx, broker), port=port, telemetry_every_s=every_s))


@simulate.command("datacenter")
@click.argument("name")
@CLUSTER
@BROKER
@PORT
@EVERY
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the first arriving batch.")
@click.pass_context
def datacenter(ctx: click.Context, name: str, cluster: str, broker: str | None, port: int, every_s: float,
               seed: int) -> None:
    """A datacenter job scheduler NAME (4 packet switches of 32 GPUs, 4 OCS uplinks each), until Ctrl-C or SIGTERM.

    Its order endpoint is what the JobOrder adapter calls (name it for CLUSTER in the file
    MAPEMESH_MECHANISM_ENDPOINTS names); `POST /batches {"seed": N}` makes a batch arrive; `GET /status` compares
    the order's simulated utilisation with first come, first served."""
    from mapemesh.sim.datacenter import SimulatedScheduler

    _serve(SimulatedScheduler(name=name, cluster=cluster, broker=_broker(ctx, broker), port=port,
                              telemetry_every_s=every_s, seed=seed))

