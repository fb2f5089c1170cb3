"""Reputation credit (seed 7.1): trust indices with weights, combined into one credit per node or cluster.

Each index is a Beta reputation (Josang and Ismail, "The Beta Reputation System", 2002) over windows: the
observations of one window (`window_s`) are folded into one unit of evidence (the window's share of good
observations), so a burst of a hundred failures in a second counts as one bad window, not a hundred. Evidence
decays with a half-life (`half_life_s`), so behaviour that changes (a node repaired, or newly failing) is followed
and an old record does not shield a node forever (the seed's drift, 7.1.2.1). An index's value is the Beta
expectation with the configured prior:

    value = (good + prior * strength) / (good + bad + strength)        in [0, 1]
    credit = sum(weight_i * value_i) / sum(weight_i)                    in [0, 1]

| call                                  | does                                                                   |
|---------------------------------------|------------------------------------------------------------------------|
| `TrustConfig.load(path)` / `parse`    | indices, weights and the update rule from YAML (`TrustConfigError`)    |
| `observe(config, doc, index, good, t)`| the asset's trust document with one observation (good in [0, 1]) added |
| `values(config, doc, t)`              | every index's value at time t (the open window counted as one unit)    |
| `credit(config, doc, t)`              | the weighted credit at time t                                          |

The document (kind `trust`, key = the asset) is plain JSON: `{"indices": {name: {"good", "bad", "t",
"window": [start, good, count]}}, "credit", "reported", ...}`; the trust function keeps it, policies read it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml


class TrustConfigError(ValueError):
    """A trust configuration that cannot be used."""


@dataclass(frozen=True)
class Index:
    name: str
    weight: float
    prior: float = 0.5
    description: str = ""


@dataclass(frozen=True)
class TrustConfig:
    indices: dict[str, Index]
    window_s: float = 5.0
    half_life_s: float = 600.0
    strength: float = 2.0
    """How many windows of evidence the prior is worth."""
    report_delta: float = 0.02
    """A `trust.updated` event when the credit moved this much since the last one."""
    telemetry_interval_s: float = 5.0
    """The reporting interval telemetry freshness is judged against."""
    isolate_below: float | None = None
    """A node whose credit falls under this is isolated (`node.isolated`, seed 5.3); None: never."""

    @classmethod
    def parse(cls, doc: Any) -> TrustConfig:
        if not isinstance(doc, dict) or not isinstance(doc.get("indices"), dict) or not doc["indices"]:
            raise TrustConfigError("indices: a mapping of at least one index (name: {weight, prior, description})")
        indices = {}
        for name, raw in doc["indices"].items():
            raw = raw if isinstance(raw, dict) else {"weight": raw}
            unknown = set(raw) - {"weight", "prior", "description"}
            if unknown:
                raise TrustConfigError(f"indices.{name}: unknown field(s) {', '.join(sorted(unknown))}")
            weight, prior = _number(raw.get("weight", 1.0), f"indices.{name}.weight"), \
                _number(raw.get("prior", 0.5), f"indices.{name}.prior")
            if weight < 0 or not 0 <= prior <= 1:
                raise TrustConfigError(f"indices.{name}: weight >= 0 and prior in [0, 1], got {weight}, {prior}")
            indices[str(name)] = Index(str(name), weight, prior, str(raw.get("description") or ""))
        if not any(i.weight > 0 for i in indices.values()):
            raise TrustConfigError("indices: at least one index needs a weight above 0")
        rule = doc.get("update") or {}
        unknown = (set(rule) - {"window_s", "half_life_s", "strength", "report_delta", "telemetry_interval_s",
                                "isolate_below"}) | (
            set(doc) - {"indices", "update"})
        if unknown:
            raise TrustConfigError(f"unknown field(s) {', '.join(sorted(unknown))}")
        values = {k: _number(v, f"update.{k}") for k, v in rule.items() if not (k == "isolate_below" and v is None)}
        if any(v <= 0 for k, v in values.items() if k not in ("report_delta", "isolate_below")) \
                or values.get("report_delta", 0.02) < 0 or not 0 <= values.get("isolate_below", 0) <= 1:
            raise TrustConfigError(f"update: every value above 0 (report_delta >= 0, isolate_below in [0, 1]), "
                                   f"got {values}")
        return cls(indices, **values)

    @classmethod
    def load(cls, path: Path) -> TrustConfig:
        try:
            return cls.parse(yaml.safe_load(Path(path).read_text()))
        except OSError as exc:
            raise TrustConfigError(f"{path}: {exc}") from None
        except (yaml.YAMLError, TrustConfigError) as exc:
            raise TrustConfigError(f"{path}: {exc}") from None


def _number(value: Any, where: str) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise TrustConfigError(f"{where}: a number, got {value!r}") from None
    if not math.isfinite(number):
        raise TrustConfigError(f"{where}: a finite number, got {value!r}")
    return number


def _decayed(config: TrustConfig, entry: dict[str, Any], now: float) -> tuple[float, float]:
    factor = 0.5 ** (max(0.0, now - float(entry.get("t", now))) / config.half_life_s)
    return float(entry.get("good", 0.0)) * factor, float(entry.get("bad", 0.0)) * factor


def observe(config: TrustConfig, doc: dict[str, Any] | None, index: str, good: float, now: float) -> dict[str, Any]:
    """`doc` with one observation of `index` (1 good, 0 bad, or between) at `now`; a new document for None."""
    if index not in config.indices:
        raise KeyError(f"no trust index {index} (the configuration has {', '.join(config.indices)})")
    good = min(1.0, max(0.0, float(good)))
    doc = dict(doc or {})
    indices = dict(doc.get("indices") or {})
    entry = dict(indices.get(index) or {"good": 0.0, "bad": 0.0, "t": now})
    start, window_good, count = entry.get("window") or (now, 0.0, 0)
    if now - float(start) >= config.window_s and count:
        g, b = _decayed(config, entry, now)  # the window closes: its share of good is one unit of evidence
        share = float(window_good) / int(count)
        entry.update(good=g + share, bad=b + 1.0 - share, t=now)
        start, window_good, count = now, 0.0, 0
    entry["window"] = [float(start), float(window_good) + good, int(count) + 1]
    indices[index] = entry
    doc["indices"] = indices
    return doc


def values(config: TrustConfig, doc: dict[str, Any] | None, now: float) -> dict[str, float]:
    """Each configured index's value at `now` (the prior for one never observed)."""
    found = (doc or {}).get("indices") or {}
    out = {}
    for name, index in config.indices.items():
        entry = found.get(name)
        good = bad = 0.0
        if entry:
            good, bad = _decayed(config, entry, now)
            start, window_good, count = entry.get("window") or (now, 0.0, 0)
            if count:  # the open window: one unit, fading from its start like the rest
                weight = 0.5 ** (max(0.0, now - float(start)) / config.half_life_s)
                share = float(window_good) / int(count)
                good, bad = good + weight * share, bad + weight * (1.0 - share)
        out[name] = (good + index.prior * config.strength) / (good + bad + config.strength)
    return out


def credit(config: TrustConfig, doc: dict[str, Any] | None, now: float) -> float:
    """The weighted reputation credit at `now`, in [0, 1]."""
    by_index = values(config, doc, now)
    total = sum(i.weight for i in config.indices.values())
    return sum(config.indices[name].weight * value for name, value in by_index.items()) / total
