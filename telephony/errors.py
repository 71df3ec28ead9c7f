"""Domain errors raised by services, and the HTTP error the API renders.

Services raise the domain errors; blueprints never build status codes by hand
for these cases: the app's error handler maps them (api/errors.py), including a
`retry_after` (seconds) as the Retry-After header. Services translate upstream
errors (Ultravox, carriers) into these; routes never see the clients' own types.
"""
from __future__ import annotations


class DomainError(Exception):
    status = 400
    code = "bad_request"
    retry_after: int | None = None  # seconds; sent as Retry-After

    def __init__(self, message: str, *, field: str | None = None, retry_after: int | None = None):
        self.message = message
        self.field = field
        if retry_after is not None:
            self.retry_after = retry_after
        super().__init__(message)


class InvalidInput(DomainError):
    status = 400
    code = "invalid_input"


class NotFound(DomainError):
    status = 404
    code = "not_found"


class Conflict(DomainError):
    status = 409
    code = "conflict"


class Unauthorized(DomainError):
    status = 401
    code = "unauthorized"


class Forbidden(DomainError):
    status = 403
    code = "forbidden"


class UpstreamFailed(DomainError):
    status = 502
    code = "upstream_error"


class UpstreamBusy(DomainError):
    """An upstream at its rate or concurrency limit: try again after `retry_after`."""

    status = 429
    code = "upstream_rate_limited"


class ApiError(Exception):
    """An HTTP error with a JSON body: {"error": message, "code": code, "fields": {...}}."""

    def __init__(self, status: int, message: str, *, code: str | None = None,
                 fields: dict[str, str] | None = None, headers: dict[str, str] | None = None):
        self.status = status
        self.message = message
        self.code = code or _DEFAULT_CODES.get(status, "error")
        self.fields = fields
        self.headers = headers or {}
        super().__init__(message)

    def body(self) -> dict:
        body: dict = {"error": self.message, "code": self.code}
        if self.fields:
            body["fields"] = self.fields
        return body


_DEFAULT_CODES = {400: "bad_request", 401: "unauthorized", 403: "forbidden", 404: "not_found",
                  405: "method_not_allowed", 409: "conflict", 413: "payload_too_large", 415: "unsupported_media_type",
                  422: "unprocessable", 429: "rate_limited", 500: "internal_error", 502: "upstream_error",
                  503: "unavailable"}
