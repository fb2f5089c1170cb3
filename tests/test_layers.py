"""The layers are one-way, checked on the source (every import, at any depth of the file):

| rule                                                                                   | why                     |
|----------------------------------------------------------------------------------------|-------------------------|
| the core (`mapemesh/`, except `mapemesh/cli/`) imports neither `mapemesh.functions`     | the core serves every   |
| nor `mapemesh.runtimes`                                                                | wing, knows none        |
| a function (`functions/X`) imports no other function (`functions/Y`); `accel/<name>`    | each stage is its own   |
| may use `accel`'s shared module, a policy no other policy                               | Service                 |
| the node shim and the runtimes import no function                                       | adapters share the core |
| no code but `mapemesh/settings.py` reads a `MAPEMESH_*` or Knative `K_*` variable, nor  | one settings object per |
| a variable whose name it cannot tell (saving env it restores, in `serving/zygote.py`)   | process (`current()`)   |

A planted violation makes each checker fail, so no rule can pass by checking nothing.
"""

from __future__ import annotations

import ast
import functools
from pathlib import Path

from .conftest import REPO

WINGS = {"mapemesh/": "core", "functions/": "functions", "runtimes/": "runtimes", "node-shim/": "node-shim"}


def _sources(root: Path) -> list[tuple[Path, str]]:
    """The Python files of the wings under `root` (not the whole tree: `.venv` alone has thousands), with their
    paths relative to it."""
    found = [path for prefix in WINGS for path in (root / prefix).rglob("*.py")
             if not {"__pycache__", "tests", "build"} & set(path.relative_to(root).parts)]
    return [(path, path.relative_to(root).as_posix()) for path in sorted(found)]


@functools.cache
def _parsed(path: Path) -> ast.Module:
    """A source file's AST, parsed once for both rules (the files are not changed while the tests run)."""
    return ast.parse(path.read_text(encoding="utf-8"), filename=str(path))


def _imports(path: Path) -> list[tuple[int, str]]:
    """Every module `path` imports (absolute names), with its line."""
    out = []
    for node in ast.walk(_parsed(path)):
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
    for path, relative in _sources(root):
        wing = next(w for prefix, w in WINGS.items() if relative.startswith(prefix))
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


ENV_OWNED = ("MAPEMESH_", "K_")
"""The namespaces `mapemesh.settings` reads; others belong to the software that reads them (OTEL_*, VACCEL_*, ...)."""
ENV_UNNAMED_READS = {"mapemesh/serving/zygote.py": 1}
"""Reads of variables named at run time, allowed: the fork server saves the env it sets for an import, to restore it."""


def _constants(tree: ast.Module) -> dict[str, str]:
    return {t.id: node.value.value for node in tree.body if isinstance(node, ast.Assign)
            and isinstance(node.value, ast.Constant) and isinstance(node.value.value, str)
            for t in node.targets if isinstance(t, ast.Name)}


def _env_reads(tree: ast.Module) -> list[tuple[int, str | None]]:
    """Every read of one environment variable: (line, its name, None when the code names it at run time)."""
    names = _constants(tree)
    bare = any(isinstance(n, ast.ImportFrom) and n.module == "os" and any(a.name == "environ" for a in n.names)
               for n in ast.walk(tree))  # `from os import environ` (a parameter named environ is a mapping given)

    def _is_environ(node: ast.AST) -> bool:
        return ((isinstance(node, ast.Attribute) and node.attr == "environ")
                or (bare and isinstance(node, ast.Name) and node.id == "environ"))

    def key(node: ast.AST) -> str | None:
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            return node.value
        return names.get(node.id) if isinstance(node, ast.Name) else None

    out = []
    for node in ast.walk(tree):
        func = node.func if isinstance(node, ast.Call) and node.args else None
        if isinstance(func, ast.Attribute) and ((func.attr == "get" and _is_environ(func.value)) or (
                func.attr == "getenv" and isinstance(func.value, ast.Name) and func.value.id == "os")):
            out.append((node.lineno, key(node.args[0])))
        elif isinstance(node, ast.Subscript) and isinstance(node.ctx, ast.Load) and _is_environ(node.value):
            out.append((node.lineno, key(node.slice)))
    return out


def env_violations(root: Path) -> list[str]:
    """Every environment read in the tree at `root` that only `mapemesh/settings.py` may make."""
    found = []
    for path, relative in _sources(root):
        if relative == "mapemesh/settings.py":
            continue
        reads = _env_reads(_parsed(path))
        unnamed = [line for line, name in reads if name is None]
        if len(unnamed) > ENV_UNNAMED_READS.get(relative, 0):
            found += [f"{relative}:{line} reads a variable it names at run time" for line in unnamed]
        found += [f"{relative}:{line} reads {name}: read it from mapemesh.settings.current()"
                  for line, name in reads if name is not None and name.startswith(ENV_OWNED)]
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


def test_only_settings_reads_mapemesh_variables():
    assert env_violations(REPO) == []


def test_a_planted_environment_read_is_caught(tmp_path):
    for relative, text in {
        "mapemesh/a.py": "import os\nDATA = os.environ.get('MAPEMESH_DATA', '.mapemesh')\n",
        "functions/b/__init__.py": "import os\nNAME = 'K_SINK'\n\ndef f():\n    return os.environ[NAME]\n",
        "runtimes/c.py": "import os\nx = os.getenv('MAPEMESH_VACCEL')\n",
        "node-shim/d.py": "from os import environ\n\ndef f(k):\n    return environ.get(k)\n",
        "mapemesh/e.py": "import os\nx = os.environ.get('OTEL_SDK_DISABLED')\nos.environ['MAPEMESH_X'] = '1'\n",  # ok
        "mapemesh/settings.py": "import os\nx = os.environ.get('MAPEMESH_DATA')\n",  # allowed
    }.items():
        (tmp_path / relative).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / relative).write_text(text)
    assert [f.split(" reads ")[0] for f in env_violations(tmp_path)] == [
        "functions/b/__init__.py:5", "mapemesh/a.py:2", "node-shim/d.py:4", "runtimes/c.py:2"]


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
