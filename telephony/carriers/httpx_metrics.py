"""The Telnyx SDK's HTTP layer (httpx), counted and timed like the other carriers' requests
(http_metrics.py has the why and the labels). A module of its own so that it is imported
together with the Telnyx SDK, which is the only httpx user."""
from __future__ import annotations

from typing import Any

import httpx

from ..metrics import track_upstream
from .http_metrics import operation_name, outcome_of_status


class MeteredTransport(httpx.HTTPTransport):
    """An httpx transport that counts and times every request it sends for `carrier`."""

    def __init__(self, carrier: str, **kwargs: Any) -> None:
        self.carrier = carrier
        super().__init__(**kwargs)

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        with track_upstream(self.carrier, operation_name(request.method, str(request.url))) as call:
            try:
                response = super().handle_request(request)
            except httpx.TimeoutException:
                call.outcome = "timeout"
                raise
            call.outcome = outcome_of_status(response.status_code)
            return response


def metered_httpx_transport(carrier: str, *, max_connections: int) -> httpx.HTTPTransport:
    """The transport sdk.py gives an httpx-based SDK's client (Telnyx): never re-sends
    (retries=0), at most `max_connections` connections, counts each request."""
    return MeteredTransport(carrier, retries=0,
                            limits=httpx.Limits(max_connections=max_connections,
                                                max_keepalive_connections=max_connections))
