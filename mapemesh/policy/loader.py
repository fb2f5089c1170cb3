"""Loading a policy file and calling it with the arguments it names."""

from __future__ import annotations

import asyncio
import copy
import hashlib
import importlib.util
import inspect
import sys
import traceback
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from mapemesh.durations import InvalidDuration, parse_go

INPUTS = ("context", "application_description", "system_description", "current_plan", "mechanisms", "telemetry",
          "ml_connector", "available_assets")
"""Every argument a policy method may name; each method receives the ones it declares."""

Scope = Literal["global", "application"]


class PolicyError(ValueError):
    """A policy file that cannot be used (missing method, unknown argument, bad initialize context)."""


@dataclass(frozen=True, slots=True)
class PolicyFailure:
    """A policy call that raised or answered in a malformed way."""

    method: str
    error: str
    traceback: str


@dataclass(frozen=True, slots=True)
class Declaration:
    """What `initialize` declared: the telemetry, mechanisms and configuration the policy needs."""

    metrics: tuple[str, ...]
    mechanisms: tuple[str, ...]
    analyze_interval_s: float
    scope: Scope
    machine_learning: bool
    core: bool
    """A core policy's plans are scheduled before the others' (MLSysOps `core`)."""
    packages: tuple[str, ...]
    context: dict[str, Any] = field(compare=False)

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready copy, as the policy registry keeps it."""
        return {"metrics": list(self.metrics), "mechanisms": list(self.mechanisms),
                "analyze_interval_s": self.analyze_interval_s, "scope": self.scope,
                "machine_learning": self.machine_learning, "core": self.core, "packages": list(self.packages),
                "context": self.context}

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any]) -> Declaration:
        """The declaration `as_dict` wrote."""
        return cls(tuple(doc.get("metrics") or ()), tuple(doc.get("mechanisms") or ()),
                   float(doc.get("analyze_interval_s") or 0.0), doc.get("scope") or "global",
                   bool(doc.get("machine_learning")), bool(doc.get("core")), tuple(doc.get("packages") or ()),
                   dict(doc.get("context") or {}))


def _parse_declaration(name: str, context: object) -> Declaration:
    if not isinstance(context, dict):
        raise PolicyError(f"{name}: initialize must return the context dict, not {type(context).__name__}")
    telemetry = context.get("telemetry") or {}
    metrics = telemetry.get("metrics") or [] if isinstance(telemetry, dict) else []
    mechanisms = context.get("mechanisms") or []
    if not isinstance(metrics, list) or not all(isinstance(m, str) for m in metrics):
        raise PolicyError(f"{name}: context telemetry.metrics must be a list of metric names")
    if not isinstance(mechanisms, list) or not all(isinstance(m, str) for m in mechanisms):
        raise PolicyError(f"{name}: context mechanisms must be a list of mechanism names")
    configuration = context.get("configuration") or {}
    interval = configuration.get("analyze_interval", "0s") if isinstance(configuration, dict) else "0s"
    try:
        interval_s = float(interval) if isinstance(interval, int | float) else parse_go(str(interval))
    except InvalidDuration:
        raise PolicyError(f"{name}: configuration.analyze_interval {interval!r} is not a duration (4s, 1m)") from None
    scope = context.get("scope", "global")
    if scope not in ("global", "application"):
        raise PolicyError(f"{name}: scope must be 'global' or 'application', not {scope!r}")
    packages = context.get("packages") or []
    return Declaration(tuple(metrics), tuple(mechanisms), interval_s, scope,
                       bool(context.get("machine_learning_usage", False)), bool(context.get("core", False)),
                       tuple(map(str, packages)), context)


def _arguments(name: str, method: str, fn: Callable[..., Any]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(positional-only names, the other names) of the inputs a method declares."""
    positional, keyword = [], []
    for p in inspect.signature(fn).parameters.values():
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        if p.name not in INPUTS:
            if p.default is not p.empty:
                continue
            raise PolicyError(f"{name}: {method} takes {p.name!r}, which mapemesh does not provide "
                              f"(it provides {', '.join(INPUTS)})")
        (positional if p.kind == p.POSITIONAL_ONLY else keyword).append(p.name)
    return tuple(positional), tuple(keyword)


