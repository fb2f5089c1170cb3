"""`mapemesh build check | render`: bunnyfiles checked with bunny's rules, and build contexts for urunc."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from mapemesh.runtimes import build as builder
from mapemesh.runtimes import bunnyfile

EXIT_INVALID, EXIT_NO_ENGINE = 1, 3


@click.group()
def build() -> None:
    """Package functions with bunny as urunc single-application kernels."""


@build.command("check")
@click.argument("files", nargs=-1, type=click.Path(path_type=Path))
@click.option("--output", "-o", type=click.Choice(["human", "json"]), default="human", show_default=True)
def check(files: tuple[Path, ...], output: str) -> None:
    """Check bunnyfiles with bunny's rules and urunc's supported framework/monitor pairs [default: every
    bunnyfiles/*.bunnyfile].

    Exit status: 0 all valid, 1 a problem found (each named by file, line and field), 2 no file to check.
    """
    paths = list(files) or sorted(Path("bunnyfiles").glob("*.bunnyfile"))
    if not paths:
        raise click.UsageError("no bunnyfile given and none in bunnyfiles/")
    problems = [p for path in paths for p in bunnyfile.check_file(path)]
    if output == "json":
        click.echo(json.dumps({"checked": [str(p) for p in paths],
                               "problems": [{"file": p.file, "line": p.line, "field": p.field, "message": p.message}
                                            for p in problems]}, indent=2))
    else:
        for p in problems:
            click.echo(str(p), err=True)
        click.echo(f"{len(paths)} bunnyfile(s) checked: " + (f"{len(problems)} problem(s)" if problems else "valid"))
    if problems:
        sys.exit(EXIT_INVALID)


@build.command("render")
@click.argument("function")
@click.option("--out", required=True, type=click.Path(file_okay=False, path_type=Path), help="Where to write.")
@click.option("--monitor", type=click.Choice(sorted(builder.KERNELS)), default=None,
              help="Make the bunnyfile for this monitor [default: the function's bunnyfile as it is].")
@click.option("--project", type=click.Path(exists=True, file_okay=False, path_type=Path), default=Path("."),
              show_default=True, help="The project (knative/, bunnyfiles/ and the sources).")
@click.option("--build", "run_build", is_flag=True, help="Also build both images (needs a container engine).")
@click.option("--output", "-o", type=click.Choice(["human", "json"]), default="human", show_default=True)
def render(function: str, out: Path, monitor: str | None, project: Path, run_build: bool, output: str) -> None:
    """Write FUNCTION's container build context, the urunc annotations bunny will set, and the build commands.

    Exit status: 0 written (and built, with --build), 1 the build failed, 2 no such function or an invalid
    bunnyfile, 3 --build with no container engine on this machine.
    """
    import subprocess

    try:
        result = builder.render(project, function, out, monitor)
    except builder.BuildError as exc:
        raise click.UsageError(str(exc)) from None
    found, why = builder.engine()
    result["engine"] = found
    result["engine_detail"] = why
    if output == "json":
        click.echo(json.dumps(result, indent=2))
    else:
        click.echo(f"{function}: build context in {out} (monitor {result['monitor']}); urunc annotations in "
                   f"{out / 'annotations.json'}\nbuild it with (in {out}):")
        for line in result["commands"]:
            click.echo(f"  {line}")
        if found is None:
            click.echo(f"no container engine here ({why}): nothing was built; run the commands where there is one.")
    if not run_build:
        return
    if found is None:
        click.echo(f"Error: --build needs a container engine that answers (docker or nerdctl with BuildKit): {why}",
                   err=True)
        sys.exit(EXIT_NO_ENGINE)
    for step in builder.commands(function, found):
        if subprocess.run(step, cwd=out).returncode != 0:
            click.echo(f"Error: {' '.join(step)} failed", err=True)
            sys.exit(1)
