"""Files for a policy: a new one scaffolded in a project, or a policy file deployed to a running mesh."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

from mapemesh.files import write_atomically
from mapemesh.manifests import project_folder
from mapemesh.runtimes.build import bunnyfile_for
from mapemesh.runtimes.policy_service import check_name, render

POLICY_TEMPLATE = '''"""{title} policy, in the MLSysOps policy format (initialize, analyze, plan).

Sets a node's CPUs to their maximum frequency while a metric of the node is above a threshold, and to their
minimum otherwise. Edit `initialize` to declare what the policy needs, then `analyze` and `plan`. Try it
offline with `mapemesh policy test {path} --events recorded.jsonl`.
"""

METRIC = "node_cpu_utilization"
THRESHOLD = 0.8


def initialize():
    return {{
        "telemetry": {{"metrics": [METRIC], "system_scraper_interval": "5s"}},
        "mechanisms": ["CPUFrequency"],
        "packages": [],
        "configuration": {{"analyze_interval": "1s"}},
        "scope": "global",
        "core": False,
        "machine_learning_usage": False,
    }}


def _wanted(telemetry):
    value = (telemetry or {{}}).get("data", {{}}).get(METRIC)
    return "max" if value is not None and value > THRESHOLD else "min"


def analyze(context, application_description, system_description, mechanisms, telemetry, ml_connector):
    return _wanted(telemetry) != context.get("planned"), context


def plan(context, application_description, system_description, mechanisms, telemetry, ml_connector):
    context["planned"] = _wanted(telemetry)
    return {{"CPUFrequency": {{"command": "set", "cpu": "all", "frequency": context["planned"]}}}}, context
'''

WRAPPER_TEMPLATE = '''"""The {name} policy as a function; its MLSysOps policy file is `policy.py`, next to this one."""

from pathlib import Path

from mapemesh.policy.function import policy_function

policy = policy_function(Path(__file__).with_name("policy.py"), "{name}")
'''

class ScaffoldError(ValueError):
    """Files that cannot be written (they exist already, say)."""


def name_from_file(path: Path) -> str:
    """A policy name from its file name: `policy-cpu_freq.py` -> `cpu-freq`; `hot_cpu/policy.py` -> `hot-cpu`."""
    stem = path.stem.removeprefix("policy-").removeprefix("policy_")
    if stem == "policy":  # the layout `mapemesh policy new` makes: the folder names the policy
        stem = path.resolve().parent.name
    return re.sub(r"[^a-z0-9]+", "-", stem.lower()).strip("-")


def new_policy(name: str, root: Path) -> list[Path]:
    """Scaffold policy `name` in the project at `root`: module, function wrapper, manifests, bunnyfile."""
    check_name(name)
    package = name.replace("-", "_")
    folder = root / "functions" / "policies" / package
    source = f"functions/policies/{package}/__init__.py"
    files = {
        folder / "policy.py": POLICY_TEMPLATE.format(title=name.replace("-", " ").capitalize(),
                                                     path=f"functions/policies/{package}/policy.py"),
        folder / "__init__.py": WRAPPER_TEMPLATE.format(name=name),
        project_folder(root) / f"policy-{name}.yaml": render(name, source),
        root / "bunnyfiles" / f"policy-{name}.bunnyfile": bunnyfile_for(f"policy-{name}", source, "policy"),
    }
    existing = [str(p) for p in files if p.exists()]
    if existing:
        raise ScaffoldError(f"policy {name} exists already: {', '.join(existing)}")
    for path, text in files.items():
        write_atomically(path, text)
    add_resource(root, f"policy-{name}.yaml")
    return list(files)


def add_resource(root: Path, manifest: str) -> None:
    """List `manifest` in the kustomization of the project's manifests (knative/base or knative; its comments and
    order kept)."""
    kustomization = project_folder(root) / "kustomization.yaml"
    if kustomization.exists():
        text = kustomization.read_text(encoding="utf-8")
        if f"- {manifest}" not in text:
            write_atomically(kustomization, text.rstrip("\n") + f"\n  - {manifest}\n")


def deploy_files(name: str, policy_file: Path, data: Path) -> tuple[Path, Path]:
    """Copy a policy file under DATA_DIR/policies and write its manifests to DATA_DIR/manifests.

    The copy's folder is named after its content, so a changed policy becomes a new revision (new processes
    with the new code) and the same file deployed again changes nothing. Returns (copy, manifest).
    """
    check_name(name)
    code = policy_file.read_bytes()
    folder = (data / "policies" / name / hashlib.sha256(code).hexdigest()[:12]).resolve()
    folder.mkdir(parents=True, exist_ok=True)
    if not (folder / "policy.py").exists():  # the folder is named after the content: never rewritten
        write_atomically(folder / "policy.py", code)
    write_atomically(folder / "__init__.py", WRAPPER_TEMPLATE.format(name=name))
    manifest = data / "manifests" / f"policy-{name}.yaml"
    write_atomically(manifest, render(name, str(folder / "__init__.py")))
    return folder / "policy.py", manifest
