"""Knative Eventing's feature flags (`config-features` in `knative-eventing`), read from the manifests.

A cluster's webhook checks Brokers and Triggers against these flags; the embedded broker reads the same
ConfigMap from the manifests it runs (the bundle ships one) and applies the same rules, Knative's stock values
where a flag is not set (knative/eventing `pkg/apis/feature/features.go`, `newDefaults`).

| flag                  | stock    | what it gates here                                                 |
|-----------------------|----------|--------------------------------------------------------------------|
| `delivery-retryafter` | disabled | `retryAfterMax` in a delivery spec (else: "must not set the field")|
| `delivery-timeout`    | enabled  | `timeout` in a delivery spec                                       |
| `new-trigger-filters` | enabled  | a Trigger's `filters`                                              |
| `authentication-oidc` | disabled | the broker ingress asks every request for an OIDC token and checks |
|                       |          | it against the EventPolicies (`mapemesh.eventing.authz`)           |

`default-authorization-mode` (not a flag: `allow-all`, `allow-same-namespace`, stock, or `deny-all`) decides for a
broker no EventPolicy applies to, when `authentication-oidc` is on.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

NAMESPACE = "knative-eventing"
STOCK = {"delivery-retryafter": "disabled", "delivery-timeout": "enabled", "new-trigger-filters": "enabled",
         "authentication-oidc": "disabled"}
VALUES = ("enabled", "disabled", "allowed")
AUTHORIZATION_MODE = "default-authorization-mode"
MODES = ("allow-all", "allow-same-namespace", "deny-all")
STOCK_MODE = "allow-same-namespace"


@dataclass(frozen=True, slots=True)
class EventingFeatures:
    """The flags in force; `errors` lists values Knative would not parse (those flags keep their stock value)."""

    flags: Mapping[str, str] = field(default_factory=dict)
    errors: tuple[str, ...] = ()
    authorization_mode: str = STOCK_MODE
    """`default-authorization-mode`: for a broker no EventPolicy applies to, with `authentication-oidc` on."""

    def enabled(self, flag: str) -> bool:
        """Whether `flag` admits what it gates ("enabled" or "allowed")."""
        return self.flags.get(flag, STOCK.get(flag, "disabled")) in ("enabled", "allowed")

    @classmethod
    def from_objects(cls, objects: Iterable[Mapping[str, Any]]) -> EventingFeatures:
        """The flags of the `config-features` ConfigMap of `knative-eventing` among `objects` (kubectl apply merges
        its keys into the stock ones)."""
        flags: dict[str, str] = {}
        errors: list[str] = []
        mode = STOCK_MODE
        for obj in objects:
            meta = obj.get("metadata") or {}
            if obj.get("kind") != "ConfigMap" or meta.get("name") != "config-features" \
                    or meta.get("namespace") != NAMESPACE:
                continue
            for key, value in (obj.get("data") or {}).items():
                text = str(value).strip().lower()
                if key == AUTHORIZATION_MODE:
                    if text in MODES:
                        mode = text
                    else:
                        errors.append(f"cannot parse '{AUTHORIZATION_MODE}' = '{value}' (one of {', '.join(MODES)})")
                elif text in VALUES:
                    flags[str(key)] = text
                elif key in STOCK:  # a flag mapemesh reads, with a value Knative would not parse
                    errors.append(f"cannot parse the feature flag '{key}' = '{value}'")
                # other keys (default-authorization-mode: allow-same-namespace, _example, ...) are not flags
        return cls(flags, tuple(errors), mode)
