"""Kubernetes names from free text: what every component that names objects uses (the deploy function, the API's
views of what it deployed).

| call              | gives                                                                                   |
|-------------------|-----------------------------------------------------------------------------------------|
| `dns_name(*parts)`| the parts joined by `-` as a DNS-1035 label (lowercase, other characters `-`, a leading  |
|                   | letter, at most 63: a longer name keeps its start and a hash of the whole)               |
| `label_value(t)`  | `t` as a label value (letters, digits, `.`, `_`, `-`, at most 63, alphanumeric ends)     |
"""

from __future__ import annotations

import hashlib
import re

_NOT_DNS = re.compile(r"[^a-z0-9-]")
_NOT_LABEL = re.compile(r"[^A-Za-z0-9._-]")


def _shorten(text: str, limit: int, strip: str) -> str:
    # A plain cut could make two long names equal; a hash of the whole keeps them apart, deterministically.
    text = text.strip(strip)
    if len(text) <= limit:
        return text
    digest = hashlib.sha256(text.encode()).hexdigest()[:8]
    return f"{text[:limit - 9].rstrip(strip)}-{digest}"


def dns_name(*parts: str) -> str:
    """`parts` joined by '-' as a DNS-1035 label: lowercase, others '-', at most 63 long, starting with a letter."""
    name = _NOT_DNS.sub("-", "-".join(parts).lower()).strip("-")
    # Services (and Knative Services) need a leading letter, and every object of a component shares its name.
    if name and not name[0].isalpha():
        name = "x-" + name
    return _shorten(name, 63, "-")


def label_value(text: str) -> str:
    """`text` as a Kubernetes label value: letters, digits, '.', '_', '-', at most 63, alphanumeric at both ends."""
    return _shorten(_NOT_LABEL.sub("-", text), 63, "-._")
