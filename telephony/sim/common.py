"""Pieces shared by the local simulators (Ultravox, carriers).

The simulators stand in for paid upstream APIs in end-to-end tests, benchmarks and
the README "try it" section. Everything here is loopback-only test tooling: no
persistence, state lives in memory and is guarded by one lock per simulator.

Every simulator exposes the same control API under ``/_sim/...`` (registered by
``install_control_api``):

- ``POST /_sim/config``   ``{"latency_ms": 500}`` fixed delay added to every API request.
- ``POST /_sim/failures`` ``{"failures": [{"method", "path_prefix", "mode", "status",
  "retry_after", "delay_s", "count"}]}``: the next ``count`` matching API requests fail.
- ``GET  /_sim/requests`` log of received API requests (never the credentials), each
  with the status answered and ``duration_ms``, the time the simulator took.
- ``POST /_sim/reset``    clears state.
"""
from __future__ import annotations

import base64
import copy
import sys
import threading
import time
import uuid
from collections import deque
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Callable, Iterator, Literal, Mapping

from cheroot.wsgi import Server as CherootServer
from flask import Flask, Response, g, jsonify, request

FailureMode = Literal["error", "timeout", "rate_limit", "unavailable"]
FAILURE_MODES: tuple[str, ...] = ("error", "timeout", "rate_limit", "unavailable")

# Builds the JSON error body an upstream would send, so SDKs parse injected failures
# exactly like real ones: (path, status, mode) -> JSON-serialisable body.
ErrorBodyFactory = Callable[[str, int, str], Any]

SIM_PREFIX = "/_sim/"
# Bounded so a long benchmark cannot grow the log without limit.
MAX_LOGGED_REQUESTS = 20_000


def utc_now_iso() -> str:
    """ISO-8601 UTC with microseconds and a Z suffix, like Ultravox's timestamps."""
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def new_uuid() -> str:
    return str(uuid.uuid4())


class SimError(Exception):
    """Raised by handlers to answer with a JSON error body and status code."""

    def __init__(self, status: int, body: Any, headers: Mapping[str, str] | None = None):
        super().__init__(status)
        self.status = status
        self.body = body
        self.headers = dict(headers or {})

    def to_response(self) -> Response:
        response = jsonify(self.body)
        response.status_code = self.status
        for name, value in self.headers.items():
            response.headers[name] = value
        return response


@dataclass
class FailureRule:
    path_prefix: str
    mode: FailureMode
    method: str | None = None  # None matches any method
    status: int = 500
    retry_after: float | None = 1
    delay_s: float = 15.0
    remaining: int | None = 1  # None = until reset

    @classmethod
    def from_json(cls, raw: Any) -> "FailureRule":
        if not isinstance(raw, dict):
            raise ValueError("each failure must be an object")
        mode = raw.get("mode", "error")
        if mode not in FAILURE_MODES:
            raise ValueError(f"mode must be one of {', '.join(FAILURE_MODES)}")
        path_prefix = raw.get("path_prefix", "/")
        if not isinstance(path_prefix, str) or not path_prefix.startswith("/"):
            raise ValueError("path_prefix must be a string starting with '/'")
        method = raw.get("method")
        if method is not None and not isinstance(method, str):
            raise ValueError("method must be a string or null")
        default_status = {"rate_limit": 429, "unavailable": 503}.get(mode, 500)
        status = raw.get("status") if raw.get("status") is not None else default_status
        count = raw.get("count", 1)
        if count is not None and (not isinstance(count, int) or count < 1):
            raise ValueError("count must be a positive integer or null")
        retry_after = raw.get("retry_after", 1)
        delay_s = raw.get("delay_s", 15.0)
        if not isinstance(status, int) or not 100 <= status <= 599:
            raise ValueError("status must be an HTTP status code")
        if retry_after is not None and not isinstance(retry_after, (int, float)):
            raise ValueError("retry_after must be a number or null")
        if not isinstance(delay_s, (int, float)) or delay_s < 0:
            raise ValueError("delay_s must be a non-negative number")
        return cls(
            path_prefix=path_prefix,
            mode=mode,
            method=method.upper() if method else None,
            status=status,
            retry_after=retry_after,
            delay_s=float(delay_s),
            remaining=count,
        )

    def matches(self, method: str, path: str) -> bool:
        return (self.method is None or self.method == method) and path.startswith(self.path_prefix)

    def to_json(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "path_prefix": self.path_prefix,
            "mode": self.mode,
            "status": self.status,
            "retry_after": self.retry_after,
            "delay_s": self.delay_s,
            "count": self.remaining,
        }