class Policy:
    """A loaded policy: its declaration, and `analyze` / `plan` calls that never raise."""

    def __init__(self, name: str, module: Any, source: Path | None = None, timeout_s: float = 30.0):
        self.name = name
        self.source = source
        self.timeout_s = timeout_s
        """How long one call may take; a hung policy fails instead of holding up its caller."""
        for method in ("initialize", "analyze", "plan"):
            if not callable(getattr(module, method, None)):
                raise PolicyError(f"{name}: no {method}() function (a policy defines initialize, analyze, plan)")
        self._module = module
        self._args = {m: _arguments(name, m, getattr(module, m)) for m in ("initialize", "analyze", "plan")}
        self.shape = "documented" if "current_plan" in sum(self._args["analyze"], ()) else "code"
        self.declaration: Declaration | None = None

    async def initialize(self) -> Declaration:
        """Call `initialize` (with an empty context when it takes one) and read its declaration.

        PolicyError when it raises, hangs or declares something unusable.
        """
        try:
            result = await self._call("initialize", {"context": {}})
        except Exception as exc:
            raise PolicyError(f"{self.name}: initialize failed: {type(exc).__name__}: {exc}") from exc
        self.declaration = _parse_declaration(self.name, result)
        return self.declaration

    async def analyze(self, inputs: Mapping[str, Any]) -> tuple[bool, dict[str, Any]] | PolicyFailure:
        """(verdict, new context), or the failure."""
        try:
            answer = await self._call("analyze", inputs)
            verdict, context = _split(answer, inputs.get("context"))
            if not isinstance(verdict, bool):
                raise TypeError(f"analyze must answer (bool, context), got {type(verdict).__name__} as the verdict")
            return verdict, context
        except Exception as exc:
            return _failure("analyze", exc)

    async def plan(self, inputs: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]] | PolicyFailure:
        """(plan: mechanism -> command, new context), or the failure."""
        try:
            answer = await self._call("plan", inputs)
            plan, context = _split(answer, inputs.get("context"))
            if plan is None:
                plan = {}
            if not isinstance(plan, dict) or not all(isinstance(k, str) for k in plan):
                raise TypeError(f"plan must answer (dict of mechanism -> command, context), got "
                                f"{type(plan).__name__}")
            return plan, context
        except Exception as exc:
            return _failure("plan", exc)

    async def _call(self, method: str, inputs: Mapping[str, Any]) -> Any:
        fn = getattr(self._module, method)
        positional, keyword = self._args[method]
        # The policy gets its own copies: one that edits its context and then fails changes nothing.
        args = [copy.deepcopy(inputs.get(name)) for name in positional]
        kwargs = {name: copy.deepcopy(inputs.get(name)) for name in keyword}
        # A sync policy may compute for a while (an ML model, say): it runs off the event loop.
        call = fn(*args, **kwargs) if inspect.iscoroutinefunction(fn) else asyncio.to_thread(fn, *args, **kwargs)
        try:
            return await asyncio.wait_for(call, self.timeout_s)
        except TimeoutError:
            raise TimeoutError(f"{method} did not answer within {self.timeout_s:g}s") from None


def _split(answer: Any, old_context: Any) -> tuple[Any, dict[str, Any]]:
    """MLSysOps methods answer (value, context); a bare value keeps the old context."""
    if isinstance(answer, tuple):
        if len(answer) != 2:
            raise TypeError(f"expected (value, context), got a tuple of {len(answer)}")
        value, context = answer
    else:
        value, context = answer, old_context
    if context is None:
        context = {}
    if not isinstance(context, dict):
        raise TypeError(f"the context must stay a dict, got {type(context).__name__}")
    return value, context


def _failure(method: str, exc: Exception) -> PolicyFailure:
    return PolicyFailure(method, f"{type(exc).__name__}: {exc}", "".join(traceback.format_exception(exc)))


def load_policy(path: Path, name: str | None = None) -> Policy:
    """Import a policy file (MLSysOps format, unmodified) as a Policy named after the file."""
    path = Path(path)
    name = name or path.stem.removeprefix("policy-").removeprefix("policy_")
    if not path.exists():
        raise PolicyError(f"{path}: no such policy file")
    module_name = "mapemesh_policy_" + hashlib.sha1(str(path.resolve()).encode()).hexdigest()[:16]
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise PolicyError(f"{path}: not a Python file")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module  # before running it, as importlib's recipe does
    try:
        spec.loader.exec_module(module)
    except Exception as exc:
        sys.modules.pop(module_name, None)
        raise PolicyError(f"{path}: importing it failed: {type(exc).__name__}: {exc}") from exc
    return Policy(name, module, path)
