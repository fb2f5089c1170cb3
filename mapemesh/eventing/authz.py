"""Who may post to a broker: Knative Eventing's OIDC authentication and EventPolicy authorization, at the ingress.

With `authentication-oidc` enabled in `config-features` (knative-eventing; `mapemesh.eventing.features`), Knative's
broker ingress verifies each request before taking its event (knative/eventing `pkg/auth/verifier.go`,
`VerifyRequest`), and so does the embedded broker, from the same manifests:

| the request                                                  | answer                                         |
|--------------------------------------------------------------|------------------------------------------------|
| no `Authorization: Bearer` token                             | 401 (`verifyAuthN`: "no JWT token found")      |
| a token that does not verify for the broker's audience       | 401 (`eventing.knative.dev/broker/NS/NAME`)    |
| EventPolicies apply to the broker, and none has the token's  | 403 (`verifyAuthZ`; subjects matched as        |
| subject in its `from` with the event passing its `filters`   | `SubjectContained`: exact, or a `*` suffix)    |
| no EventPolicy applies: `default-authorization-mode`         | `allow-all`: taken; `allow-same-namespace`     |
|                                                              | (stock): the subject's namespace must be the   |
|                                                              | broker's, else 403; `deny-all`: 403            |

An EventPolicy (`eventing.knative.dev/v1alpha1`) applies to a broker when its `spec.to` is empty (every resource of
its namespace), names the Broker (`ref`), or selects it by labels (`selector`; `pkg/auth/event_policy.go`,
`GetEventPoliciesForResource`). Its `spec.from` lists subjects (`sub`); a `from.ref` names a Kubernetes object whose
OIDC service account Knative resolves, which one machine has none of: such a policy is not ready, and is left out as
Knative leaves out a policy that is not ready (the reason is logged). While
`authentication-oidc` is off, Knative's webhook refuses every EventPolicy ("oidc-authentication feature not
enabled", `eventpolicy_validation.go`), and so does `policies_from`. Tokens are verified
against the mesh's identity authority (`mapemesh.identity.tokens`). Without `authentication-oidc` every request is
taken, as in Knative.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mapemesh import manifests
from mapemesh.eventing.cloudevent import CloudEvent
from mapemesh.eventing.features import EventingFeatures
from mapemesh.eventing.filters import Filter, InvalidFilter, compile_trigger_filter
from mapemesh.identity.pki import IdentityError, TrustStore
from mapemesh.identity.tokens import BROKER_AUDIENCE, SKEW_S, TokenError, verify

log = logging.getLogger(__name__)
POLICY_API = "eventing.knative.dev/v1alpha1"
SA_PREFIX = "system:serviceaccount"
VERIFIED_MAX = 4096


@dataclass(frozen=True, slots=True)
class EventPolicy:
    """One EventPolicy: the brokers it applies to, the subjects it lets in, and the filter their events pass."""

    namespace: str
    name: str
    to: tuple[dict[str, Any], ...]
    subjects: tuple[str, ...]
    filter: Filter

    def applies(self, namespace: str, name: str, labels: Mapping[str, str]) -> bool:
        if namespace != self.namespace:
            return False
        if not self.to:
            return True
        for target in self.to:
            ref, selector = target.get("ref"), target.get("selector")
            if isinstance(ref, dict) and _broker_kind(ref) and str(ref.get("name", "")).lower() == name.lower():
                return True
            if isinstance(selector, dict) and _broker_kind(selector) and _selects(selector, labels):
                return True
        return False

    def admits(self, subject: str, event: CloudEvent) -> bool:
        return subject_contained(subject, self.subjects) and self.filter.matches(event.attributes)


def _broker_kind(target: Mapping[str, Any]) -> bool:
    group = str(target.get("apiVersion", "")).split("/")[0].lower()
    return group == "eventing.knative.dev" and str(target.get("kind", "")).lower() == "broker"


def _selects(selector: Mapping[str, Any], labels: Mapping[str, str]) -> bool:
    """A LabelSelector (`matchLabels`, `matchExpressions` In/NotIn/Exists/DoesNotExist) against `labels`."""
    if any(labels.get(k) != str(v) for k, v in (selector.get("matchLabels") or {}).items()):
        return False
    for expr in selector.get("matchExpressions") or []:
        key, op, values = expr.get("key"), expr.get("operator"), [str(v) for v in expr.get("values") or []]
        found = key in labels
        if (op == "In" and (not found or labels[key] not in values)) or (op == "NotIn" and found and labels[key] in
                                                                          values) \
                or (op == "Exists" and not found) or (op == "DoesNotExist" and found):
            return False
    return True


def subject_contained(subject: str, allowed: Iterable[str]) -> bool:
    """Knative's `SubjectContained`: equal (case-insensitive), or a prefix pattern ending in `*`."""
    return any(s.lower() == subject.lower() or (s.endswith("*") and subject.startswith(s[:-1])) for s in allowed)


def policies_from(found: manifests.ManifestSet) -> tuple[list[EventPolicy], list[str]]:
    """The ready EventPolicies among the manifests, and why the others are not (a malformed one is not ready; it
    never takes the ingress down)."""
    out: list[EventPolicy] = []
    errors: list[str] = []
    oidc = EventingFeatures.from_objects(m.body for m in found.objects).enabled("authentication-oidc")
    for m in found.of(POLICY_API, "EventPolicy"):
        if not oidc:  # Knative's webhook: eventpolicy_validation.go, EventPolicy.Validate
            errors.append(f"{m.origin}: EventPolicy {m.key}: oidc-authentication feature not enabled")
            continue
        try:
            out.append(_policy(m))
        except _NotReady as exc:
            errors.append(f"{m.origin}: EventPolicy {m.key}: {exc}")
    return out, errors


class _NotReady(ValueError):
    pass


