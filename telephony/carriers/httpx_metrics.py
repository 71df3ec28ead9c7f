"""The Telnyx SDK's HTTP layer (httpx), counted and timed like the other carriers' requests
(http_metrics.py has the why and the labels).

httpx is imported when the first Telnyx client is built (``lazy_module``), like the Telnyx
SDK, its only user here: importing it costs a process ~4 MB and ~30 ms (it brings its
command-line client's `rich` and `pygments` along), which a web worker never needs unless
an agency uses Telnyx."""
from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Any

from ..metrics import track_upstream
from .http_metrics import operation_name, outcome_of_status
from .lazy import lazy_module

if TYPE_CHECKING:
    import httpx
else:
    httpx = lazy_module("httpx")


@functools.cache
def metered_transport_class() -> type[httpx.HTTPTransport]:
    """The class below, defined once httpx, which it extends, is first needed."""

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

    return MeteredTransport


def metered_httpx_transport(carrier: str, *, max_connections: int) -> httpx.HTTPTransport:
    """The transport sdk.py gives an httpx-based SDK's client (Telnyx): never re-sends
    (retries=0), at most `max_connections` connections, counts each request."""
    transport: httpx.HTTPTransport = metered_transport_class()(
        carrier, retries=0, limits=httpx.Limits(max_connections=max_connections,
                                                 max_keepalive_connections=max_connections))
    return transport
