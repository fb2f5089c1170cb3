"""Rendering a kustomization the way `kubectl kustomize DIR` does, for the features mapemesh's bundle uses.

The embedded mesh runs what `kubectl apply -k DIR` would create, so it renders DIR's kustomization instead of
reading every file under it (an overlay's patches are not objects of their own). Features outside the table are
refused with the field's name, never ignored: the result is then what a cluster gets, or an error.

| kustomization field | what it does here (as in kustomize v5)                                            |
|---------------------|-----------------------------------------------------------------------------------|
| `resources`         | files in or below the folder (multi-document YAML) and folders holding a           |
|                     | kustomization (anywhere), in order;                                                |
|                     | an object's id (group, kind, namespace, name) may appear only once                 |
| `patches`           | `path:` or inline `patch:`; a strategic-merge patch (an object: maps merged,       |
|                     | `null` deletes, lists replaced; `$patch: delete` removes the object) or a JSON 6902|
|                     | list (add, remove, replace, copy,                                                  |
|                     | move, test); `target:` (group, version, kind, name, namespace, labelSelector)      |
|                     | applies it to every object it selects                                              |
| `images`            | `name` -> `newName`, `newTag`, `digest` on every `containers[]` / `initContainers[]`|
|                     | image at any depth (a Knative Service's template included)                         |
| `apiVersion`, `kind`| `kustomize.config.k8s.io/v1beta1` `Kustomization` (or left out)                    |

A strategic-merge patch that sets a list, or uses a `$` directive other than a top-level `$patch: delete`, is
refused (kustomize merges some lists of built-in kinds by key); so is a `labelSelector` beyond `k=v` and `k`. Tests
compare the bundle's rendering with `kubectl kustomize` where it exists.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mapemesh import yamlload

FILENAMES = ("kustomization.yaml", "kustomization.yml", "Kustomization")
SUPPORTED = {"apiVersion", "kind", "resources", "patches", "images"}
Reader = Callable[[Path], list[Any]]
"""Reads a YAML file's documents (the caller may keep a file's last good version)."""


class KustomizeError(ValueError):
    """A kustomization that cannot be rendered; the message names the file and the field."""


@dataclass(slots=True)
class Rendered:
    """The objects of a kustomization, each with the file it came from, and every file read."""

    objects: list[tuple[dict[str, Any], str]] = field(default_factory=list)
    inputs: list[Path] = field(default_factory=list)


def kustomization_file(directory: Path) -> Path | None:
    """The kustomization file of `directory`, or None."""
    for name in FILENAMES:
        if (directory / name).is_file():
            return directory / name
    return None


def _read_yaml(path: Path) -> list[Any]:
    return list(yamlload.load_all(path.read_text(encoding="utf-8")))


def render(directory: Path, reader: Reader = _read_yaml, inputs: list[Path] | None = None) -> Rendered:
    """The objects `kubectl kustomize directory` gives; KustomizeError says what cannot be rendered.

    `inputs` collects every file read or looked for, also when rendering fails (so a watcher sees the fix)."""
    out = Rendered(inputs=inputs if inputs is not None else [])
    out.objects = _build(Path(directory), reader, out.inputs, ())
    return out


def _build(directory: Path, reader: Reader, inputs: list[Path], stack: tuple[Path, ...]) -> list[tuple[dict, str]]:
    kfile = kustomization_file(directory)
    if kfile is None:
        inputs.append(directory / FILENAMES[0])
        raise KustomizeError(f"{directory}: no kustomization.yaml (a resource directory needs one)")
    resolved = directory.resolve()
    inputs.append(kfile)
    if resolved in stack:
        raise KustomizeError(f"{kfile}: resources form a cycle through {directory}")
    docs = [d for d in reader(kfile) if d is not None]
    spec = docs[0] if docs else {}
    if not isinstance(spec, dict):
        raise KustomizeError(f"{kfile}: not a mapping")
    unknown = sorted(set(spec) - SUPPORTED)
    if unknown:
        raise KustomizeError(f"{kfile}: {', '.join(unknown)} not supported by mapemesh's renderer (fields: "
                             f"{', '.join(sorted(SUPPORTED))}); render with kubectl kustomize")
    objects: list[tuple[dict, str]] = []
    seen: dict[tuple[str, str, str, str], str] = {}
    for entry in _list(spec, "resources", kfile):
        if not isinstance(entry, str) or "://" in entry or entry.startswith(("github.com/", "git@")):
            raise KustomizeError(f"{kfile}: resources: {entry!r} is not a local file or directory")
        path = directory / entry
        if path.is_dir():  # a kustomization anywhere; a file only in or below this one (kustomize's rule)
            found = _build(path, reader, inputs, (*stack, resolved))
        elif path.is_file():
            path = _inside(directory, entry, f"{kfile}: resources")
            inputs.append(path)
            found = [(doc, f"{path}#{i}") for i, doc in enumerate(reader(path)) if doc is not None]
        else:
            inputs.append(path)
            raise KustomizeError(f"{kfile}: resources: {entry} does not exist")
        for obj, origin in found:
            if not isinstance(obj, dict) or "kind" not in obj:
                raise KustomizeError(f"{origin}: not a Kubernetes object (no kind)")
            key = resource_id(obj)
            if key in seen:
                raise KustomizeError(f"{origin}: {key[1]} {key[2]}/{key[3]} is already a resource "
                                     f"(from {seen[key]})")
            seen[key] = origin
            objects.append((obj, origin))
    for i, item in enumerate(_list(spec, "patches", kfile)):
        _apply_patch(objects, item, directory, reader, inputs, f"{kfile}: patches[{i}]")
    for i, image in enumerate(_list(spec, "images", kfile)):
        _apply_image(objects, image, f"{kfile}: images[{i}]")
    return objects


def _inside(directory: Path, entry: str, where: str) -> Path:
    """`directory/entry`, refused as kustomize's default load restrictor refuses it when it is outside."""
    path = directory / entry
    if not path.resolve().is_relative_to(directory.resolve()):
        raise KustomizeError(f"{where}: {entry} is not in or below {directory} (kustomize loads files only from "
                             "within a kustomization's folder)")
    return path


