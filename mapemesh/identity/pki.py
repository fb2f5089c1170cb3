"""The mesh's identities: a small certificate authority and one key and certificate per component (seed 7.1.4).

A component's identity is named as Knative Eventing names its OIDC sender identities, a Kubernetes service
account subject (`system:serviceaccount:default:execute`); its certificate carries the SPIFFE ID Istio gives a
workload (`spiffe://cluster.local/ns/default/sa/execute`, seed 7.1.4.2). ECDSA P-256 keys, made with
`cryptography`.

| path (under the identity directory) | what                                           | who reads it               |
|-------------------------------------|------------------------------------------------|----------------------------|
| `ca/ca.key` (0600), `ca/ca.pem`     | the authority's key and self-signed certificate | `mapemesh up` / `identity` |
| `keys/NAME.key` (0600)              | a component's private key                      | that component only        |
| `certs/NAME.pem`                    | its certificate, signed by the authority       | whoever verifies it        |

On one machine `mapemesh up` makes the authority in DATA_DIR/identity on first start and issues each Service,
the node shim, the API, the bridge and the storage gateway an identity as it starts them. On a cluster the same
layout is mounted: a Secret with a component's key, a ConfigMap with `ca/ca.pem` and `certs/`
(`mapemesh identity issue NAME` makes them).
"""

from __future__ import annotations

import datetime
import os
import re
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from mapemesh.files import write_atomically

NAMESPACE = "default"
SUBJECT_PREFIX = f"system:serviceaccount:{NAMESPACE}:"
_NAME = re.compile(r"^[a-z0-9]([-a-z0-9.]{0,61}[a-z0-9])?$")
CA_DAYS, CERT_DAYS = 3650, 365


class IdentityError(ValueError):
    """An identity that cannot be made, loaded or trusted."""


def subject_of(name: str) -> str:
    return name if name.startswith("system:") else SUBJECT_PREFIX + name


def name_of(subject: str) -> str:
    return subject.removeprefix(SUBJECT_PREFIX)


def spiffe_id(name: str) -> str:
    return f"spiffe://cluster.local/ns/{NAMESPACE}/sa/{name}"


def _write_private(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


@dataclass(frozen=True)
class Identity:
    """A component's name, private key and certificate."""

    name: str
    key: ec.EllipticCurvePrivateKey
    cert: x509.Certificate

    @property
    def subject(self) -> str:
        return subject_of(self.name)

    @classmethod
    def load(cls, root: Path, name: str) -> Identity:
        try:
            key = serialization.load_pem_private_key((root / "keys" / f"{name}.key").read_bytes(), password=None)
            cert = x509.load_pem_x509_certificate((root / "certs" / f"{name}.pem").read_bytes())
        except (OSError, ValueError) as exc:
            raise IdentityError(f"identity {name} in {root}: {exc}") from None
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise IdentityError(f"identity {name} in {root}: not an EC key")
        return cls(name, key, cert)


class Authority:
    """The certificate authority in `root/ca`: made when missing, then issuing component identities."""

    def __init__(self, root: Path):
        self.root = Path(root)
        key_path, cert_path = self.root / "ca" / "ca.key", self.root / "ca" / "ca.pem"
        if not cert_path.exists():
            key = ec.generate_private_key(ec.SECP256R1())
            name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "mapemesh identity authority")])
            now = datetime.datetime.now(datetime.UTC)
            cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
                    .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
                    .not_valid_after(now + datetime.timedelta(days=CA_DAYS))
                    .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
                    .sign(key, hashes.SHA256()))
            _write_private(key_path, _pem_key(key))
            write_atomically(cert_path, cert.public_bytes(serialization.Encoding.PEM))
        try:
            loaded = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
            self.cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
        except (OSError, ValueError) as exc:
            raise IdentityError(f"the identity authority in {self.root / 'ca'}: {exc}") from None
        assert isinstance(loaded, ec.EllipticCurvePrivateKey)
        self.key = loaded

    def issue(self, name: str) -> Identity:
        """`name`'s identity, issued now unless it has a valid one already (kept: its key does not change)."""
        if not _NAME.match(name):
            raise IdentityError(f"{name!r}: an identity name is lowercase letters, digits, '-' and '.'")
        try:
            found = Identity.load(self.root, name)
            if found.cert.not_valid_after_utc > datetime.datetime.now(datetime.UTC) + datetime.timedelta(days=1):
                return found
        except IdentityError:
            pass
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.UTC)
        cert = (x509.CertificateBuilder()
                .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject_of(name))]))
                .issuer_name(self.cert.subject).public_key(key.public_key())
                .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
                .not_valid_after(now + datetime.timedelta(days=CERT_DAYS))
                .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                .add_extension(x509.SubjectAlternativeName([x509.UniformResourceIdentifier(spiffe_id(name))]),
                               critical=False)
                .sign(self.key, hashes.SHA256()))
        _write_private(self.root / "keys" / f"{name}.key", _pem_key(key))
        write_atomically(self.root / "certs" / f"{name}.pem", cert.public_bytes(serialization.Encoding.PEM))
        return Identity(name, key, cert)


class TrustStore:
    """What a verifier trusts: the authority's certificate in `root/ca/ca.pem`, and the issued certificates in
    `root/certs`, looked up by subject (read once each)."""

    def __init__(self, root: Path):
        self.root = Path(root)
        try:
            self.ca = x509.load_pem_x509_certificate((self.root / "ca" / "ca.pem").read_bytes())
        except (OSError, ValueError) as exc:
            raise IdentityError(f"no trust anchor in {self.root / 'ca' / 'ca.pem'}: {exc}") from None
        self._keys: dict[str, ec.EllipticCurvePublicKey] = {}

    def forget(self, subject: str) -> bool:
        """Drop `subject`'s cached key (its certificate may have been re-issued with a new one); whether it was."""
        return self._keys.pop(subject, None) is not None

    def public_key(self, subject: str) -> ec.EllipticCurvePublicKey:
        """The key of the certificate issued to `subject`, checked: signed by the authority, valid now, its name."""
        found = self._keys.get(subject)
        if found is not None:
            return found
        name = name_of(subject)
        if not _NAME.match(name):
            raise IdentityError(f"{subject!r} is no identity of this mesh")
        try:
            cert = x509.load_pem_x509_certificate((self.root / "certs" / f"{name}.pem").read_bytes())
        except (OSError, ValueError):
            raise IdentityError(f"no certificate was issued to {subject}") from None
        ca_key = self.ca.public_key()
        assert isinstance(ca_key, ec.EllipticCurvePublicKey)
        try:
            ca_key.verify(cert.signature, cert.tbs_certificate_bytes, ec.ECDSA(cert.signature_hash_algorithm))
        except InvalidSignature:
            raise IdentityError(f"the certificate of {subject} is not signed by this mesh's authority") from None
        now = datetime.datetime.now(datetime.UTC)
        if not cert.not_valid_before_utc <= now <= cert.not_valid_after_utc:
            raise IdentityError(f"the certificate of {subject} is not valid now")
        if cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value != subject:
            raise IdentityError(f"the certificate in certs/{name}.pem names someone else")
        key = cert.public_key()
        assert isinstance(key, ec.EllipticCurvePublicKey)
        self._keys[subject] = key
        return key
