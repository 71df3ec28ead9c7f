"""Prometheus metrics. One registry for the process; gunicorn's multiprocess
mode is handled in gunicorn.conf.py and api/ops.py."""
from __future__ import annotations

import time
from contextlib import contextmanager
from typing import Iterator

from prometheus_client import Counter, Histogram

HTTP_REQUESTS = Counter(
    "telephony_http_requests_total", "HTTP requests served, by route and status.",
    ["method", "route", "status"],
)
HTTP_LATENCY = Histogram(
    "telephony_http_request_duration_seconds", "Time to serve an HTTP request, by route.",
    ["method", "route"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10),
)
UPSTREAM_REQUESTS = Counter(
    "telephony_upstream_requests_total",
    "Calls to upstream APIs (Ultravox, carriers), by outcome: ok, client_error, "
    "rate_limited, server_error, timeout, connection_error.",
    ["upstream", "operation", "outcome"],
)
UPSTREAM_LATENCY = Histogram(
    "telephony_upstream_request_duration_seconds", "Latency of upstream API calls.",
    ["upstream", "operation"],
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30),
)

TRANSFERS = Counter(
    "telephony_call_transfers_total",
    "Transfers of live calls to a person, by carrier, mode (cold, warm; none when refused) and outcome: "
    "answered, busy, no-answer, declined, failed, refused.",
    ["carrier", "mode", "outcome"],
)


class UpstreamCall:
    """Mutable outcome holder for `track_upstream`; set `.outcome` before leaving."""

    def __init__(self) -> None:
        self.outcome = "ok"


@contextmanager
def track_upstream(upstream: str, operation: str) -> Iterator[UpstreamCall]:
    """Time one upstream call and count it by outcome.

    An exception escaping the block counts as `connection_error` unless the
    block already set a more precise outcome.
    """
    call = UpstreamCall()
    started = time.perf_counter()
    try:
        yield call
    except BaseException:
        if call.outcome == "ok":
            call.outcome = "connection_error"
        raise
    finally:
        UPSTREAM_LATENCY.labels(upstream, operation).observe(time.perf_counter() - started)
        UPSTREAM_REQUESTS.labels(upstream, operation, call.outcome).inc()
