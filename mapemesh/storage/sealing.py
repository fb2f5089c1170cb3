"""Encryption at rest for the gateway's objects (optional): an object is sealed before it is erasure coded, so no
location (and no fragment) ever holds its plain bytes.

| call                              | does                                                                          |
|-----------------------------------|-------------------------------------------------------------------------------|
| `Sealer.from_file(path)`          | the gateway's key: 32 bytes, raw, hex or base64 in the file (KeyError: why not) |
| `sealer.seal(data, aad)`          | (ciphertext, envelope): AES-256-GCM under a fresh data key, the data key      |
|                                   | wrapped under the gateway's key (envelope encryption); `aad` binds the object |
| `sealer.open(blob, envelope, aad)`| the plain bytes; `SealError` when the key or the bytes are not the right ones |

The envelope (`{"alg", "nonce", "key"}`, base64) is kept in the object's metadata, never in a location. A
migration moves and re-codes the sealed bytes as they are: it needs no key. The key's first 8 bytes of SHA-256
(`key_id`) are kept too, so a gateway started with another key says so instead of failing to decrypt.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

ALG = "AES-256-GCM"


class SealError(RuntimeError):
    """Sealed bytes that cannot be opened (another key, or changed bytes)."""


class KeyFileError(ValueError):
    """A key file that cannot be used."""


def _key(text: bytes) -> bytes:
    if len(text) == 32:
        return text  # raw bytes
    raw = text.strip()
    found = []
    with contextlib.suppress(ValueError, UnicodeDecodeError):
        found.append(bytes.fromhex(raw.decode("ascii")))
    with contextlib.suppress(binascii.Error, ValueError):
        found.append(base64.b64decode(raw, validate=True))
    for key in found:
        if len(key) == 32:
            return key
    raise KeyFileError("a key is 32 bytes: raw, or 64 hex digits, or base64 (head -c 32 /dev/urandom | base64)")


@dataclass(frozen=True)
class Sealer:
    key: bytes

    @classmethod
    def from_file(cls, path: Path) -> Sealer:
        try:
            return cls(_key(Path(path).read_bytes()))
        except OSError as exc:
            raise KeyFileError(f"{path}: {exc}") from None
        except KeyFileError as exc:
            raise KeyFileError(f"{path}: {exc}") from None

    @property
    def key_id(self) -> str:
        return hashlib.sha256(self.key).hexdigest()[:16]

    def seal(self, data: bytes, aad: bytes) -> tuple[bytes, dict[str, str]]:
        data_key, nonce, wrap_nonce = AESGCM.generate_key(bit_length=256), os.urandom(12), os.urandom(12)
        blob = AESGCM(data_key).encrypt(nonce, data, aad)
        wrapped = AESGCM(self.key).encrypt(wrap_nonce, data_key, aad)
        return blob, {"alg": ALG, "key_id": self.key_id, "nonce": base64.b64encode(nonce).decode(),
                      "key": base64.b64encode(wrap_nonce + wrapped).decode()}

    def open(self, blob: bytes, envelope: dict[str, str], aad: bytes) -> bytes:
        if envelope.get("alg") != ALG:
            raise SealError(f"sealed with {envelope.get('alg')!r}, not {ALG}")
        if envelope.get("key_id") != self.key_id:
            raise SealError(f"sealed under key {envelope.get('key_id')}, this gateway's key is {self.key_id}")
        wrapped = base64.b64decode(envelope["key"])
        try:
            data_key = AESGCM(self.key).decrypt(wrapped[:12], wrapped[12:], aad)
            return AESGCM(data_key).decrypt(base64.b64decode(envelope["nonce"]), blob, aad)
        except InvalidTag:
            raise SealError("the sealed bytes or their envelope were changed") from None