@dataclass
class Injector:
    """Thread-safe latency/failure injection plus the API request log.

    One instance per simulator app. Sleeps wait on an Event instead of time.sleep so
    ``reset()`` and server shutdown release parked request threads at once instead of
    leaving them asleep for ``delay_s``.
    """

    latency_ms: int = 0
    _rules: list[FailureRule] = field(default_factory=list)
    _log: deque[dict[str, Any]] = field(default_factory=lambda: deque(maxlen=MAX_LOGGED_REQUESTS))
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _wake: threading.Event = field(default_factory=threading.Event)

    def set_latency(self, latency_ms: int) -> None:
        with self._lock:
            self.latency_ms = latency_ms

    def add_rules(self, rules: list[FailureRule]) -> None:
        with self._lock:
            self._rules.extend(rules)

    def rules(self) -> list[dict[str, Any]]:
        with self._lock:
            return [rule.to_json() for rule in self._rules]

    def take_failure(self, method: str, path: str) -> FailureRule | None:
        """Return the first matching rule and consume one of its uses, atomically, so
        N concurrent requests against ``count: 1`` see exactly one failure."""
        with self._lock:
            for rule in self._rules:
                if rule.matches(method, path):
                    if rule.remaining is not None:
                        rule.remaining -= 1
                        if rule.remaining <= 0:
                            self._rules.remove(rule)
                    return copy.copy(rule)
        return None

    def record(self, entry: dict[str, Any]) -> dict[str, Any]:
        with self._lock:
            self._log.append(entry)
        return entry

    def answered(self, entry: dict[str, Any], *, status: int, duration_ms: float) -> None:
        """Complete a logged request with its status and the time the simulator took."""
        with self._lock:
            entry["status"] = status
            entry["duration_ms"] = duration_ms

    def requests(self) -> list[dict[str, Any]]:
        with self._lock:
            return [dict(entry) for entry in self._log]

    def sleep(self, seconds: float) -> None:
        if seconds > 0:
            self._wake.wait(seconds)

    def wake_sleepers(self) -> None:
        """Release every parked request (used by reset and shutdown)."""
        self._wake.set()
        # A fresh Event for later sleeps; threads already waiting hold the old, set one.
        self._wake = threading.Event()

    def reset(self, latency_ms: int = 0) -> None:
        with self._lock:
            self._rules.clear()
            self._log.clear()
            self.latency_ms = latency_ms
        self.wake_sleepers()


def request_body_for_log() -> Any:
    """The request body as JSON (if it is JSON) or form fields, for the request log.

    Repeated form fields (Twilio's StatusCallbackEvent) are kept as lists."""
    if request.is_json:
        return request.get_json(silent=True)
    if request.form:
        return form_to_dict(request.form)
    raw = request.get_data(cache=True)
    return raw.decode("utf-8", "replace") if raw else None


def form_to_dict(form: Any) -> dict[str, Any]:
    return {key: values[0] if len(values) == 1 else values for key, values in form.lists()}


def basic_auth() -> tuple[str, str] | None:
    """(username, password) from an HTTP Basic Authorization header, else None."""
    header = request.headers.get("Authorization", "")
    scheme, _, encoded = header.partition(" ")
    if scheme.lower() != "basic" or not encoded:
        return None
    try:
        decoded = base64.b64decode(encoded.strip(), validate=True).decode("utf-8")
    except (ValueError, UnicodeDecodeError):
        return None
    username, sep, password = decoded.partition(":")
    return (username, password) if sep else None


