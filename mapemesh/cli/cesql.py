"""`mapemesh cesql`: evaluate a CloudEvents SQL expression, as a trigger's `cesql` filter would."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click


@click.command()
@click.argument("expression")
@click.option("--event", "event_file", type=click.Path(exists=True, dir_okay=False, path_type=Path, allow_dash=True),
              default=None, help="A CloudEvent in JSON (structured format, or just its attributes); '-' reads "
                                 "standard input. Without it the expression sees no attributes.")
def cesql(expression: str, event_file: Path | None) -> None:
    """Print {"result": ..., "error": null or the CESQL error kind} for EXPRESSION.

    A trigger delivers only when the result is true and the error is null. Exit status: 0 no error,
    1 an evaluation or parse error (the JSON still says which), 2 bad usage.
    """
    from mapemesh.eventing import cesql as engine

    attributes: dict[str, object] = {}
    if event_file is not None:
        text = sys.stdin.read() if str(event_file) == "-" else event_file.read_text(encoding="utf-8")
        try:
            doc = json.loads(text)
        except ValueError as exc:
            raise click.UsageError(f"--event is not valid JSON: {exc}") from None
        if not isinstance(doc, dict):
            raise click.UsageError("--event must be a JSON object (a CloudEvent or its attributes)")
        attributes = {k: v for k, v in doc.items() if k not in ("data", "data_base64") and v is not None}
    result, error = engine.evaluate(expression, attributes)
    out = {"result": result, "error": None if error is None else error.kind}
    if error is not None:
        out["message"] = error.message
    click.echo(json.dumps(out))
    if error is not None:
        sys.exit(1)
