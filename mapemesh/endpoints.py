"""`DATA_DIR/endpoints.json`: where each running component can be reached.

Every long-running command records its component's base URL here (`broker`, `api`, `node-shim`, ...) and
removes it when it stops, so users and tools find a running mesh without being told ports.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from collections.abc import Iterator
from pathlib import Path

FILE = "endpoints.json"


@contextlib.contextmanager
def _locked(data: Path) -> Iterator[Path]:
    data.mkdir(parents=True, exist_ok=True)
    with open(data / (FILE + ".lock"), "a+") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield data / FILE
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def read(data: Path) -> dict[str, str]:
    """The components recorded in `data`, name -> base URL (empty when none)."""
    path = Path(data) / FILE
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except ValueError as exc:
        raise ValueError(f"{path} is not valid JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise ValueError(f"{path} must hold a JSON object")
    return {str(k): str(v) for k, v in doc.items()}


def _write(path: Path, doc: dict[str, str]) -> None:
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def register(data: Path, component: str, url: str) -> None:
    """Record `component` at `url`."""
    with _locked(Path(data)) as path:
        doc = read(path.parent)
        doc[component] = url.rstrip("/")
        _write(path, doc)


def unregister(data: Path, component: str, url: str | None = None) -> None:
    """Remove `component` (only if it still points at `url`, when given)."""
    with _locked(Path(data)) as path:
        doc = read(path.parent)
        if component in doc and (url is None or doc[component] == url.rstrip("/")):
            del doc[component]
            _write(path, doc)
