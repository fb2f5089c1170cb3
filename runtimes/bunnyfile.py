"""Bunnyfiles: bunny's own validation rules, urunc's supported framework/monitor pairs, and the urunc annotations
bunny sets on the image it builds.

The rules and messages follow nubificus/bunny (`hops/validate.go`, `hops/parse_file.go`):

- `version` is required and at most v0.1 (`Unsupported version X. Please use v0.1 or earlier`);
- `platforms.framework` and `platforms.monitor` are required;
- `kernel.from` and `kernel.path` are required;
- `rootfs.from` defaults to `scratch`; a `path` needs a `from` other than scratch; a `raw` rootfs takes no `path`
  and no `from: local`; `include` adds files to a scratch rootfs only; an include entry is `src:dst` (or `src`)
  or a mapping `{from, source, destination}` with `source` and `destination` set.

urunc runs a framework only on the monitors it supports (`unsupported guest monitor pair`): hvt and spt take
rumprun and mirage; qemu takes mewz, mirage, unikraft, linux and hermit; firecracker takes linux and unikraft;
cloud-hypervisor takes linux. Every problem names its field and the line it is on.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from mapemesh import yamlload

SYNTAX = "#syntax=harbor.nbfc.io/nubificus/bunny:latest"
VERSION = (0, 1, 0, 1)
"""The newest bunnyfile version bunny takes (v0.1), as `parse_version` gives it."""
SUPPORTED_PAIRS: dict[str, tuple[str, ...]] = {
    "hvt": ("rumprun", "mirage"),
    "spt": ("rumprun", "mirage"),
    "qemu": ("mewz", "mirage", "unikraft", "linux", "hermit"),
    "firecracker": ("linux", "unikraft"),
    "cloud-hypervisor": ("linux",),
}
"""urunc's supported monitor -> frameworks (urunc's README table and its unikontainers config)."""
ROOTFS_TYPES = ("initrd", "raw", "block")
DEFAULT_ROOTFS_TYPE = {"unikraft": "initrd"}
"""bunny's default rootfs type per framework (raw for the others)."""


@dataclass(frozen=True, slots=True)
class Problem:
    """One thing wrong with a bunnyfile: the field, its line (1-based; 0 when there is no line), the message."""

    file: str
    field: str
    line: int
    message: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else self.file
        return f"{where}: {self.field}: {self.message}"


class Lines:
    """The line of each field of a YAML document (from the composed node tree)."""

    def __init__(self, text: str):
        self.lines: dict[tuple[Any, ...], int] = {}
        self.scalars: dict[tuple[Any, ...], str] = {}
        self.duplicates: list[tuple[tuple[Any, ...], int]] = []
        self._seen: set[int] = set()
        try:
            node = next(iter(yaml.compose_all(text)), None)
        except yaml.YAMLError:
            node = None
        if node is not None:
            self._walk(node, ())

    def _walk(self, node: yaml.Node, path: tuple[Any, ...]) -> None:
        self.lines.setdefault(path, node.start_mark.line + 1)
        if isinstance(node, yaml.ScalarNode):
            self.scalars[path] = str(node.value)
        if id(node) in self._seen:  # an alias: walked once (a recursive one would never end, a bomb would blow up)
            return
        self._seen.add(id(node))
        if isinstance(node, yaml.MappingNode):
            names: set[str] = set()
            for key, value in node.value:
                name = key.value if isinstance(key, yaml.ScalarNode) else str(key)
                if name in names:
                    self.duplicates.append(((*path, name), key.start_mark.line + 1))
                names.add(name)
                self._walk(value, (*path, name))
                self.lines[(*path, name)] = key.start_mark.line + 1  # the key's line, not its value's
        elif isinstance(node, yaml.SequenceNode):
            for i, item in enumerate(node.value):
                self._walk(item, (*path, i))

    def of(self, *path: Any) -> int:
        """The line of `path`, else of the nearest enclosing field that has one."""
        while path:
            if path in self.lines:
                return self.lines[path]
            path = path[:-1]
        return self.lines.get((), 0)


def parse_version(value: Any) -> tuple[int, ...] | None:
    """A bunnyfile version for comparing, go-version style: an optional `v`, dotted numbers (missing ones are 0),
    an optional `-pre.release` (before the release itself) and `+metadata` (ignored)."""
    match = re.fullmatch(r"v?(\d+(?:\.\d+)*)(?:-([0-9A-Za-z.-]+))?(?:\+[0-9A-Za-z.-]+)?", str(value).strip())
    if match is None:
        return None
    numbers = [int(n) for n in match.group(1).split(".")]
    numbers += [0] * (3 - len(numbers))
    return (*numbers, 0 if match.group(2) else 1)  # a pre-release sorts before its release


def _text(value: Any) -> str:
    return "" if value is None else str(value)


