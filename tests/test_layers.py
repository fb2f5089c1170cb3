"""The layers are one-way, checked on the source (every import, at any depth of the file):

| rule                                                                                   | why                     |
|----------------------------------------------------------------------------------------|-------------------------|
| the core (`mapemesh/`, except `mapemesh/cli/`) imports neither `mapemesh.functions`     | the core serves every   |
| nor `mapemesh.runtimes`                                                                | wing, knows none        |
| a function (`functions/X`) imports no other function (`functions/Y`); `accel/<name>`    | each stage is its own   |
| may use `accel`'s shared module, a policy no other policy                               | Service                 |
| the node shim and the runtimes import no function                                       | adapters share the core |

A planted violation makes the checker fail (the last test), so the rule cannot pass by checking nothing.
"""

from __future__ import annotations

import ast
from pathlib import Path

from .conftest import REPO

WINGS = {"mapemesh/": "core", "functions/": "functions", "runtimes/": "runtimes", "node-shim/": "node-shim"}


def _imports(path: Path) -> list[tuple[int, str]]:
    """Every module `path` imports (absolute names), with its line."""
    out = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            out += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out += [(node.lineno, node.module)] + [(node.lineno, f"{node.module}.{a.name}") for a in node.names]
    return out


def _unit(relative: str) -> str | None:
    """The function a file under functions/ belongs to: `monitor`, `policies/cpu_frequency`, `accel` (the shared
    module and every accelerated function: they share it by design)."""
    parts = relative.split("/")
    if parts[0] != "functions" or len(parts) < 3:
        return None
    if parts[1] == "policies" and len(parts) >= 4:
        return f"policies/{parts[2]}"
    return parts[1]


def _target_unit(module: str) -> str | None:
    parts = module.split(".")
    if parts[:2] != ["mapemesh", "functions"] or len(parts) < 3:
        return None
    if parts[2] == "policies" and len(parts) >= 4:
        return f"policies/{parts[3]}"
    return parts[2]


def violations(root: Path) -> list[str]:
    """Every import in the tree at `root` that breaks a rule of the table above."""
    found = []
    for path in sorted(root.rglob("*.py")):
        relative = path.relative_to(root).as_posix()
        if any(part in (".venv", "__pycache__", "tests", "bench", "build") for part in path.relative_to(root).parts):
            continue
        wing = next((w for prefix, w in WINGS.items() if relative.startswith(prefix)), None)
        if wing is None:
            continue
        seen: set[int] = set()
        for line, module in _imports(path):
            if line in seen:
                continue  # one finding per import statement
            where = f"{relative}:{line} imports {module}"
            before = len(found)
            if wing == "core" and not relative.startswith("mapemesh/cli/") and module.startswith(
                    ("mapemesh.functions", "mapemesh.runtimes")):
                found.append(f"{where}: the core imports no function and no runtime")
            elif wing == "functions":
                mine, theirs = _unit(relative), _target_unit(module)
                if theirs is not None and mine is not None and theirs != mine:
                    found.append(f"{where}: a function imports no other function")
            elif wing in ("runtimes", "node-shim") and module.startswith("mapemesh.functions"):
                found.append(f"{where}: an adapter imports no function")
            if len(found) > before:
                seen.add(line)
    return sorted(found)


def test_the_layers_are_one_way():
    assert violations(REPO) == []


def test_a_planted_violation_is_caught(tmp_path):
    for relative, text in {
        "mapemesh/serving/leak.py": "def f():\n    from mapemesh.functions.schedule import sweep\n",
        "functions/monitor/__init__.py": "from mapemesh.functions.execute import DEPLOY_MECHANISMS\n",
        "functions/accel/digits/__init__.py": "from mapemesh.functions.accel import invocation\n",  # allowed
        "functions/policies/a/policy.py": "import mapemesh.functions.policies.b.policy\n",
        "node-shim/x.py": "from mapemesh.functions import analyze\n",
        "mapemesh/cli/ok.py": "from mapemesh.runtimes import build\n",  # the CLI wires the wings: allowed
    }.items():
        (tmp_path / relative).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / relative).write_text(text)
    found = violations(tmp_path)
    assert [f.split(" imports ")[0] for f in found] == [
        "functions/monitor/__init__.py:1", "functions/policies/a/policy.py:1", "mapemesh/serving/leak.py:2",
        "node-shim/x.py:1"]


def test_every_package_is_in_the_wheel():
    """pyproject.toml lists the packages one by one (the wing folders are mapped into the namespace): a package
    missing there works in the editable checkout and is absent from the image's installed copy."""
    import tomllib

    doc = tomllib.loads((REPO / "pyproject.toml").read_text())
    setuptools = doc["tool"]["setuptools"]
    found = set()
    for package, folder in setuptools["package-dir"].items():
        root = REPO / folder
        for init in root.rglob("__init__.py"):
            if "__pycache__" in init.parts:
                continue
            relative = init.parent.relative_to(root).parts
            found.add(".".join((package, *relative)))
    assert sorted(found - set(setuptools["packages"])) == []