def _list(spec: dict[str, Any], name: str, kfile: Path) -> list[Any]:
    value = spec.get(name) or []
    if not isinstance(value, list):
        raise KustomizeError(f"{kfile}: {name} must be a list")
    return value


def resource_id(obj: dict[str, Any]) -> tuple[str, str, str, str]:
    """(group, kind, namespace, name): what kustomize takes as one resource."""
    meta = obj.get("metadata") or {}
    group = str(obj.get("apiVersion", "")).rpartition("/")[0]
    return group, str(obj.get("kind")), str(meta.get("namespace") or ""), str(meta.get("name") or "")


# -- patches ---------------------------------------------------------------------------------------------------

def _apply_patch(objects: list[tuple[dict, str]], item: Any, directory: Path, reader: Reader, inputs: list[Path],
                 where: str) -> None:
    if not isinstance(item, dict) or ("path" in item) == ("patch" in item):
        raise KustomizeError(f"{where}: needs exactly one of path or patch")
    if "path" in item:
        path = _inside(directory, str(item["path"]), where)
        inputs.append(path)
        if not path.is_file():
            raise KustomizeError(f"{where}: {item['path']} does not exist")
        docs = [d for d in reader(path) if d is not None]
    else:
        docs = [d for d in yamlload.load_all(str(item["patch"])) if d is not None]
    if len(docs) != 1:
        raise KustomizeError(f"{where}: a patch is one YAML document")
    patch = docs[0]
    target = item.get("target")
    if target is not None and not isinstance(target, dict):
        raise KustomizeError(f"{where}: target must be a mapping")
    if isinstance(patch, list):
        if target is None:
            raise KustomizeError(f"{where}: a JSON 6902 patch needs a target")
        selected = _select(objects, target, where)
        for obj, origin in selected:
            try:
                json6902(obj, patch)
            except KustomizeError as exc:
                raise KustomizeError(f"{where} on {origin}: {exc}") from None
        return
    if not isinstance(patch, dict):
        raise KustomizeError(f"{where}: a patch is an object (strategic merge) or a list of operations (JSON 6902)")
    meta = patch.get("metadata") or {}
    if target is None:
        target = {"kind": patch.get("kind"), "name": meta.get("name")}
        if meta.get("namespace"):
            target["namespace"] = meta["namespace"]
    selected = _select(objects, target, where)
    if patch.get("$patch") == "delete":
        gone = {id(obj) for obj, _ in selected}
        objects[:] = [(obj, origin) for obj, origin in objects if id(obj) not in gone]
        return
    problem = _unsupported_merge(patch)
    if problem:
        raise KustomizeError(f"{where}: {problem}")
    # With a target, the patch's own kind and name select nothing: the target's objects keep theirs.
    body = {k: v for k, v in patch.items() if k not in ("apiVersion", "kind", "$patch")}
    body.pop("metadata", None)
    rest = {k: v for k, v in meta.items() if k not in ("name", "namespace")}
    if rest:
        body["metadata"] = rest
    for obj, _origin in selected:
        merged = merge(obj, body)
        obj.clear()
        obj.update(merged)


