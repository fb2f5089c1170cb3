"""`mapemesh function new --accel NAME`: scaffold an accelerated function."""

from __future__ import annotations

from pathlib import Path

import click


@click.group()
def function() -> None:
    """FaaS functions: scaffold accelerated functions that call vAccel."""


@function.command("new")
@click.option("--accel", "name", required=True, metavar="NAME",
              help="Scaffold accelerated function NAME (a vAccel torch operation to start from).")
@click.option("--priority", type=click.Choice(["low", "normal", "high"]), default="normal", show_default=True,
              help="Whom the accelerator policy moves off a busy GPU first (low).")
@click.option("--root", type=click.Path(file_okay=False, path_type=Path), default=Path("."), show_default=True,
              help="The project (it gets functions/accel/, knative/ and bunnyfiles/ entries).")
def new(name: str, priority: str, root: Path) -> None:
    """Write functions/accel/NAME/__init__.py, knative/accel-NAME.yaml (Service and Trigger) and
    bunnyfiles/accel-NAME.bunnyfile, and list the manifest in knative/kustomization.yaml.

    Exit status: 0 written, 2 a bad name or the function exists.
    """
    from mapemesh.runtimes.accel import AccelError, new_function

    try:
        written = new_function(name, root, priority=priority)
    except AccelError as exc:
        raise click.UsageError(str(exc)) from None
    for path in written:
        click.echo(f"wrote {path}")
    click.echo(f"invoke it: mapemesh events send --type io.mapemesh.accel.requested.v1 --source /me "
               f"--ext function={name} --data '{{\"input\": {{\"values\": [1, 2]}}}}'")