def json_object_body() -> dict[str, Any]:
    """The request's JSON object body; an empty body counts as ``{}``.

    Raises ValueError with a human message for anything else."""
    if request.mimetype in ("application/x-www-form-urlencoded", "multipart/form-data"):
        raise ValueError("Expected a JSON object body (Content-Type: application/json).")
    raw = request.get_data(cache=True)
    if not raw.strip():
        return {}
    data = request.get_json(force=True, silent=True)
    if data is None:
        raise ValueError("JSON parse error - request body is not valid JSON")
    if not isinstance(data, dict):
        raise ValueError("Invalid data. Expected a dictionary (a JSON object).")
    return data


def install_control_api(
    app: Flask,
    injector: Injector,
    *,
    error_body: ErrorBodyFactory,
    on_reset: Callable[[], None],
    on_config: Callable[[dict[str, Any]], None] | None = None,
    default_latency_ms: int = 0,
) -> None:
    """Register the request log/latency/failure hook and the shared /_sim endpoints.

    ``on_config`` receives the /_sim/config body for simulator-specific keys; it may
    raise ValueError to reject the body with 400.
    """
    app.extensions["sim_injector"] = injector
    _time_from_wsgi_entry(app)

    @app.errorhandler(SimError)
    def _sim_error(exc: SimError) -> Response:
        return exc.to_response()

    @app.before_request
    def _inject() -> Response | None:
        path = request.path
        if path.startswith(SIM_PREFIX):
            return None  # control endpoints are never delayed, failed or logged
        g.sim_started = request.environ.get(_STARTED, time.perf_counter())
        g.sim_log_entry = injector.record(
            {
                "time": utc_now_iso(),
                "method": request.method,
                "path": path,
                "query": form_to_dict(request.args),
                "body": request_body_for_log(),
                # Booleans only: the log must never hold a secret.
                "had_api_key": bool(
                    request.headers.get("X-API-Key") or request.headers.get("X-Unsafe-API-Key")
                ),
                "had_auth": bool(request.headers.get("Authorization")),
            }
        )
        injector.sleep(injector.latency_ms / 1000.0)
        rule = injector.take_failure(request.method, path)
        if rule is None:
            return None
        if rule.mode == "timeout":
            # Answer normally, but only after the client's read timeout has fired.
            injector.sleep(rule.delay_s)
            return None
        headers: dict[str, str] = {}
        if rule.mode in ("rate_limit", "unavailable") and rule.retry_after is not None:
            headers["Retry-After"] = _format_retry_after(rule.retry_after)
        response = jsonify(error_body(path, rule.status, rule.mode))
        response.status_code = rule.status
        response.headers.update(headers)
        return response

    @app.after_request
    def _time_taken(response: Response) -> Response:
        # How long this simulator took to answer (its configured latency included), so a
        # benchmark can tell the simulator's time from the time of the service under test.
        entry = g.get("sim_log_entry")
        if entry is not None:
            injector.answered(entry, status=response.status_code,
                              duration_ms=round((time.perf_counter() - g.sim_started) * 1000, 3))
        return response

    @app.post("/_sim/config")
    def _config() -> Response:
        body = _control_json()
        if "latency_ms" in body:
            latency = body["latency_ms"]
            if not isinstance(latency, int) or isinstance(latency, bool) or latency < 0:
                raise SimError(400, {"detail": "latency_ms must be a non-negative integer"})
            injector.set_latency(latency)
        if on_config is not None:
            try:
                on_config(body)
            except ValueError as exc:
                raise SimError(400, {"detail": str(exc)}) from exc
        return jsonify({"latency_ms": injector.latency_ms})

    @app.post("/_sim/failures")
    def _failures() -> Response:
        body = _control_json()
        raw_rules = body.get("failures")
        if not isinstance(raw_rules, list):
            raise SimError(400, {"detail": "expected {\"failures\": [...]}"})
        try:
            rules = [FailureRule.from_json(raw) for raw in raw_rules]
        except ValueError as exc:
            raise SimError(400, {"detail": str(exc)}) from exc
        injector.add_rules(rules)
        return jsonify({"failures": injector.rules()})

    @app.get("/_sim/failures")
    def _list_failures() -> Response:
        return jsonify({"failures": injector.rules()})

    @app.get("/_sim/requests")
    def _requests() -> Response:
        return jsonify({"requests": injector.requests()})

    @app.post("/_sim/reset")
    def _reset() -> Response:
        injector.reset(latency_ms=default_latency_ms)
        on_reset()
        return jsonify({"reset": True})


