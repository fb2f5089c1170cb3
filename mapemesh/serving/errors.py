"""What a function raises to say how its event went, and what each becomes on the wire.

| raised                  | local host, functions-framework adapter | the broker then                             |
|-------------------------|-----------------------------------------|---------------------------------------------|
| `PermanentError`        | 422                                     | does not retry: dead-letters (input it can  |
|                         |                                         | never handle: bad data, a type it does not  |
|                         |                                         | take)                                       |
| `TemporaryError(delay)` | 503 with `Retry-After: delay`           | retries, no sooner than `delay` where the   |
|                         |                                         | delivery sets `retryAfterMax` (Knative's)   |
| anything else           | 500                                     | retries with its backoff                    |
"""

from __future__ import annotations

import math


class FunctionError(Exception):
    """The function's source or target cannot be loaded."""


class PermanentError(Exception):
    """Raised by a function for input it can never handle: the event is not retried (HTTP 422)."""


class TemporaryError(Exception):
    """Raised by a function that cannot handle the event now but may later: HTTP 503 with `Retry-After`."""

    def __init__(self, message: str = "try again later", delay: float = 1.0):
        if not math.isfinite(delay) or delay < 0:
            raise ValueError(f"delay must be a non-negative number of seconds, not {delay!r}")
        super().__init__(message)
        self.delay = delay

    @property
    def retry_after(self) -> str:
        """The `Retry-After` header: whole seconds, rounded up (HTTP takes no fractions)."""
        return str(math.ceil(self.delay))
