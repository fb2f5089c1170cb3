"""Bearer tokens kept in the data directory (`node-shim.token`, `api.token`): made once, private, checked in
constant time."""

from __future__ import annotations

import hmac
import logging
import os
import secrets
import stat
from pathlib import Path

log = logging.getLogger(__name__)


def ensure(data: Path, name: str) -> str:
    """The token in DATA_DIR/`name`, made (mode 0600) when there is none.

    It is written to a private temporary file and linked into place, so a second process starting at the same
    moment reads a whole token, never an empty file. A token file others can read is made private again.
    """
    path = data / name
    data.mkdir(parents=True, exist_ok=True)
    if not path.exists():
        tmp = data / f".{name}.{os.getpid()}.{secrets.token_hex(4)}"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_urlsafe(32) + "\n")
        try:
            os.link(tmp, path)  # fails when another process made one first: theirs is used
        except FileExistsError:
            pass
        finally:
            tmp.unlink()
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        try:
            path.chmod(0o600)
        except OSError as exc:
            # A mounted Kubernetes Secret: read-only, owned by root, group-readable under fsGroup. The pod's
            # own files; the warning says so without failing.
            log.warning("%s is readable by others (mode %o) and cannot be made private (%s): a mounted Secret? "
                        "give it defaultMode 0400 and no fsGroup where you can", path, mode, exc.strerror)
        else:
            log.warning("%s was readable by others (mode %o): made private (0600)", path, mode)
    text = path.read_text().strip()
    if not text:
        raise RuntimeError(f"{path} is empty: delete it and a new token is made")
    return text


def read(data: Path, name: str) -> str | None:
    """The token in DATA_DIR/`name` for a client, or None when there is none (yet)."""
    try:
        return (Path(data) / name).read_text().strip() or None
    except FileNotFoundError:
        return None


def matches(authorization: str | None, token: str) -> bool:
    """Whether an `Authorization` header carries `Bearer <token>`."""
    scheme, _, given = (authorization or "").partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), token.encode())