_STARTED = "sim.started"


def _time_from_wsgi_entry(app: Flask) -> None:
    """Start a request's clock when the WSGI server hands it over, so that Flask's own
    dispatch counts as the simulator's time (a benchmark charges everything outside
    `duration_ms` to the service under test)."""
    wsgi_app = app.wsgi_app

    def timed(environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        environ[_STARTED] = time.perf_counter()
        return wsgi_app(environ, start_response)

    app.wsgi_app = timed  # type: ignore[method-assign]


def _control_json() -> dict[str, Any]:
    try:
        return json_object_body()
    except ValueError as exc:
        raise SimError(400, {"detail": str(exc)}) from exc


def _format_retry_after(value: float) -> str:
    # Retry-After is delay-seconds (an integer) in RFC 9110; keep fractions only if given.
    return str(int(value)) if float(value).is_integer() else str(value)


class _AccessLog:
    """WSGI middleware: one "METHOD path status" line per request on stderr (--access-log)."""

    def __init__(self, app: Any) -> None:
        self.app = app

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        def logging_start_response(status: str, headers: Any, exc_info: Any = None) -> Any:
            print(f"{environ.get('REQUEST_METHOD')} {environ.get('PATH_INFO')} {status.split(' ', 1)[0]}",
                  file=sys.stderr, flush=True)
            return start_response(status, headers, exc_info)

        return self.app(environ, logging_start_response)


@dataclass(frozen=True)
class ServerHandle:
    host: str
    port: int

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"


# Enough for the tests' concurrent requests; the inbound benchmark's bursts ask for more.
DEFAULT_THREADS = 64


@contextmanager
def serve_in_thread(
    app: Any, host: str = "127.0.0.1", port: int = 0, *, access_log: bool = False,
    threads: int = DEFAULT_THREADS,
) -> Iterator[ServerHandle]:
    """Serve a WSGI app on a background thread for the duration of the block.

    ``port=0`` picks a free port (read it from the yielded handle). cheroot serves
    HTTP/1.1 with keep-alive, as the real APIs do, so a client's pooled connection is
    reused (werkzeug's development server closes every connection, and a new
    connection, plus a new server thread for it, would be charged to the client in
    benchmarks). ``threads`` requests are served at once; more wait their turn.
    """
    # request_queue_size is the listen backlog (cheroot's default of 5 drops a burst's
    # connections into SYN retries); keep_alive_conn_limit (default 10) would close the
    # idle pooled connections of a busy client.
    server = CherootServer((host, port), _AccessLog(app) if access_log else app, numthreads=threads,
                           max=threads, server_name=f"sim-{port}", shutdown_timeout=2, request_queue_size=1024)
    # None means "no limit" (documented by cheroot), but its stubs declare an int.
    server.keep_alive_conn_limit = None  # type: ignore[assignment]
    server.expiration_interval = 0.05  # how soon its loop notices stop(): tests start and stop many
    server.prepare()  # binds now, so the real port is known before the block starts
    thread = threading.Thread(target=server.serve, name=f"sim-server-{server.bind_addr[1]}", daemon=True)
    thread.start()
    try:
        yield ServerHandle(host=host, port=server.bind_addr[1])
    finally:
        injector = getattr(app, "extensions", {}).get("sim_injector")
        if isinstance(injector, Injector):
            injector.wake_sleepers()  # a request parked in an injected timeout ends now
        server.stop()
        thread.join(timeout=5)
