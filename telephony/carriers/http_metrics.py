"""Every carrier REST request counted and timed, where the SDKs send it.

The official SDKs are called from many places (dialling, hang-ups, webhook answers,
number look-ups); rather than wrap each call site, the HTTP layer each SDK lets us
inject is wrapped once, so no request is missed: a `requests` adapter for Twilio and
Plivo (mounted on their sessions, here) and an `httpx` transport for Telnyx
(httpx_metrics.py, whose httpx is imported with the Telnyx SDK only); sdk.py builds
the clients with them. Each request is counted in
`telephony_upstream_requests_total{upstream=<carrier>, operation, outcome}` and timed
(to the answer's headers) in `telephony_upstream_request_duration_seconds`, the
families Ultravox calls use too.

`operation` is the method and the path with its ids replaced by `{id}` (e.g.
`POST /2010-04-01/Accounts/{id}/Calls.json`, `POST /v2/calls/{id}/actions/hangup`), so
the label set stays small whatever accounts and calls there are.
"""
from __future__ import annotations

import re
from typing import Any
from urllib.parse import urlsplit

import requests
from requests.adapters import HTTPAdapter

from ..metrics import track_upstream

# Path segments kept as they are: words (Calls.json, actions, hangup), API versions
# (v2, 2010-04-01). Anything else (account SIDs, call ids, numbers) becomes {id}.
_WORD = re.compile(r"^[A-Za-z_]{1,24}(\.[a-z]{2,4})?$")
_VERSION = re.compile(r"^(v\d{1,2}|\d{4}-\d{2}-\d{2})$")
_ID_EXTENSION = re.compile(r"^.+(\.[a-z]{2,4})$")


def operation_name(method: str, url: str) -> str:
    """`METHOD /path/{id}/...`: the request's method and path with its ids generalised."""
    segments = []
    for segment in urlsplit(url).path.split("/"):
        if not segment or _WORD.match(segment) or _VERSION.match(segment):
            segments.append(segment)
        else:
            extension = _ID_EXTENSION.match(segment)
            segments.append("{id}" + (extension.group(1) if extension else ""))
    return f"{method.upper()} {'/'.join(segments) or '/'}"


def outcome_of_status(status: int) -> str:
    """The outcome label of an answered request (the vocabulary of metrics.track_upstream)."""
    if status == 429:
        return "rate_limited"
    if status >= 500:
        return "server_error"
    if status >= 400:
        return "client_error"
    return "ok"


class MeteredAdapter(HTTPAdapter):
    """A requests adapter that counts and times every request it sends for `carrier`."""

    def __init__(self, carrier: str, **kwargs: Any) -> None:
        self.carrier = carrier
        super().__init__(**kwargs)

    def send(self, request: requests.PreparedRequest, *args: Any, **kwargs: Any) -> requests.Response:
        with track_upstream(self.carrier, operation_name(request.method or "GET", request.url or "")) as call:
            try:
                response = super().send(request, *args, **kwargs)
            except requests.Timeout:
                call.outcome = "timeout"
                raise
            call.outcome = outcome_of_status(response.status_code)
            return response


def metered_requests_adapter(carrier: str, *, pool_maxsize: int) -> HTTPAdapter:
    """The adapter sdk.py mounts on a requests-based SDK's sessions (Twilio, Plivo):
    never re-sends (max_retries=0), pools `pool_maxsize` connections, counts each request."""
    return MeteredAdapter(carrier, max_retries=0, pool_maxsize=pool_maxsize)
