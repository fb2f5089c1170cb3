"""Brokers declared by Knative `Broker` manifests (`eventing.knative.dev/v1`)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mapemesh import kustomize, manifests
from mapemesh.eventing.deliveryspec import DeliverySpec, InvalidDelivery
from mapemesh.eventing.features import EventingFeatures

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class BrokerSpec:
    """One broker: its namespace and name (its ingress path is `/{namespace}/{name}`) and its spec."""

    namespace: str
    name: str
    delivery: dict[str, Any]
    origin: str

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"


def brokers_from(found: manifests.ManifestSet) -> tuple[dict[str, BrokerSpec], list[str]]:
    """The brokers among the manifests, keyed "namespace/name", and the reasons others were rejected."""
    brokers: dict[str, BrokerSpec] = {}
    features = EventingFeatures.from_objects(m.body for m in found.objects)
    errors: list[str] = [f"config-features (knative-eventing): {e}" for e in features.errors]
    for m in found.of(manifests.EVENTING_V1, "Broker"):
        spec = m.body.get("spec") or {}
        if not isinstance(spec, dict):
            errors.append(f"{m.origin}: Broker {m.key}: spec must be a mapping")
            continue
        delivery = spec.get("delivery") or {}
        if not isinstance(delivery, dict):
            errors.append(f"{m.origin}: Broker {m.key}: spec.delivery must be a mapping")
            continue
        try:
            DeliverySpec.parse(delivery, "spec.delivery", features)
        except InvalidDelivery as exc:  # Knative's webhook refuses such a Broker: it is not served
            errors.append(f"{m.origin}: Broker {m.key}: {exc}")
            continue
        if m.key in brokers:
            errors.append(f"{m.origin}: Broker {m.key} is declared twice (first in {brokers[m.key].origin})")
            continue
        brokers[m.key] = BrokerSpec(m.namespace, m.name, delivery, m.origin)
    return brokers, errors


class BrokerRegistry:
    """The brokers currently declared in a manifests directory, reloaded when its files change.

    `extra` directories (such as DATA_DIR/manifests, where `mapemesh policy deploy` writes) are read too,
    when they exist; the objects of all of them form one set.
    """

    def __init__(self, root: Path, extra: Sequence[Path] = ()):
        self.root = Path(root)
        self.extra = tuple(Path(p) for p in extra)
        self.brokers: dict[str, BrokerSpec] = {}
        self.errors: list[str] = []
        self.found = manifests.ManifestSet()
        self._last_good: dict[Path, dict[str, list[manifests.Manifest]]] = {}
        """Everything the last reload read (other objects, such as Triggers, are taken from here)."""
        self._fingerprint: tuple[tuple[str, int, int], ...] | None = None
        self._inputs: dict[Path, list[Path]] = {}
        """The files each directory's last load read, watched for changes (a new file in a plain directory too)."""
        self._listeners: list[Callable[[BrokerRegistry], None]] = []
        self.reload()

    def _summary(self) -> tuple[tuple[str, int, int], ...]:
        out: tuple[tuple[str, int, int], ...] = ()
        for path in (self.root, *self.extra):
            read = self._inputs.get(path)
            # A plain directory is walked (a file added to it counts); a kustomization's inputs are stat'ed.
            plain = read is None or not path.is_dir() or kustomize.kustomization_file(path) is None
            out += manifests.fingerprint(path, None if plain else read)
        return out

    def get(self, namespace: str, name: str) -> BrokerSpec | None:
        """The broker at `/{namespace}/{name}`, or None."""
        return self.brokers.get(f"{namespace}/{name}")

    def on_change(self, listener: Callable[[BrokerRegistry], None]) -> None:
        """Call `listener(registry)` after every reload that changed something."""
        self._listeners.append(listener)

    def reload(self) -> bool:
        """Re-read the manifests if any file changed; return True when the set was reloaded."""
        fp = self._summary()
        if fp == self._fingerprint:
            return False
        found = manifests.load(self.root, self._last_good.setdefault(self.root, {}))
        inputs = {self.root: found.inputs}
        snapshot = found.snapshot()
        for path in self.extra:
            if path.exists():
                more = manifests.load(path, self._last_good.setdefault(path, {}))
                inputs[path] = more.inputs
                snapshot += more.snapshot()
                found.objects += more.objects
                found.errors += more.errors
        self._inputs = inputs
        # The files as they were when they were read: an edit during this load is seen at the next look.
        self._fingerprint = snapshot
        self.found = found
        brokers, errors = brokers_from(found)
        self.errors = found.errors + errors
        for error in self.errors:
            log.error("manifest rejected: %s", error)
        if brokers != self.brokers:
            log.info("brokers: %s", ", ".join(sorted(brokers)) or "none")
        self.brokers = brokers
        for listener in self._listeners:
            try:
                listener(self)
            except Exception:  # one listener's bug must not stop the others or the watcher
                log.exception("applying the manifests from %s failed", self.root)
        return True

    async def watch(self, interval: float = 1.0) -> None:
        """Poll the manifests directory for changes until cancelled."""
        while True:
            await asyncio.sleep(interval)
            try:
                self.reload()  # a stat per file: cheap enough for the loop, and listeners run there
            except Exception:
                log.exception("reloading manifests from %s failed", self.root)
