"""Errors of the Ultravox client (`telephony.ultravox`).

Every failure is an `UltravoxError`: `detail` is Ultravox's own message (or ours for
transport failures) and never contains the API key, `status` the HTTP status when
Ultravox answered, `retry_after` the server's Retry-After in seconds (rate limits).

- `UltravoxClientError`: a 4xx other than 429, our request (or key) was wrong, e.g.
  422 call not active. Not worth retrying unchanged. Subclasses: `UltravoxAuthError`
  (401/403: missing, invalid or insufficiently authorized API key) and
  `UltravoxNotFound` (404: unknown call/agent, or a recording that is not (yet)
  available; only the recording may appear later).
- `UltravoxRateLimited`: 429 (rate/concurrency limit, throttle) or 503 (no capacity).
  Safe to retry later, after `retry_after` when given.
- `UltravoxServerError` (5xx other than 503, or a response we cannot understand),
  `UltravoxTimeout` (connect or read timeout) and `UltravoxUnavailable` (connection
  refused/reset, DNS failure or any other transport error): Ultravox is unwell or
  unreachable; a later retry may succeed.

The client never retries by itself: retrying a POST /api/calls could create a second
call (a timeout does not prove none was created), so callers decide.
"""
from __future__ import annotations


class UltravoxError(Exception):
    """Base class. `detail` is Ultravox's message (or ours for transport
    failures); it never contains the API key."""

    def __init__(self, operation: str, detail: str, *, status: int | None = None,
                 retry_after: float | None = None) -> None:
        self.operation = operation
        self.detail = detail
        self.status = status
        self.retry_after = retry_after
        super().__init__(self._message())

    def _message(self) -> str:
        status = f" (HTTP {self.status})" if self.status is not None else ""
        return f"Ultravox {self.operation} failed{status}: {self.detail}"

    def __str__(self) -> str:
        return self._message()

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(operation={self.operation!r}, status={self.status!r}, "
                f"detail={self.detail!r}, retry_after={self.retry_after!r})")

    def __reduce__(self):  # keep pickling working despite the keyword-only constructor
        return (type(self), (self.operation, self.detail),
                {"status": self.status, "retry_after": self.retry_after})


class UltravoxClientError(UltravoxError):
    """4xx other than 429: our request was wrong (e.g. 422 call not active)."""


class UltravoxAuthError(UltravoxClientError):
    """401/403: missing, invalid or insufficiently authorized API key."""


class UltravoxNotFound(UltravoxClientError):
    """404: unknown call/agent, or a recording that is not (yet) available."""


class UltravoxRateLimited(UltravoxError):
    """429 (rate/concurrency limit, throttle) or 503 (no capacity). `retry_after`
    is the server's Retry-After in seconds, or None."""


class UltravoxServerError(UltravoxError):
    """5xx other than 503, or a response we cannot understand."""


class UltravoxTimeout(UltravoxError):
    """Connect or read timeout."""


class UltravoxUnavailable(UltravoxError):
    """Connection refused/reset, DNS failure or any other transport error."""
