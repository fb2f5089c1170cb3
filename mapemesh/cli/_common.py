"""Helpers shared by the CLI's command groups."""

from __future__ import annotations

from pathlib import Path

import click

from mapemesh.settings import Settings


def settings(ctx: click.Context, **overrides: object) -> Settings:
    """The settings for this invocation: defaults, MAPEMESH_* variables, then flags."""
    if overrides.get("data") is None:
        overrides["data"] = (ctx.find_root().obj or {}).get("data")
    try:
        return Settings.load(**overrides)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None


def data_dir(ctx: click.Context) -> Path:
    """The data directory chosen by --data, MAPEMESH_DATA or the default."""
    return settings(ctx).data
