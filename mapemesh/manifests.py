"""Kubernetes manifests read from a directory: the one source of truth for brokers, triggers and services.

The embedded mesh runs exactly the objects that `kubectl apply -k DIR` would create: a directory with a
kustomization is rendered (`mapemesh.kustomize`), so an overlay's patches and the files it does not list are
not objects; a directory without one (DATA_DIR/manifests, where `mapemesh policy deploy` writes) is read whole,
as `kubectl apply -f DIR -R` would read it. The loader keeps the objects it knows and reports the others'
problems without crashing: an object that cannot be used is listed with the reason, never silently dropped.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from mapemesh import kustomize, yamlload

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
    inputs: list[Path] = field(default_factory=list)
    """The files read (for a kustomization: the ones it reaches, wherever they are)."""
    seen: dict[str, tuple[int, int]] = field(default_factory=dict)
    """Each input's (mtime, size) as it was just before it was read: an edit made while the load ran shows as a
    change at the next look (`fingerprint`), never as one already read."""

    def snapshot(self) -> tuple[tuple[str, int, int], ...]:
        """What `fingerprint` gives for these inputs when none changed since they were read."""
        for path in self.inputs:
            self.seen.setdefault(str(path), (-1, -1))  # looked for, not found: its creation is a change
        return tuple(sorted((path, *stat) for path, stat in self.seen.items()))

    def of(self, api_version: str, kind: str) -> list[Manifest]:
        """The objects of one kind."""
        return [m for m in self.objects if m.api_version == api_version and m.kind == kind]


def project_folder(root: Path) -> Path:
    """Where a project's own Services and Triggers go: `knative/base` in a bundle laid out as mapemesh's (overlays
    beside the base), else `knative`."""
    base = root / "knative" / "base"
    return base if base.is_dir() else root / "knative"


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
    """Read the Kubernetes objects of `root`: a kustomization's rendering, or every YAML file under it.

    With `last_good` (a cache kept by the caller between loads), a file that cannot be read keeps the
    objects it held the last time it could: a half-saved edit or a typo does not delete its objects.
    """
    result = ManifestSet()
    if not root.exists():
        result.errors.append(f"{root}: no such file or directory")
        return result
    cache = last_good if last_good is not None else {}
    seen: set[str] = set()
    if root.is_dir() and kustomize.kustomization_file(root) is not None:
        _render(root, cache, seen, result)
    else:
        for path in _yaml_files(root):
            seen.add(str(path))
            result.inputs.append(path)
            docs = _read(path, cache, result)
            if docs is None:
                continue
            start = len(result.objects)
            _collect(path, docs, result)
            cache[str(path)] = result.objects[start:]
    if last_good is not None:
        for gone in set(last_good) - seen:
            del last_good[gone]
    return result


def _stat(path: Path) -> tuple[int, int]:
    try:
        st = path.stat()
    except OSError:
        return (-1, -1)
    return (st.st_mtime_ns, st.st_size)


def _read(path: Path, cache: dict[str, list[Manifest]], result: ManifestSet) -> list[object] | None:
    """A file's YAML documents, or None after recording the error (and keeping its last good objects)."""
    result.seen[str(path)] = _stat(path)
    try:
        return list(yamlload.load_all(path.read_text(encoding="utf-8")))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        kept = cache.get(str(path))
        result.errors.append(f"{path}: cannot read YAML: {exc}" + ("; keeping its last good version" if kept else ""))
        result.objects.extend(kept or ())
        return None


def _render(root: Path, cache: dict[str, list[Manifest]], seen: set[str], result: ManifestSet) -> None:
    """The objects `kubectl kustomize root` gives. A kustomization that cannot be rendered is an error and gives
    no objects, as on a cluster; only a file that cannot be read (a half-saved edit) keeps the last rendering."""
    unreadable: list[Path] = []

    def reader(path: Path) -> list[object]:
        result.seen[str(path)] = _stat(path)
        try:
            return list(yamlload.load_all(path.read_text(encoding="utf-8")))
        except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
            unreadable.append(path)
            raise kustomize.KustomizeError(f"{path}: cannot read YAML: {exc}") from None

    key = f"{root}#kustomize"
    seen.add(key)
    try:
        rendered = kustomize.render(root, reader, result.inputs)
    except kustomize.KustomizeError as exc:
        kept = cache.get(key) if unreadable else None
        result.errors.append(f"{root}: {exc}" + ("; keeping the last good rendering" if kept else ""))
        result.objects.extend(kept or ())
        return
    for obj, origin in rendered.objects:
        path, _, index = origin.rpartition("#")
        _collect(Path(path), [obj], result, int(index or 0))
    cache[key] = list(result.objects)
    read = {p.resolve() for p in rendered.inputs}
    for stray in sorted(p for p in root.glob("*.y*ml") if p.resolve() not in read):
        log.warning("%s is not in %s's kustomization: not applied (kubectl apply -k skips it too); list it under "
                    "resources", stray, root)


def _collect(path: Path, docs: list[object], result: ManifestSet, first: int = 0) -> None:
    for index, doc in enumerate(docs, first):
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


def fingerprint(root: Path, inputs: list[Path] | None = None) -> tuple[tuple[str, int, int], ...]:
    """A cheap summary that changes when the manifests change: of `inputs` (the files the last load read) when
    given, else of every YAML file under `root`; compared with `ManifestSet.snapshot`."""
    paths = inputs if inputs is not None else (_yaml_files(root) if root.exists() else ())
    return tuple(sorted((str(path), *_stat(path)) for path in dict.fromkeys(paths)))
