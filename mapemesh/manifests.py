"""Kubernetes manifests read from a directory: the one source of truth for brokers, triggers and services.

The embedded mesh runs exactly the objects that `kubectl apply -k knative/` would create. This module
loads every YAML document under a directory, keeps the ones it knows, and reports the others' problems
without crashing: an object that cannot be used is listed with the reason, never silently dropped.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

log = logging.getLogger(__name__)

EVENTING_V1 = "eventing.knative.dev/v1"
DEFAULT_NAMESPACE = "default"


@dataclass(frozen=True, slots=True)
class Manifest:
    """One Kubernetes object as read from a file."""

    api_version: str
    kind: str
    name: str
    namespace: str
    body: dict[str, Any]
    origin: str
    """`path#index` of the document, for error messages."""

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"


@dataclass(slots=True)
class ManifestSet:
    """Everything read from a directory: usable objects and the problems found on the way."""

    objects: list[Manifest] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def of(self, api_version: str, kind: str) -> list[Manifest]:
        """The objects of one kind."""
        return [m for m in self.objects if m.api_version == api_version and m.kind == kind]


def _yaml_files(root: Path) -> Iterator[Path]:
    if root.is_file():
        yield root
        return
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            if name.endswith((".yaml", ".yml")) and not name.startswith("."):
                yield Path(dirpath) / name


def load(root: Path, last_good: dict[str, list[Manifest]] | None = None) -> ManifestSet:
    """Read every Kubernetes object under `root` (a directory or one file).

    With `last_good` (a cache kept by the caller between loads), a file that cannot be read keeps the
    objects it held the last time it could: a half-saved edit or a typo does not delete its objects.
    """
    result = ManifestSet()
    if not root.exists():
        result.errors.append(f"{root}: no such file or directory")
        return result
    seen: set[str] = set()
    for path in _yaml_files(root):
        seen.add(str(path))
        try:
            docs = list(yaml.safe_load_all(path.read_text(encoding="utf-8")))
        except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
            kept = (last_good or {}).get(str(path))
            result.errors.append(f"{path}: cannot read YAML: {exc}"
                                 + ("; keeping its last good version" if kept else ""))
            result.objects.extend(kept or ())
            continue
        start = len(result.objects)
        _collect(path, docs, result)
        if last_good is not None:
            last_good[str(path)] = result.objects[start:]
    if last_good is not None:
        for gone in set(last_good) - seen:
            del last_good[gone]
    return result


def _collect(path: Path, docs: list[object], result: ManifestSet) -> None:
    for index, doc in enumerate(docs):
        origin = f"{path}#{index}"
        if doc is None:
            continue
        if not isinstance(doc, dict) or "kind" not in doc or "apiVersion" not in doc:
            if path.name.startswith("kustomization"):
                continue
            result.errors.append(f"{origin}: not a Kubernetes object (no apiVersion/kind)")
            continue
        meta = doc.get("metadata") or {}
        name = meta.get("name") if isinstance(meta, dict) else None
        if not isinstance(name, str) or not name:
            if doc.get("kind") != "Kustomization":
                result.errors.append(f"{origin}: {doc['kind']} has no metadata.name")
            continue
        namespace = meta.get("namespace") or DEFAULT_NAMESPACE
        result.objects.append(Manifest(str(doc["apiVersion"]), str(doc["kind"]), name, str(namespace),
                                       doc, origin))


def fingerprint(root: Path) -> tuple[tuple[str, int, int], ...]:
    """A cheap summary of the YAML files under `root` that changes when any of them changes."""
    out = []
    for path in _yaml_files(root) if root.exists() else ():
        try:
            st = path.stat()
        except OSError:
            continue
        out.append((str(path), st.st_mtime_ns, st.st_size))
    return tuple(out)
