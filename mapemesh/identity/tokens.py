"""OIDC-style tokens for the broker ingress: what Knative Eventing's senders present when `authentication-oidc` is on.

A Knative sender puts a JWT in `Authorization: Bearer`, issued for its service account
(`sub: system:serviceaccount:NS:NAME`) with the receiver's audience (`aud`, knative/eventing `pkg/auth/audience.go`
`GetAudience`: `<group>/<kind>/<namespace>/<name>` in lower case, `eventing.knative.dev/broker/default/default` for
the default Broker). On a cluster the Kubernetes API server issues it; on one machine the mesh's own authority
does, through each component's identity (`mapemesh.identity.pki`): the token is a compact JWS, ES256, signed with the
component's key, and the verifier checks it against the certificate the authority issued to its `sub`.

| call                              | does                                                                       |
|-----------------------------------|----------------------------------------------------------------------------|
| `mint(identity, audience)`        | a token for `audience` (valid TOKEN_S, reused until a minute before)       |
| `verify(token, audience, trust)`  | its claims, or TokenError (bad form, algorithm, signature, audience, time) |
| `audience_of(url)`                | the broker audience of an ingress URL (`.../NS/NAME`), None for another    |
| `auth_headers(url, name=None)`    | `{"Authorization": "Bearer ..."}` for a broker URL, as `name` (default:    |
|                                   | MAPEMESH_IDENTITY) when that identity is at hand; `{}` otherwise           |
"""

from __future__ import annotations

import base64
import json
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature, encode_dss_signature

from mapemesh import settings
from mapemesh.identity import guard
from mapemesh.identity.pki import Identity, IdentityError, TrustStore

ISSUER = "mapemesh-identity-authority"
TOKEN_S = 3600
SKEW_S = 60
BROKER_AUDIENCE = "eventing.knative.dev/broker/{namespace}/{name}"


class TokenError(ValueError):
    """A token the ingress refuses; the message says why."""


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


_minted: dict[tuple[str, int, str], tuple[str, float]] = {}
"""(subject, certificate serial, audience) -> (token, expiry)."""


def mint(identity: Identity, audience: str, now: float | None = None) -> str:
    """A token of `identity` for `audience` (the same one until a minute before it expires)."""
    now = time.time() if now is None else now
    key = (identity.subject, identity.cert.serial_number, audience)
    cached = _minted.get(key)
    if cached is not None and cached[1] - SKEW_S > now:
        return cached[0]
    header = _b64(json.dumps({"alg": "ES256", "typ": "JWT", "kid": identity.subject}, separators=(",", ":")).encode())
    claims = {"iss": ISSUER, "sub": identity.subject, "aud": audience, "iat": int(now), "exp": int(now) + TOKEN_S}
    payload = _b64(json.dumps(claims, separators=(",", ":")).encode())
    r, s = decode_dss_signature(identity.key.sign(f"{header}.{payload}".encode(), ec.ECDSA(hashes.SHA256())))
    token = f"{header}.{payload}.{_b64(r.to_bytes(32, 'big') + s.to_bytes(32, 'big'))}"
    _minted[key] = (token, now + TOKEN_S)
    return token


def verify(token: str, audience: str, trust: TrustStore, now: float | None = None) -> dict[str, Any]:
    """The claims of a valid token for `audience`; TokenError for anything else."""
    parts = token.split(".")
    if len(parts) != 3:
        raise TokenError("not a JWT (three dot-separated parts)")
    try:
        header, claims = json.loads(_unb64(parts[0])), json.loads(_unb64(parts[1]))
        signature = _unb64(parts[2])
    except ValueError:
        raise TokenError("not a JWT (its parts are not base64url JSON)") from None
    if not isinstance(header, dict) or header.get("alg") != "ES256":
        raise TokenError(f"algorithm {header.get('alg') if isinstance(header, dict) else None!r} is not ES256")
    if not isinstance(claims, dict) or not isinstance(claims.get("sub"), str) or len(signature) != 64:
        raise TokenError("no subject, or a malformed signature")
    der = encode_dss_signature(int.from_bytes(signature[:32], "big"), int.from_bytes(signature[32:], "big"))
    signed = f"{parts[0]}.{parts[1]}".encode()
    for attempt in (1, 2):  # the second with the certificate read again: it may have been re-issued (a new key)
        try:
            trust.public_key(claims["sub"]).verify(der, signed, ec.ECDSA(hashes.SHA256()))
            break
        except IdentityError as exc:
            raise TokenError(str(exc)) from None
        except InvalidSignature:
            if attempt == 2 or not trust.forget(claims["sub"]):
                raise TokenError(f"the signature is not {claims['sub']}'s") from None
    audiences = claims.get("aud") if isinstance(claims.get("aud"), list) else [claims.get("aud")]
    if audience not in audiences:
        raise TokenError(f"the token is for {claims.get('aud')!r}, not {audience!r}")
    now = time.time() if now is None else now
    if not isinstance(claims.get("exp"), int | float) or claims["exp"] + SKEW_S < now:
        raise TokenError("the token has expired")
    if claims.get("iss") != ISSUER:
        raise TokenError(f"issuer {claims.get('iss')!r} is not this mesh's")
    return claims


def audience_of(url: str) -> str | None:
    """`eventing.knative.dev/broker/NS/NAME` for a broker ingress URL ending in `/NS/NAME`."""
    parts = [p for p in urlsplit(url).path.split("/") if p]
    return BROKER_AUDIENCE.format(namespace=parts[-2], name=parts[-1]).lower() if len(parts) >= 2 else None


_identities: dict[tuple[str, str], tuple[int, Identity]] = {}


def _identity(root: str, name: str) -> Identity | None:
    """`name`'s identity in `root`, read again when its certificate file changes (re-issued); None while it has
    none there (looked for again at the next call: it may be copied in later)."""
    try:
        stamp = (Path(root) / "certs" / f"{name}.pem").stat().st_mtime_ns
    except OSError:
        return None
    found = _identities.get((root, name))
    if found is None or found[0] != stamp:
        try:
            found = _identities[(root, name)] = (stamp, Identity.load(Path(root), name))
        except IdentityError:
            return None
    return found[1]


def auth_headers(url: str, name: str | None = None, data: Path | None = None) -> dict[str, str]:
    """The bearer token header for posting to the broker at `url` as identity `name` (default MAPEMESH_IDENTITY),
    when identities are on and that identity is in the identity folder (`guard.identity_dir(data)`); else none."""
    name = name or settings.current().identity
    audience = audience_of(url)
    if not name or audience is None or not guard.enabled():
        return {}
    identity = _identity(str(guard.identity_dir(data)), name)
    return {"Authorization": f"Bearer {mint(identity, audience)}"} if identity is not None else {}
