"""Helpers shared by the CLI's command groups."""

from __future__ import annotations

from pathlib import Path

import click

from mapemesh import endpoints
from mapemesh.settings import Settings


def settings(ctx: click.Context, **overrides: object) -> Settings:
    """The settings for this invocation: defaults, MAPEMESH_* variables, then flags."""
    if overrides.get("data") is None:
        overrides["data"] = (ctx.find_root().obj or {}).get("data")
    try:
        return Settings.load(**overrides)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None


def broker_target(s: Settings, broker: str | None) -> str | None:
    """Where a component started from the CLI posts: --broker, else K_SINK (a SinkBinding sets it on a cluster),
    else the default broker of the mesh running in DATA_DIR; None when there is none."""
    if broker or s.k_sink:
        return broker or s.k_sink
    found = endpoints.read(s.data).get("broker")
    return found.rstrip("/") + "/default/default" if found else None


def data_dir(ctx: click.Context) -> Path:
    """The data directory chosen by --data, MAPEMESH_DATA or the default."""
    return settings(ctx).data
