"""Commands are checked where they are applied: who may send which command, deny by default, and the audit.

The events that command something (`COMMANDS`: knob.apply, which includes the storage gateway's StoragePolicy
and far-edge radios, deploy.requested, faredge.deploy.requested and node.isolated) are accepted only when signed
(`dsse`) by an identity the command policy allows for that type; any other event passes. The default policy
(`commands.yaml` beside this file; MAPEMESH_COMMAND_POLICY names another):

    io.mapemesh.knob.apply.v1: [execute, operator]
    io.mapemesh.deploy.requested.v1: [execute]
    io.mapemesh.faredge.deploy.requested.v1: [deploy]
    io.mapemesh.node.isolated.v1: [trust, operator]

A refused command changes nothing; the receiver answers it as refused and says so in an
`io.mapemesh.auth.refused.v1` event and a log line naming the sender (the verified signer, else the event's
source) and the rule (`unsigned`, `unverified`, `not-allowed`, `no-trust-anchor`).

| call                                  | does                                                                   |
|---------------------------------------|------------------------------------------------------------------------|
| `Guard.from_environment(data)`        | the guard of this process: on unless MAPEMESH_IDENTITIES is off; the    |
|                                       | trust anchor in MAPEMESH_IDENTITY_DIR (default DATA_DIR/identity)       |
| `guard.check(event)`                  | a `Verdict` (allowed, sender, rule, reason)                            |
| `refusal(receiver, event, verdict)`   | the audit event (and the log line is written)                          |
| `signer()` / `sign_commands(events)`  | this process's identity (MAPEMESH_IDENTITY), and its commands signed    |
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass
from pathlib import Path

import yaml

from mapemesh import events as catalogue
from mapemesh import settings
from mapemesh.eventing.cloudevent import CloudEvent
from mapemesh.identity.dsse import Unverified, sign, verify
from mapemesh.identity.pki import Identity, IdentityError, TrustStore, subject_of
from mapemesh.names import dns_name

log = logging.getLogger(__name__)
POLICY_FILE = Path(__file__).with_name("commands.yaml")


def enabled() -> bool:
    """Identities are on unless MAPEMESH_IDENTITIES says off (false, 0, no)."""
    return settings.current().identities


def identity_dir(data: Path | None = None) -> Path:
    """MAPEMESH_IDENTITY_DIR, else `data` (default DATA_DIR)/identity."""
    s = settings.current()
    if s.identity_dir:
        return Path(s.identity_dir)
    return (Path(data) if data is not None else s.data) / "identity"


@functools.lru_cache(maxsize=4)
def load_policy(path: Path = POLICY_FILE) -> dict[str, frozenset[str]]:
    """{command event type: the subjects allowed to send it}."""
    try:
        doc = yaml.safe_load(Path(path).read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise IdentityError(f"command policy {path}: {exc}") from None
    if not isinstance(doc, dict) or not all(isinstance(v, list) for v in doc.values()):
        raise IdentityError(f"command policy {path}: a mapping of event type to a list of identities")
    return {str(kind): frozenset(subject_of(str(who)) for who in allowed) for kind, allowed in doc.items()}


def policy() -> dict[str, frozenset[str]]:
    """The command policy in force (MAPEMESH_COMMAND_POLICY, else the default): asked on every reply a stage sends."""
    return _policy_named(settings.current().command_policy)


@functools.lru_cache(maxsize=4)
def _policy_named(path: str) -> dict[str, frozenset[str]]:
    # Cached by the variable's text: a Path built and hashed per call was ~13% of the monitor stage's CPU per event.
    return load_policy(Path(path) if path else POLICY_FILE)


COMMANDS = frozenset(load_policy(POLICY_FILE))
"""The command types of the default policy (another policy may name more)."""


@dataclass(frozen=True)
class Verdict:
    allowed: bool
    sender: str
    rule: str
    reason: str = ""


class Guard:
    """Checks commands against the command policy with the signers' certificates in `trust`."""

    def __init__(self, trust: TrustStore | None, on: bool = True, root: Path | None = None):
        self.trust, self.on, self.root = trust, on, root

    @classmethod
    def from_environment(cls, data: Path | None = None) -> Guard:
        if not enabled():
            return cls(None, on=False)
        root = identity_dir(data)
        try:
            return cls(TrustStore(root), root=root)
        except IdentityError:
            return cls(None, root=root)  # deny by default: no command passes until there is a trust anchor

    def _trust(self) -> TrustStore | str:
        if self.trust is None and self.root is not None:
            try:
                self.trust = TrustStore(self.root)  # the authority may be made after this receiver started
            except IdentityError as exc:
                return str(exc)
        return self.trust if self.trust is not None else "no trust anchor"

    def anchor(self) -> TrustStore | None:
        """The trust anchor, when there is one (made once the authority exists)."""
        found = self._trust()
        return None if isinstance(found, str) else found

    def check(self, event: CloudEvent) -> Verdict:
        allowed_by = policy().get(event.type)
        if allowed_by is None or not self.on:
            return Verdict(True, event.source, "not-a-command" if allowed_by is None else "identities-off")
        trust = self._trust()
        if isinstance(trust, str):
            return Verdict(False, event.source, "no-trust-anchor", trust)
        if not event.get("dssematerial"):
            return Verdict(False, event.source, "unsigned", f"{event.type} must be signed by one of "
                                                            f"{', '.join(sorted(allowed_by))}")
        try:
            signer = verify(event, trust)
        except Unverified as exc:
            return Verdict(False, event.source, "unverified", str(exc))
        if signer not in allowed_by:
            return Verdict(False, signer, "not-allowed", f"{signer} may not send {event.type}")
        return Verdict(True, signer, "allowed")


