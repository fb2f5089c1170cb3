"""Writing files others watch: whole or not at all.

| call                        | what a reader sees                                                        |
|-----------------------------|---------------------------------------------------------------------------|
| `write_atomically(path, x)` | the old file or the new one, never half of it (a temporary file in the    |
|                             | same folder, then a rename); the folder is made when missing               |
"""

from __future__ import annotations

import os
from pathlib import Path


def write_atomically(path: Path, content: str | bytes) -> None:
    """Write through a temporary file and a rename, so a watcher never reads half of it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(content.encode("utf-8") if isinstance(content, str) else content)
    os.replace(tmp, path)
