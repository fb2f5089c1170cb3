"""The TLS context outgoing HTTPS calls verify servers with, made once per process.

httpx makes one for every client it opens (certifi's bundle, or `SSL_CERT_FILE`/`SSL_CERT_DIR`), about 40 ms of
CPU each; a mechanism adapter opens a client per command. Pass `verify=client_context()` to share one: the same
trust, built once.
"""

from __future__ import annotations

import ssl
from functools import cache

import httpx


@cache
def client_context() -> ssl.SSLContext:
    """httpx's default verifying context (its `trust_env` rules), built on first use."""
    return httpx.create_ssl_context()