def check_text(text: str, name: str = "bunnyfile") -> list[Problem]:
    """Every problem of a bunnyfile's text, in bunny's order (an empty list: bunny takes it and urunc runs it)."""
    out: list[Problem] = []
    lines = Lines(text)

    def problem(message: str, *path: Any) -> None:
        out.append(Problem(name, ".".join(str(p) if not isinstance(p, int) else f"[{p}]" for p in path)
                           .replace(".[", "[") or "(document)", lines.of(*path), message))

    if len(text.splitlines()) <= 1:
        return [Problem(name, "(document)", 1, "Invalid format of file")]
    try:
        doc = next(iter(yamlload.load_all(text)), None)  # bunny reads the first document
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        return [Problem(name, "(document)", mark.line + 1 if mark else 0, f"not YAML: {exc}")]
    except RecursionError:
        return [Problem(name, "(document)", 0, "not YAML bunny can read: it is nested too deeply")]
    if not isinstance(doc, dict):
        return [Problem(name, "(document)", 1, "a bunnyfile is a YAML mapping (version, platforms, kernel, ...)")]
    if not text.startswith("#syntax="):
        out.append(Problem(name, "#syntax", 1, f"the first line must be {SYNTAX} (docker and nerdctl build the "
                                               "file as a Dockerfile otherwise)"))
    for path, line in lines.duplicates:
        out.append(Problem(name, ".".join(map(str, path)), line, f"mapping key {path[-1]!r} already defined"))

    version = doc.get("version")
    if version in (None, ""):
        problem("The version field is necessary", "version")
    else:
        version = lines.scalars.get(("version",), version)  # as written: YAML reads 0.10 as the float 0.1
        parsed = parse_version(version)
        if parsed is None:
            problem(f"Could not parse version in user bunnyfile {version}", "version")
        elif parsed > VERSION:
            problem(f"Unsupported version {version}. Please use v0.1 or earlier", "version")

    platforms = doc.get("platforms")
    if platforms is not None and not isinstance(platforms, dict):
        problem("platforms must be a mapping (framework, version, monitor, architecture)", "platforms")
        platforms = {}
    platforms = platforms or {}
    mistyped = {key for key in ("framework", "version", "monitor", "architecture")
                if isinstance(platforms.get(key), dict | list)}
    for key in sorted(mistyped):
        problem(f"platforms.{key} must be a string", "platforms", key)
    platforms = {k: v for k, v in platforms.items() if k not in mistyped}
    framework, monitor = _text(platforms.get("framework")), _text(platforms.get("monitor"))
    if not framework and "framework" not in mistyped:
        problem("The framework field of platforms is necessary", "platforms", "framework")
    if not monitor and "monitor" not in mistyped:
        problem("The monitor field of platforms is necessary", "platforms", "monitor")
    if framework and monitor:
        if monitor not in SUPPORTED_PAIRS:
            problem(f"urunc does not know the monitor {monitor!r} (it knows {', '.join(SUPPORTED_PAIRS)})",
                    "platforms", "monitor")
        elif framework not in SUPPORTED_PAIRS[monitor]:
            runs_on = [m for m, fws in SUPPORTED_PAIRS.items() if framework in fws]
            hint = f"{framework} runs on {', '.join(runs_on)}" if runs_on else f"urunc does not run {framework}"
            problem(f"unsupported guest monitor pair {monitor} {framework} ({monitor} takes "
                    f"{', '.join(SUPPORTED_PAIRS[monitor])}; {hint})", "platforms", "framework")

    kernel = doc.get("kernel")
    if kernel is not None and not isinstance(kernel, dict):
        problem("kernel must be a mapping (from, path)", "kernel")
        kernel = {}
    kernel = kernel or {}
    if not _text(kernel.get("from")):
        problem("The from field of kernel is necessary", "kernel", "from")
    if not _text(kernel.get("path")):
        problem("The path field of kernel is necessary", "kernel", "path")

    rootfs = doc.get("rootfs")
    if rootfs is not None and not isinstance(rootfs, dict):
        problem("rootfs must be a mapping (from, path, type, include)", "rootfs")
        rootfs = None
    if rootfs:
        _check_rootfs(rootfs, problem)

    for key in ("cmd", "entrypoint", "envs"):
        value = doc.get(key)
        if value is not None and not (isinstance(value, list) and all(isinstance(v, str) for v in value)):
            problem(f"{key} must be a list of strings", key)
    return out