def refusal(receiver: str, event: CloudEvent, verdict: Verdict) -> catalogue.AuthRefused:
    """The audit of a refused command (its log line written here)."""
    log.warning("refused %s %s for %s from %s: %s (%s)", event.type, event.id, receiver, verdict.sender,
                verdict.rule, verdict.reason)
    return catalogue.AuthRefused(receiver=receiver, command=event.type, command_id=event.id,  # type: ignore[arg-type]
                                 command_source=event.source, sender=verdict.sender, rule=verdict.rule,
                                 reason=verdict.reason or verdict.rule)


@functools.lru_cache(maxsize=8)
def _signer(name: str, root: str) -> Identity:
    return Identity.load(Path(root), name)


def sign_as(event: CloudEvent, name: str, root: Path | None = None) -> CloudEvent:
    """`event` signed by the mesh identity `name` (in `root`, default `identity_dir()`): what reports a knob's
    result does, so that its receivers know the report came from what applied the knob; unchanged when identities
    are off or `name` has no identity there."""
    if not enabled():
        return event
    try:
        return sign(event, _signer(name, str(root or identity_dir())))
    except IdentityError:
        return event


MECHANISM_ADAPTERS = {"upf": "UPFSelect", "jobs": "JobOrder"}
"""The functions that apply a cluster's mechanism through an outside system's API (`mapemesh.adapters`), each with
the one knob it applies: UPFSelect through a 5G core, JobOrder through a datacenter scheduler. Like the bridge, each
reports for the nodes behind it, but only the results of its own knob."""


def knob_reporters(node: str, knob: str) -> frozenset[str]:
    """Who may report a result of `knob` for `node`: its node shim, an agent that is the node (the storage gateway
    signs as its own name), the MQTT bridge (for the far-edge devices behind it) and the mechanism adapter whose
    knob it is, as subjects. An adapter reporting another knob (a `upf`-signed CPUFrequency failure) is not one."""
    adapters = [name for name, its in MECHANISM_ADAPTERS.items() if its == knob]
    return frozenset(subject_of(name) for name in (dns_name("node-shim", node), node, "bridge", *adapters))


def reported_by_the_node(event: CloudEvent, node: str, knob: str, trust: TrustStore | None) -> bool:
    """Whether `event` (a result of `knob` for `node`) is signed by one of its `knob_reporters`; always, with
    identities off."""
    if not enabled():
        return True
    if trust is None or not event.get("dssematerial"):
        return False
    try:
        signer = verify(event, trust)
    except Unverified:
        return False
    return signer in knob_reporters(node, knob)


def signer() -> Identity | None:
    """This process's identity (MAPEMESH_IDENTITY, in MAPEMESH_IDENTITY_DIR), or None when it has none."""
    name = settings.current().identity
    if not name or not enabled():
        return None
    return _signer(name, str(identity_dir()))


def sign_commands(events: list[CloudEvent]) -> list[CloudEvent]:
    """`events` with the commands among them signed by this process's identity (unchanged without one)."""
    commands = policy()
    if not any(e.type in commands for e in events):
        return events
    me = signer()
    if me is None:
        return events
    return [sign(e, me) if e.type in commands else e for e in events]
