"""Per-request plumbing: request ids, access logs, HTTP metrics."""
from __future__ import annotations

import contextvars
import functools
import logging
import re
import time
import uuid

from flask import Flask, g, request

from ..logging import agency_id_var, call_id_var, request_id_var
from ..metrics import HTTP_LATENCY, HTTP_REQUESTS

log = logging.getLogger("telephony.access")
_SAFE_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


def register(app: Flask) -> None:
    @app.before_request
    def start_request():
        incoming = request.headers.get("X-Request-ID", "")
        # Accept a caller's id (to follow a request across services) only if it
        # is harmless to echo into logs and headers.
        g.request_id = incoming if _SAFE_REQUEST_ID.match(incoming) else uuid.uuid4().hex
        g.started = time.perf_counter()
        request_id_var.set(g.request_id)
        agency_id_var.set(None)
        call_id_var.set(None)

    @app.after_request
    def finish_request(response):
        elapsed = time.perf_counter() - g.get("started", time.perf_counter())
        # The route template, not the path: ids in paths would explode cardinality.
        route = request.url_rule.rule if request.url_rule is not None else "unmatched"
        response.headers["X-Request-ID"] = g.get("request_id", "")
        # Counted and logged once the response is sent (the WSGI server closes it then):
        # nobody waits for either, and the line carries this request's context (request,
        # agency and call ids) as it is now.
        response.call_on_close(functools.partial(contextvars.copy_context().run, _record_request, request.method,
                                                 route, response.status_code, elapsed))
        return response


def _record_request(method: str, route: str, status: int, elapsed: float) -> None:
    HTTP_REQUESTS.labels(method, route, str(status)).inc()
    HTTP_LATENCY.labels(method, route).observe(elapsed)
    if route not in ("/healthz", "/metrics"):
        log.info("%s %s %s", method, route, status,
                 extra={"method": method, "route": route, "status": status, "duration_ms": round(elapsed * 1000, 2)})