def _policy(m: manifests.Manifest) -> EventPolicy:
    spec = m.body.get("spec") or {}
    if not isinstance(spec, dict):
        raise _NotReady("spec must be a mapping")
    subjects: list[str] = []
    for i, entry in enumerate(_list(spec.get("from"), "spec.from")):
        if not isinstance(entry, dict) or ("ref" in entry) == ("sub" in entry):
            raise _NotReady(f"spec.from[{i}]: expected exactly one of ref, sub")
        if "ref" in entry:
            ref = entry["ref"] if isinstance(entry["ref"], dict) else {}
            raise _NotReady(f"spec.from[{i}].ref: {ref.get('kind')} {ref.get('name')}'s OIDC service account cannot "
                            "be resolved without Kubernetes (use sub); the policy is not ready")
        sub = entry["sub"]
        if not isinstance(sub, str) or not sub or "*" in sub[:-1]:
            raise _NotReady(f"spec.from[{i}].sub: a subject, '*' only allowed at the end")
        subjects.append(sub)
    to = _list(spec.get("to"), "spec.to")
    for i, target in enumerate(to):
        ref, selector = (target.get("ref"), target.get("selector")) if isinstance(target, dict) else (None, None)
        if (ref is None) == (selector is None) or not isinstance(ref or selector, dict):
            raise _NotReady(f"spec.to[{i}]: expected exactly one of ref, selector (a mapping)")
        if selector is not None and (not isinstance(selector.get("matchLabels") or {}, dict) or not all(
                isinstance(e, dict) and e.get("operator") in ("In", "NotIn", "Exists", "DoesNotExist")
                for e in _list(selector.get("matchExpressions"), f"spec.to[{i}].selector.matchExpressions"))):
            raise _NotReady(f"spec.to[{i}].selector: matchLabels a mapping, matchExpressions with operators In, "
                            "NotIn, Exists, DoesNotExist")
    try:
        flt = compile_trigger_filter(None, spec.get("filters"))
    except InvalidFilter as exc:
        raise _NotReady(f"spec.filters: {exc}") from None
    return EventPolicy(m.namespace, m.name, tuple(to), tuple(subjects), flt)


def _list(value: object, where: str) -> list[Any]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise _NotReady(f"{where} must be a list")
    return value


class Authorizer:
    """The ingress's check of a request, from the manifests (`refresh` after they change)."""

    def __init__(self, identity_dir: Path):
        self.identity_dir = identity_dir
        self.features = EventingFeatures()
        self.policies: list[EventPolicy] = []
        self.errors: list[str] = []
        self.labels: dict[str, dict[str, str]] = {}
        self._trust: TrustStore | None = None
        self._verified: dict[tuple[str, str], tuple[str, float]] = {}
        """Tokens verified, (token, audience) -> (subject, expiry): a sender reuses its token for an hour."""
        self.refused = 0

    @property
    def on(self) -> bool:
        return self.features.enabled("authentication-oidc")

    def refresh(self, found: manifests.ManifestSet) -> None:
        """Everything from the manifests, built first and then put in place at once."""
        features = EventingFeatures.from_objects(m.body for m in found.objects)
        policies, errors = policies_from(found)
        labels = {m.key: {str(k): str(v) for k, v in ((m.body.get("metadata") or {}).get("labels") or {}).items()}
                  for m in found.of(manifests.EVENTING_V1, "Broker")}
        self.features, self.policies, self.errors, self.labels = features, policies, errors, labels
        self._trust, self._verified = None, {}  # certificates may have been issued or replaced meanwhile
        for error in self.errors:
            log.error("%s", error)

    def _trust_store(self) -> TrustStore:
        if self._trust is None:
            self._trust = TrustStore(self.identity_dir)
        return self._trust

    def authenticate(self, broker: str, headers: Mapping[str, str]) -> tuple[int, str] | str:
        """The token's subject, or (401, why)."""
        value = headers.get("Authorization", "")
        if not value.lower().startswith("bearer ") or not value[7:].strip():
            return 401, "no JWT token found in request"
        namespace, _, name = broker.partition("/")
        audience = BROKER_AUDIENCE.format(namespace=namespace, name=name).lower()
        token = value[7:].strip()
        known = self._verified.get((token, audience))
        if known is not None and known[1] + SKEW_S >= time.time():  # the same bytes verified before, unexpired
            return known[0]
        try:
            claims = verify(token, audience, self._trust_store())
        except (TokenError, IdentityError) as exc:
            return 401, f"failed to verify JWT: {exc}"
        if len(self._verified) >= VERIFIED_MAX:
            self._verified.clear()
        self._verified[(token, audience)] = (str(claims["sub"]), float(claims["exp"]))
        return str(claims["sub"])

    def authorize(self, broker: str, subject: str, events: Iterable[CloudEvent]) -> tuple[int, str] | None:
        """None when `subject` may post `events` to `broker`, else (403, why)."""
        namespace, _, name = broker.partition("/")
        applying = [p for p in self.policies if p.applies(namespace, name, self.labels.get(broker, {}))]
        for event in events:
            if applying:
                if not any(p.admits(subject, event) for p in applying):
                    names = ", ".join(p.name for p in applying)
                    return 403, (f"token is from subject {subject!r}, which no applying event policy ({names}) "
                                 f"admits for {event.type}")
            elif self.features.authorization_mode == "deny-all":
                return 403, "no event policies apply to the broker and default-authorization-mode is deny-all"
            elif self.features.authorization_mode == "allow-same-namespace" and \
                    not subject.startswith(f"{SA_PREFIX}:{namespace}:"):
                return 403, (f"no policies apply to the broker; default-authorization-mode is allow-same-namespace "
                             f"and {subject!r} is not of namespace {namespace!r}")
        return None
