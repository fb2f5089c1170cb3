"""The deploy function's local target: each cluster's objects as YAML files under DATA_DIR/deployments/APP/CLUSTER/
(what `mapemesh up` without a cluster does with a placement).

| call                                         | does                                                             |
|----------------------------------------------|------------------------------------------------------------------|
| `write_local(data, app, per_cluster, plan)`  | writes every cluster's folder in a fresh temporary folder, then   |
|                                              | swaps it in by renames, under a per-application lock (threads and |
|                                              | processes alike); a failure leaves the old folder as it was       |
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

_NAME = re.compile(r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$")


def _safe(kind: str, value: str) -> str:
    """A name that may become a folder: a DNS-1123 subdomain (no '..', no '/')."""
    if not _NAME.fullmatch(value) or ".." in value:
        raise ValueError(f"{kind} {value!r} is not a DNS-1123 name (lowercase letters, digits, '-', '.')")
    return value


def write_local(data: Path, app_id: str, per_cluster: dict[str, list[dict[str, Any]]], plan_id: str | None) -> Path:
    """Write each cluster's objects under DATA_DIR/deployments/APP/CLUSTER/, replacing what was there.

    Written in a fresh temporary folder, then swapped in by renames; a failure leaves the old folder as it was.
    """
    from mapemesh.functions.deploy.render import to_yaml_files

    base = data / "deployments"
    base.mkdir(parents=True, exist_ok=True)
    root = base / _safe("application id", app_id)
    for cluster in per_cluster:
        _safe("cluster", cluster)
    tmp = Path(tempfile.mkdtemp(prefix=f".{app_id}.", dir=base))
    old: Path | None = None
    try:
        for cluster, objects in sorted(per_cluster.items()):
            folder = tmp / cluster
            folder.mkdir()
            for name, text in to_yaml_files(objects).items():
                (folder / name).write_text(text, encoding="utf-8")
        (tmp / "STATUS").write_text(json.dumps({"status": "rendered, not applied", "plan_id": plan_id,
                                                "at": time.time(), "clusters": sorted(per_cluster)}, indent=1) + "\n")
        with _app_lock(base, app_id):  # two deploys of one application (threads or processes) swap in turn
            old = Path(tempfile.mkdtemp(prefix=f".{app_id}.old.", dir=base))
            if root.exists():
                os.replace(root, old / "previous")
            os.replace(tmp, root)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    return root


@contextlib.contextmanager
def _app_lock(base: Path, app_id: str) -> Iterator[None]:
    """An exclusive lock on DATA_DIR/deployments/.APP.lock (flock: between threads and processes alike)."""
    with open(base / f".{app_id}.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
