"""Why a request to a function failed, as the HTTP answer the local host gives for it.

| exception | answer | raised when |
|---|---|---|
| `FunctionFailed(status, message)` | `status` (with | the activator got no reply: queue full, the function raised, |
| | `retry_after`) | its process died, a timeout (the codes: `activator`) |
| `ImportFailed(message)` | `503` | the function's source does not import (or has no such target): |
| | | the Service cannot run until its manifest changes |

The fork server client (`forkserver`) and the activator (`activator`) raise them; the host (`host`) turns them
into answers, over HTTP or to the broker in the same process.
"""

from __future__ import annotations


class FunctionFailed(Exception):
    """The function raised; `status` is the HTTP answer, `retry_after` its Retry-After (429, or a TemporaryError's
    503)."""

    def __init__(self, status: int, message: str, retry_after: str | None = None):
        super().__init__(message)
        self.status = status
        self.retry_after = retry_after if retry_after is not None else ("1" if status == 429 else None)


class ImportFailed(FunctionFailed):
    """The function's source does not import (or has no such target): the Service cannot run."""

    def __init__(self, message: str):
        super().__init__(503, message)