def _check_rootfs(rootfs: dict[str, Any], problem: Any) -> None:
    source = _text(rootfs.get("from")) or "scratch"
    path, kind = _text(rootfs.get("path")), _text(rootfs.get("type"))
    if kind and kind not in ROOTFS_TYPES:
        problem(f"Unexpected RootfsType value {kind} (initrd, raw or block)", "rootfs", "type")
    if source == "scratch" and path:
        problem("The from field of rootfs can not be empty or scratch, if path is set", "rootfs", "from")
    if path and kind == "raw":
        problem("The path field in rootfs can not be combined with a raw rootfs", "rootfs", "path")
    if source == "local" and kind == "raw":
        problem("If type of rootfs is raw, then from can not be local", "rootfs", "from")
    include = rootfs.get("include")
    if include is None:
        return
    if not isinstance(include, list):
        problem("include must be a list of `src:dst` entries or {from, source, destination} mappings",
                "rootfs", "include")
        return
    if include and source != "scratch":
        problem("Adding files to an existing rootfs is not yet supported (include needs from: scratch)",
                "rootfs", "include")
    for i, entry in enumerate(include):
        if isinstance(entry, str):
            if not entry.split(":")[0]:
                problem("Invalid syntax in rootf's include. An entry can not have its first part empty",
                        "rootfs", "include", i)
        elif isinstance(entry, dict):
            unknown = sorted(str(k) for k in set(entry) - {"from", "source", "destination"})
            if unknown:
                problem(f"unknown key(s) {', '.join(unknown)} (an include mapping has from, source, destination)",
                        "rootfs", "include", i)
            if not _text(entry.get("source")):
                problem(f"invalid file mapping: source is empty (from={_text(entry.get('from'))!r}, "
                        f"destination={_text(entry.get('destination'))!r})", "rootfs", "include", i, "source")
            if not _text(entry.get("destination")):
                problem(f"invalid file mapping: destination is empty (from={_text(entry.get('from'))!r}, "
                        f"source={_text(entry.get('source'))!r})", "rootfs", "include", i, "destination")
        else:
            problem("invalid Include file format (an entry is `src:dst` or {from, source, destination})",
                    "rootfs", "include", i)


def check_file(path: Path) -> list[Problem]:
    """The problems of the bunnyfile at `path` (a file that cannot be read is one problem)."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        return [Problem(str(path), "(document)", 0, f"cannot read it: {exc}")]
    return check_text(text, str(path))


def load(text: str) -> dict[str, Any]:
    """A valid bunnyfile's document; ValueError with every problem otherwise."""
    problems = check_text(text)
    if problems:
        raise ValueError("; ".join(str(p) for p in problems))
    doc: dict[str, Any] = yamlload.load(text)
    return doc


def rootfs_type(doc: dict[str, Any]) -> str:
    """The rootfs type bunny uses: the one given, else the framework's default (none without a rootfs)."""
    rootfs = doc.get("rootfs") or {}
    if not rootfs:
        return ""
    return _text(rootfs.get("type")) or DEFAULT_ROOTFS_TYPE.get(_text(doc["platforms"]["framework"]), "raw")


def annotations(doc: dict[str, Any]) -> dict[str, str]:
    """The urunc annotations bunny sets on the image it builds from this (valid) bunnyfile.

    As bunny's `SetAnnotations` and its choice of base image: when the rootfs is an image (or a raw rootfs
    made from scratch) that image is the base, and a kernel from elsewhere is copied in at /.boot/kernel; a
    local kernel is always copied there; otherwise the kernel's image is the base and `binary` is its
    `kernel.path`. A rootfs bunny makes or copies (from scratch, or a local file) is at /.boot/rootfs; one in a
    rootfs image stays at its `path`. `cmdline` is `cmd` joined by spaces (or the older `cmdline`);
    `mountRootfs` is "true" for a raw rootfs (the container's own root filesystem becomes the guest's); a block
    rootfs is mounted at / (/data for rumprun).
    """
    platforms = doc["platforms"]
    kernel = doc["kernel"]
    rootfs = doc.get("rootfs") or {}
    source = _text(rootfs.get("from")) or "scratch"
    kind = rootfs_type(doc)
    image_base = source not in ("scratch", "local") or (kind == "raw" and source == "scratch" and bool(rootfs))
    copied_kernel = _text(kernel["from"]) == "local" or image_base
    out = {
        "com.urunc.unikernel.unikernelType": _text(platforms["framework"]),
        # bunny takes the older `cmdline` string, split at spaces, when there is no `cmd`.
        "com.urunc.unikernel.cmdline": " ".join(str(c) for c in doc.get("cmd") or []) or _text(doc.get("cmdline")),
        "com.urunc.unikernel.hypervisor": _text(platforms["monitor"]),
        "com.urunc.unikernel.binary": "/.boot/kernel" if copied_kernel else _text(kernel["path"]),
        "com.urunc.unikernel.mountRootfs": "false",
    }
    if platforms.get("version"):
        out["com.urunc.unikernel.unikernelVersion"] = _text(platforms["version"])
    path = _text(rootfs.get("path"))
    made = source == "scratch" and bool(rootfs.get("include"))
    rootfs_path = path if source not in ("scratch", "local") and path else "/.boot/rootfs"
    has_file = made or bool(path)
    if kind == "initrd" and has_file:
        out["com.urunc.unikernel.initrd"] = rootfs_path
    elif kind == "block" and has_file:
        out["com.urunc.unikernel.block"] = rootfs_path
        out["com.urunc.unikernel.blkMntPoint"] = "/data" if platforms["framework"] == "rumprun" else "/"
    elif kind == "raw":
        out["com.urunc.unikernel.mountRootfs"] = "true"
    return out
