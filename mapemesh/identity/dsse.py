"""Signed CloudEvents: the CloudEvents "Verifiable CloudEvents with DSSE" extension (cloudevents/spec,
`cloudevents/extensions/verifiability.md`), over DSSE v1.0.2 (secure-systems-lab/dsse `protocol.md`).

| attribute        | what                                                                                      |
|------------------|-------------------------------------------------------------------------------------------|
| `dssematerial`   | Base64 of the DSSE JSON envelope: `payloadType` `https://cloudevents.io/verifiability/dsse/v0.1`, |
|                  | `payload` the 32-byte verification material, `signatures: [{keyid, sig}]`               |
| `signedextattrs` | the extension attributes signed too (mapemesh signs `node`, which routes a knob.apply)    |

The verification material is SHA256 over the SHA256 of id, source, specversion, type, datacontenttype,
dataschema, subject, time (RFC 3339, UTC, `Z`), the data, then each signed extension's name and value; an unset
attribute counts as the empty string. The signature is ECDSA P-256 / SHA-256 over DSSE's PAE. `keyid` is the
signer's identity (`system:serviceaccount:default:NAME`), whose certificate the verifier's `TrustStore` holds.
Signatures survive the broker: it delivers attributes and data as they were posted.

| call                              | does                                                                       |
|-----------------------------------|----------------------------------------------------------------------------|
| `sign(event, identity)`           | the event with `dssematerial` (and `signedextattrs`) added                 |
| `verify(event, trust)`            | the signer's subject; `Unverified` (with the reason) when it is not signed |
|                                   | or not as it was signed                                                    |
"""

from __future__ import annotations

import base64
import binascii
import datetime
import hashlib
import json

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from mapemesh.eventing.cloudevent import CloudEvent, timestamp
from mapemesh.identity.pki import Identity, IdentityError, TrustStore

PAYLOAD_TYPE = "https://cloudevents.io/verifiability/dsse/v0.1"
CORE = ("id", "source", "specversion", "type", "datacontenttype", "dataschema", "subject")
SIGNED_EXTENSIONS = ("node",)
"""The extensions mapemesh signs when an event carries them."""


class Unverified(Exception):
    """An event whose signature is missing, malformed, unknown or does not match it."""


def _digest(value: bytes | str) -> bytes:
    return hashlib.sha256(value.encode("utf-8") if isinstance(value, str) else value).digest()


def _time(value: object) -> str:
    if value is None:
        return ""
    when = timestamp(value)
    if when is None:
        raise ValueError(f"{value!r} is not an RFC 3339 timestamp")
    return when.astimezone(datetime.UTC).isoformat().replace("+00:00", "Z")


def material(event: CloudEvent, extensions: list[str]) -> bytes:
    """The verification material of `event` with `extensions` signed."""
    parts = [_digest(str(event.get(name) or "")) for name in CORE]
    parts.append(_digest(_time(event.get("time"))))
    parts.append(_digest(event.data or b""))
    for name in extensions:
        parts += [_digest(name), _digest(str(event.get(name) or ""))]
    return hashlib.sha256(b"".join(parts)).digest()


def _pae(payload_type: str, body: bytes) -> bytes:
    kind = payload_type.encode("utf-8")
    return b"DSSEv1 %d %s %d %s" % (len(kind), kind, len(body), body)


def sign(event: CloudEvent, identity: Identity) -> CloudEvent:
    extensions = [name for name in SIGNED_EXTENSIONS if event.get(name) is not None]
    attributes = {k: v for k, v in event.attributes.items() if k not in ("dssematerial", "signedextattrs")}
    if extensions:
        attributes["signedextattrs"] = ",".join(extensions)
    unsigned = CloudEvent(attributes, event.data)
    body = material(unsigned, extensions)
    sig = identity.key.sign(_pae(PAYLOAD_TYPE, body), ec.ECDSA(hashes.SHA256()))
    envelope = {"payload": base64.b64encode(body).decode(), "payloadType": PAYLOAD_TYPE,
                "signatures": [{"keyid": identity.subject, "sig": base64.b64encode(sig).decode()}]}
    attributes["dssematerial"] = base64.b64encode(json.dumps(envelope, separators=(",", ":")).encode()).decode()
    return CloudEvent(attributes, event.data)


def _extensions(event: CloudEvent) -> list[str]:
    raw = str(event.get("signedextattrs") or "")
    names = [n for n in raw.split(",") if n] if raw else []
    if len(set(names)) != len(names) or any(n in (*CORE, "time", "dssematerial", "signedextattrs") for n in names):
        raise Unverified(f"signedextattrs {raw!r} breaks the extension's rules")
    return names


def verify(event: CloudEvent, trust: TrustStore) -> str:
    """The subject that signed `event` (the verification protocol's steps; any failure is `Unverified`)."""
    raw = event.get("dssematerial")
    if not raw:
        raise Unverified("the event is not signed (no dssematerial)")
    try:
        envelope = json.loads(base64.b64decode(str(raw), validate=True))
        payload = base64.b64decode(envelope["payload"], validate=True)
        signatures = list(envelope["signatures"])
        payload_type = envelope["payloadType"]
    except (ValueError, binascii.Error, KeyError, TypeError):
        raise Unverified("dssematerial is not a DSSE envelope") from None
    if payload_type != PAYLOAD_TYPE:
        raise Unverified(f"payloadType {payload_type!r} is not {PAYLOAD_TYPE}")
    if len(payload) != 32:
        raise Unverified("the verification material is not a SHA-256 digest")
    problems = []
    for entry in signatures:
        subject = str((entry or {}).get("keyid") or "")
        try:
            key = trust.public_key(subject)
            key.verify(base64.b64decode(entry["sig"], validate=True), _pae(payload_type, payload),
                       ec.ECDSA(hashes.SHA256()))
        except IdentityError as exc:
            problems.append(str(exc))
            continue
        except (InvalidSignature, ValueError, binascii.Error, KeyError, TypeError):
            problems.append(f"the signature of {subject} does not verify")
            continue
        if material(event, _extensions(event)) != payload:
            raise Unverified(f"the event is not as {subject} signed it (changed in transit)")
        return subject
    raise Unverified("; ".join(problems) or "the envelope holds no signature")