def _select(objects: list[tuple[dict, str]], target: dict[str, Any], where: str) -> list[tuple[dict, str]]:
    unknown = set(target) - {"group", "version", "kind", "name", "namespace", "labelSelector"}
    if unknown:
        raise KustomizeError(f"{where}: target field(s) {', '.join(sorted(unknown))} not supported")
    out = []
    for obj, origin in objects:
        group, _, version = str(obj.get("apiVersion", "")).rpartition("/")
        meta = obj.get("metadata") or {}
        checks = (("group", group), ("version", version), ("kind", obj.get("kind")), ("name", meta.get("name")),
                  ("namespace", meta.get("namespace") or ""))
        if all(name not in target or re.fullmatch(str(target[name]), str(value or "")) for name, value in checks) \
                and _labels_match(meta.get("labels") or {}, target.get("labelSelector")):
            out.append((obj, origin))
    if not out:
        raise KustomizeError(f"{where}: no resource matches the target {target}")
    return out


_SELECTOR_TERM = re.compile(r"\s*([A-Za-z0-9./_-]+)\s*(?:(==?)\s*([A-Za-z0-9._-]*))?\s*")


def _labels_match(labels: dict[str, Any], selector: object) -> bool:
    """Equality terms (`k=v`, `k==v`) and existence (`k`), comma-separated; other selector syntax is refused."""
    if selector is None:
        return True
    for term in str(selector).split(","):
        match = _SELECTOR_TERM.fullmatch(term)
        if match is None:
            raise KustomizeError(f"labelSelector {selector!r}: only k=v and k terms are supported here (not "
                                 "!=, in, notin or !k); render with kubectl kustomize")
        key, op, value = match.groups()
        if (op and str(labels.get(key)) != value) or (not op and key not in labels):
            return False
    return True


def _unsupported_merge(patch: Any, path: str = "") -> str | None:
    """Why a strategic-merge patch would merge here otherwise than in kustomize (None: it would not)."""
    if isinstance(patch, list):
        return (f"a strategic-merge patch that sets a list ({path or '/'}) is not supported here (kustomize "
                "merges some lists by key): use a JSON 6902 patch")
    if isinstance(patch, dict):
        for key, value in patch.items():
            if key.startswith("$") and not (path == "" and key == "$patch" and value == "delete"):
                return f"{key} at {path or '/'} is not supported here: render with kubectl kustomize"
            problem = _unsupported_merge(value, f"{path}/{key}")
            if problem:
                return problem
    return None


def merge(base: Any, patch: Any) -> Any:
    """A strategic-merge patch without a schema: maps merge recursively, `null` deletes, anything else replaces."""
    if not isinstance(base, dict) or not isinstance(patch, dict):
        return copy.deepcopy(patch)
    out = dict(base)
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = merge(base.get(key), value)
    return out


