"""The `mapemesh` command line."""

from __future__ import annotations

import logging
from pathlib import Path

import click

from mapemesh import __version__
from mapemesh.cli.api import api
from mapemesh.cli.bridge import bridge
from mapemesh.cli.broker import broker
from mapemesh.cli.build import build
from mapemesh.cli.cesql import cesql
from mapemesh.cli.events import events
from mapemesh.cli.function import function
from mapemesh.cli.identity import identity
from mapemesh.cli.mesh import status, up
from mapemesh.cli.node_shim import node_shim
from mapemesh.cli.northbound import apps, infra, manage, ml, watch
from mapemesh.cli.policy import policy
from mapemesh.cli.render import render
from mapemesh.cli.simulate import simulate
from mapemesh.cli.storage import storage
from mapemesh.cli.trace import trace


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="mapemesh")
@click.option("--data", "data", type=click.Path(file_okay=False, path_type=Path), envvar="MAPEMESH_DATA",
              default=None, help="Data directory of the mesh [env MAPEMESH_DATA; default .mapemesh].")
@click.option("--log-level", default="info", envvar="MAPEMESH_LOG_LEVEL", show_default=True,
              type=click.Choice(["debug", "info", "warning", "error"], case_sensitive=False))
@click.pass_context
def cli(ctx: click.Context, data: Path | None, log_level: str) -> None:
    """mapemesh: MAPE loops as a serverless function mesh for the cloud-edge continuum."""
    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    ctx.obj = {"data": data}


cli.add_command(storage)
cli.add_command(identity)
cli.add_command(api)
cli.add_command(broker)
cli.add_command(events)
cli.add_command(cesql)
cli.add_command(up)
cli.add_command(status)
cli.add_command(policy)
cli.add_command(node_shim)
cli.add_command(render)
cli.add_command(trace)
cli.add_command(apps)
cli.add_command(ml)
cli.add_command(infra)
cli.add_command(manage)
cli.add_command(watch)
cli.add_command(build)
cli.add_command(function)
cli.add_command(simulate)
cli.add_command(bridge)


def main() -> None:
    """Entry point of the `mapemesh` script."""
    cli(prog_name="mapemesh")
