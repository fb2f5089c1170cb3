"""Erasure coding for the gateway's objects: zfec (Reed-Solomon, systematic), k data fragments and m parity ones.

| call                                     | gives                                                                |
|------------------------------------------|----------------------------------------------------------------------|
| `encode(data, k, m)`                     | k+m fragments (index -> bytes) and the padding; any k rebuild `data` |
| `decode(fragments, k, padlen)`           | the data from any k fragments (their original indices)               |
| `extend(fragments, k, padlen, indices)`  | the fragments at `indices`, from any k: parity added without         |
|                                          | touching the fragments already stored                                |

zfec's fragment `i` depends on k and i only (its encoding matrix's rows do not change with n), so fragments of a
5+2 code are fragments of the 5+1 and 5+3 codes too: dropping or adding parity needs no re-coding, and a
fragment keeps its index for life. Changing k re-codes.
"""

from __future__ import annotations

import zfec

MAX_FRAGMENTS = 256
"""zfec's limit on k+m."""


def _check(k: int, n: int) -> None:
    if not 1 <= k <= n <= MAX_FRAGMENTS:
        raise ValueError(f"an erasure code needs 1 <= k <= k+m <= {MAX_FRAGMENTS}, got k={k}, k+m={n}")


def _blocks(data: bytes, k: int) -> tuple[list[bytes], int]:
    """The k data blocks (one copy of the data; only the last one padded) and the padding."""
    size = -(-len(data) // k) or 1
    padlen = size * k - len(data)
    view = memoryview(data)
    blocks = [bytes(view[i * size:(i + 1) * size]) for i in range(k)]
    return [b if len(b) == size else b + b"\x00" * (size - len(b)) for b in blocks], padlen


def encode(data: bytes, k: int, m: int) -> tuple[dict[int, bytes], int]:
    """The k+m fragments of `data` (index -> bytes) and the padding the last data fragment carries."""
    _check(k, k + m)
    blocks, padlen = _blocks(data, k)
    parity = zfec.Encoder(k, k + m).encode(blocks, list(range(k, k + m))) if m else []
    return {**dict(enumerate(blocks)), **dict(zip(range(k, k + m), parity, strict=True))}, padlen


def decode(fragments: dict[int, bytes], k: int, padlen: int) -> bytes:
    """The data from any k of its fragments."""
    if len(fragments) < k:
        raise ValueError(f"{len(fragments)} fragments cannot rebuild a {k}-of-n object")
    chosen = sorted(fragments)[:k]
    if chosen == list(range(k)):
        blocks = [fragments[i] for i in chosen]  # the data fragments are the data (the code is systematic)
    else:
        n = max(max(chosen) + 1, k)
        _check(k, n)
        blocks = list(zfec.Decoder(k, n).decode([fragments[i] for i in chosen], chosen))
    cut = padlen  # the padding is at the end: cut from the last blocks, then join once
    while cut:
        last = blocks.pop()
        keep = max(len(last) - cut, 0)
        cut -= len(last) - keep
        if keep:
            blocks.append(last[:keep])
    return b"".join(blocks)


def extend(fragments: dict[int, bytes], k: int, padlen: int, indices: list[int]) -> dict[int, bytes]:
    """The fragments at `indices` of the same code, computed from any k of the ones given."""
    if not indices:
        return {}
    n = max(*indices, *fragments) + 1
    _check(k, n)
    data = decode(fragments, k, padlen)
    blocks, _ = _blocks(data, k)
    made = zfec.Encoder(k, n).encode(blocks, list(indices))
    return dict(zip(indices, made, strict=True))