def json6902(obj: dict[str, Any], operations: list[Any]) -> None:
    """Apply JSON patch `operations` (RFC 6902) to `obj` in place; KustomizeError names the failing operation."""
    for n, op in enumerate(operations):
        if not isinstance(op, dict) or op.get("op") not in ("add", "remove", "replace", "copy", "move", "test"):
            raise KustomizeError(f"operation {n}: op must be add, remove, replace, copy, move or test")
        name = op["op"]
        try:
            if name in ("copy", "move"):
                value = copy.deepcopy(_get(obj, _pointer(op.get("from"))))
                if name == "move":
                    _remove(obj, _pointer(op.get("from")))
                _add(obj, _pointer(op.get("path")), value)
            elif name == "test":
                if _get(obj, _pointer(op.get("path"))) != op.get("value"):
                    raise KustomizeError("the test failed")
            elif name == "remove":
                _remove(obj, _pointer(op.get("path")))
            elif name == "replace":
                _get(obj, _pointer(op.get("path")))  # must exist
                _remove(obj, _pointer(op.get("path")))
                _add(obj, _pointer(op.get("path")), copy.deepcopy(op.get("value")))
            else:
                _add(obj, _pointer(op.get("path")), copy.deepcopy(op.get("value")))
        except (KeyError, IndexError, TypeError, ValueError) as exc:
            raise KustomizeError(f"operation {n} ({name} {op.get('path')}): {exc or type(exc).__name__}") from None


def _pointer(path: object) -> list[str]:
    if not isinstance(path, str) or (path and not path.startswith("/")):
        raise ValueError(f"{path!r} is not a JSON pointer")
    return [p.replace("~1", "/").replace("~0", "~") for p in path.split("/")[1:]] if path else []


def _parent(doc: Any, parts: list[str]) -> Any:
    for part in parts[:-1]:
        doc = doc[int(part)] if isinstance(doc, list) else doc[part]
    return doc


def _get(doc: Any, parts: list[str]) -> Any:
    for part in parts:
        doc = doc[int(part)] if isinstance(doc, list) else doc[part]
    return doc


def _add(doc: Any, parts: list[str], value: Any) -> None:
    if not parts:
        raise ValueError("cannot replace the whole object")
    parent, last = _parent(doc, parts), parts[-1]
    if isinstance(parent, list):
        index = len(parent) if last == "-" else int(last)
        if not 0 <= index <= len(parent):
            raise IndexError(f"index {index} out of range")
        parent.insert(index, value)
    elif isinstance(parent, dict):
        parent[last] = value
    else:
        raise TypeError(f"{last!r} is not inside a map or a list")


def _remove(doc: Any, parts: list[str]) -> None:
    parent, last = _parent(doc, parts), parts[-1]
    if isinstance(parent, list):
        del parent[int(last)]
    else:
        del parent[last]


# -- images ----------------------------------------------------------------------------------------------------

def _apply_image(objects: list[tuple[dict, str]], image: Any, where: str) -> None:
    if not isinstance(image, dict) or not image.get("name"):
        raise KustomizeError(f"{where}: needs a name")
    unknown = set(image) - {"name", "newName", "newTag", "digest"}
    if unknown:
        raise KustomizeError(f"{where}: field(s) {', '.join(sorted(unknown))} not supported")
    for obj, _origin in objects:
        _images_in(obj, image)


def _images_in(node: Any, image: dict[str, Any]) -> None:
    if isinstance(node, dict):
        for key, value in node.items():
            if key in ("containers", "initContainers") and isinstance(value, list):
                for container in value:
                    if isinstance(container, dict) and isinstance(container.get("image"), str):
                        container["image"] = retag(container["image"], image)
            _images_in(value, image)
    elif isinstance(node, list):
        for item in node:
            _images_in(item, image)


def split_image(ref: str) -> tuple[str, str, str]:
    """(name, ":tag" or "", "@digest" or "") of an image reference."""
    name, at, digest = ref.partition("@")
    slash = name.rfind("/")
    colon = name.rfind(":")
    tag = ""
    if colon > slash:
        name, tag = name[:colon], name[colon:]
    return name, tag, at + digest


def retag(ref: str, image: dict[str, Any]) -> str:
    """`ref` after kustomize's `images` entry `image`, or `ref` unchanged when its name is another image's."""
    name, tag, digest = split_image(ref)
    if name != image["name"]:
        return ref
    name = str(image.get("newName") or name)
    if image.get("digest"):
        return f"{name}@{image['digest']}"
    if image.get("newTag") is not None:
        return f"{name}:{image['newTag']}"
    return name + tag + digest
