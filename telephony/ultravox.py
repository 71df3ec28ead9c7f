"""Ultravox REST API client (https://api.ultravox.ai/api/...).

One `UltravoxClient` per API key (one per agency); all clients share a single
pooled `requests.Session`, so connections to Ultravox are reused across
agencies. The key travels only in each request's `X-API-Key` header.

Every HTTP call is wrapped in `track_upstream("ultravox", <operation>)` and
failures surface as typed `UltravoxError` subclasses (`telephony.ultravox_errors`)
whose `detail` is Ultravox's own message (safe to show to users: the API key is
redacted).
"""
from __future__ import annotations

import email.utils
import functools
import json
import logging
import math
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from http.cookiejar import DefaultCookiePolicy
from typing import Any, Union
from urllib.parse import parse_qs, quote, urlencode, urljoin, urlsplit

import requests
from requests.adapters import HTTPAdapter
from urllib3.exceptions import ReadTimeoutError

from telephony.metrics import UpstreamCall, track_upstream
from telephony.ultravox_errors import (
    UltravoxAuthError,
    UltravoxClientError,
    UltravoxError,
    UltravoxNotFound,
    UltravoxRateLimited,
    UltravoxServerError,
    UltravoxTimeout,
    UltravoxUnavailable,
)

log = logging.getLogger(__name__)

DEFAULT_BASE_URL = "https://api.ultravox.ai"
DEFAULT_TIMEOUT: tuple[float, float] = (3.05, 10.0)
API_KEY_HEADER = "X-API-Key"
UPSTREAM = "ultravox"
MAX_MESSAGE_PAGES = 1000  # cursor-loop guard: 1000 pages x 100 messages is far beyond any real call
MAX_DETAIL_CHARS = 500
MAX_ERROR_BODY_BYTES = 64 * 1024  # never read an unbounded error body (the recording endpoint streams)
REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
REDACTED = "[REDACTED]"

TimeoutArg = Union[float, tuple[float, float]]


# --------------------------------------------------------------------------- session


_shared_session: requests.Session | None = None
_shared_session_lock = threading.Lock()


def _new_session() -> requests.Session:
    session = requests.Session()
    # max_retries=0: retrying a POST /api/calls could create a second call; callers decide.
    adapter = HTTPAdapter(pool_connections=10, pool_maxsize=100, max_retries=0)
    session.mount("https://", adapter)
    session.mount("http://", adapter)
    # The session is shared by every agency's client: never let a cookie set in
    # reply to one API key ride along with another agency's requests.
    session.cookies.set_policy(DefaultCookiePolicy(allowed_domains=[]))
    # Proxies are read once here, not re-read from the environment (and .netrc)
    # on every request: that lookup was a measurable part of an inbound webhook.
    session.proxies.update(requests.utils.get_environ_proxies(""))
    session.trust_env = False
    return session


def shared_session() -> requests.Session:
    """The process-wide pooled session (created on first use, thread-safe)."""
    global _shared_session
    if _shared_session is None:
        with _shared_session_lock:
            if _shared_session is None:
                _shared_session = _new_session()
    return _shared_session


def close_shared_session() -> None:
    """Close the pooled connections (process shutdown, tests). A later call
    to `shared_session()` builds a fresh one."""
    global _shared_session
    with _shared_session_lock:
        if _shared_session is not None:
            _shared_session.close()
            _shared_session = None


# --------------------------------------------------------------------------- helpers


def parse_retry_after(value: str | None, *, now: datetime | None = None) -> float | None:
    """Seconds to wait from a Retry-After header: delta-seconds or an HTTP-date.
    None when absent or unparseable; a date in the past gives 0."""
    if value is None or not value.strip():
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        pass
    else:
        return seconds if math.isfinite(seconds) and seconds >= 0 else None
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:  # RFC 9110 dates are GMT
        when = when.replace(tzinfo=timezone.utc)
    now = now or datetime.now(timezone.utc)
    return max(0.0, (when - now).total_seconds())


def _outcome(status: int) -> str:
    """Metric outcome label for an HTTP status that is not a success."""
    if status in (429, 503):
        return "rate_limited"
    if 400 <= status < 500:
        return "client_error"
    return "server_error"


# What a byte-range answer needs besides its body, passed on as Ultravox sent them.
RANGE_HEADERS = ("Content-Range", "Accept-Ranges")


@dataclass
class Recording:
    """Result of `get_recording`: exactly one of `redirect_url` (a short-lived
    signed storage URL; fetch it WITHOUT the API key) or `response` (the streamed
    audio the caller must iterate and close: status 200, 206 for a byte range, or
    416 for a range outside the file), with the headers that describe its body."""

    redirect_url: str | None = None
    response: requests.Response | None = None
    content_type: str | None = None
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)


# --------------------------------------------------------------------------- client


class UltravoxClient:
    """Thin, typed wrapper over the Ultravox endpoints this service uses."""

    def __init__(self, api_key: str, *, base_url: str = DEFAULT_BASE_URL,
                 timeout: tuple[float, float] = DEFAULT_TIMEOUT,
                 session: requests.Session | None = None) -> None:
        # requests echoes an invalid header value in its exception message, so
        # reject a malformed key here, without repeating it.
        if not api_key or not all(33 <= ord(ch) < 127 for ch in api_key):
            raise ValueError("Ultravox API key is empty or contains whitespace/non-ASCII characters")
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError(f"Ultravox base URL must be an http(s) URL, got {base_url!r}")
        self._api_key = api_key
        self.base_url = base_url.rstrip("/")
        self._prepared_base_url = _prepared_base_url(self.base_url)
        self.timeout = timeout
        # A passed-in session belongs to the caller; otherwise use the shared pool.
        self._session = session if session is not None else shared_session()

    @classmethod
    def from_config(cls, api_key: str, config: Any) -> "UltravoxClient":
        """Build from `telephony.config.Config` (ultravox_api_base, upstream_timeout)."""
        return cls(api_key, base_url=config.ultravox_api_base, timeout=config.upstream_timeout)

    def __repr__(self) -> str:  # no key, not even a prefix
        return f"UltravoxClient(base_url={self.base_url!r})"

    def __enter__(self) -> "UltravoxClient":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Nothing to release: the session is either the process-wide pool
        (see `close_shared_session`) or the caller's own. Kept so callers can
        treat the client as a resource."""

    # ------------------------------------------------------------- endpoints

    def create_call(self, body: dict, *, prior_call_id: str | None = None,
                    timeout: TimeoutArg | None = None) -> dict:
        """POST /api/calls (StartCallRequest) -> Call (201)."""
        params = {"priorCallId": prior_call_id} if prior_call_id else None
        return self._json("create_call", "POST", "/api/calls", params=params, body=body, timeout=timeout)

    def create_agent_call(self, agent_id: str, body: dict, *, timeout: TimeoutArg | None = None) -> dict:
        """POST /api/agents/{agent_id}/calls (StartAgentCallRequest, e.g. templateContext) -> Call (201)."""
        path = f"/api/agents/{_segment(agent_id)}/calls"
        return self._json("create_agent_call", "POST", path, body=body, timeout=timeout)

    def get_call(self, call_id: str) -> dict:
        """GET /api/calls/{call_id} -> Call."""
        return self._json("get_call", "GET", f"/api/calls/{_segment(call_id)}")

    def list_messages(self, call_id: str, *, page_size: int = 100) -> list[dict]:
        """Every message of the call, following all cursor pages in order.

        `next` is a full URL; only its `cursor` value is used and the request
        goes to our own base URL, so a foreign host in `next` never receives
        the API key."""
        path = f"/api/calls/{_segment(call_id)}/messages"
        messages: list[dict] = []
        seen_cursors: set[str] = set()
        cursor: str | None = None
        for _ in range(MAX_MESSAGE_PAGES):
            params: dict[str, Any] = {"pageSize": page_size}
            if cursor is not None:
                params["cursor"] = cursor
            page = self._json("list_messages", "GET", path, params=params)
            results = page.get("results")
            if not isinstance(results, list):
                raise UltravoxServerError("list_messages", "page without a results list")
            messages.extend(results)
            next_url = page.get("next")
            if not next_url:
                return messages
            cursor = _cursor_from(next_url)
            if cursor is None:
                raise UltravoxServerError("list_messages", "next page URL carries no cursor")
            if cursor in seen_cursors:
                raise UltravoxServerError("list_messages", "pagination cursor repeated (loop)")
            seen_cursors.add(cursor)
        raise UltravoxServerError("list_messages", f"more than {MAX_MESSAGE_PAGES} pages")

    def get_recording(self, call_id: str, byte_range: str | None = None) -> Recording:
        """GET /api/calls/{call_id}/recording: a redirect to storage or the audio itself;
        `byte_range` (a Range header value) asks for part of the audio (an audio player
        seeking), which the answer may or may not honour (206 or 200).

        Redirects are not followed: requests would re-send X-API-Key to the
        storage host (it strips only Authorization)."""
        operation = "get_recording"
        path = f"/api/calls/{_segment(call_id)}/recording"
        with track_upstream(UPSTREAM, operation) as tracked:
            # Accept */*: a JSON-only Accept could make the server's content
            # negotiation refuse the audio/wav answer (DRF answers 406).
            response = self._send(tracked, operation, "GET", path, stream=True, accept="*/*",
                                  headers={"Range": byte_range} if byte_range else None,
                                  also_return=(REDIRECT_STATUSES | {416}) if byte_range else REDIRECT_STATUSES)
            status = response.status_code
            if status in REDIRECT_STATUSES:
                location = response.headers.get("Location")
                response.close()
                if location:
                    return Recording(redirect_url=urljoin(response.url, location))
                tracked.outcome = "server_error"
                raise UltravoxServerError(operation, "redirect without a Location header", status=status)
            if status in (200, 206, 416):
                headers = {name: response.headers[name] for name in RANGE_HEADERS if name in response.headers}
                # The body is passed on as requests decodes it, so its length is known
                # only if nothing is decoded.
                if "Content-Length" in response.headers and "Content-Encoding" not in response.headers:
                    headers["Content-Length"] = response.headers["Content-Length"]
                return Recording(response=response, content_type=response.headers.get("Content-Type"),
                                 status=status, headers=headers)
            response.close()
            tracked.outcome = "server_error"
            raise UltravoxServerError(operation, f"unexpected status {status}", status=status)

    def send_data_message(self, call_id: str, message: dict) -> None:
        """POST /api/calls/{call_id}/send_data_message (204). 422 = call not active."""
        self._send_data_message("send_data_message", call_id, message)

    def hang_up(self, call_id: str, message: str | None = None) -> None:
        """End a live call via a `hang_up` data message (optionally spoken first)."""
        payload: dict[str, Any] = {"type": "hang_up"}
        if message is not None:
            payload["message"] = message
        self._send_data_message("hang_up", call_id, payload)

    # ------------------------------------------------------------- plumbing

    def _send_data_message(self, operation: str, call_id: str, message: dict) -> None:
        if not isinstance(message.get("type"), str):
            raise ValueError("a data message needs a string 'type'")
        path = f"/api/calls/{_segment(call_id)}/send_data_message"
        with track_upstream(UPSTREAM, operation) as tracked:
            self._send(tracked, operation, "POST", path, body=message).close()  # 204, no body

    def _json(self, operation: str, method: str, path: str, *, params: dict | None = None,
              body: dict | None = None, timeout: TimeoutArg | None = None) -> dict:
        """A request whose 2xx answer must be a JSON object."""
        with track_upstream(UPSTREAM, operation) as tracked:
            response = self._send(tracked, operation, method, path, params=params, body=body, timeout=timeout)
            try:
                data = response.json()
            except ValueError:
                data = None
            if not isinstance(data, dict):
                tracked.outcome = "server_error"
                raise UltravoxServerError(operation, "response is not a JSON object",
                                          status=response.status_code)
            return data

    def _send(self, tracked: UpstreamCall, operation: str, method: str, path: str, *,
              params: dict | None = None, body: dict | None = None,
              timeout: TimeoutArg | None = None, stream: bool = False,
              accept: str = "application/json", headers: dict[str, str] | None = None,
              also_return: frozenset[int] = frozenset()) -> requests.Response:
        """One HTTP call inside the caller's `track_upstream` block: sets the
        outcome, logs, maps errors. Returns a 2xx response (or one of `also_return`,
        e.g. get_recording's redirects); raises a typed error otherwise.

        Typed errors are raised outside the `except` block on purpose: a
        requests exception holds the PreparedRequest (and so the X-API-Key
        header), and raising inside the handler would chain it as __context__."""
        effective_timeout = self.timeout if timeout is None else timeout
        session = self._session
        failure: UltravoxError | None = None
        started = time.perf_counter()
        try:
            request = self._prepare(method, path, params=params, body=body, accept=accept, headers=headers)
            assert request.url is not None  # _prepare always sets it
            # The session's adapter (its connection pool) sends the prepared request
            # directly: Session.request would merge settings, cookies and hooks this client
            # does not use, and re-prepare the URL, at a cost comparable to the request itself
            # on a fast upstream (an inbound webhook waits for it). Redirects are never
            # followed: requests would re-send X-API-Key to the new host.
            response = session.get_adapter(request.url).send(
                request, stream=stream, timeout=effective_timeout, verify=session.verify, cert=session.cert,
                proxies=session.proxies)
            if not stream:
                response.content  # read the body here, so a broken one fails as a transport error
        except requests.RequestException as exc:
            tracked.outcome, failure = self._transport_failure(operation, exc)
        elapsed_ms = (time.perf_counter() - started) * 1000
        if failure is not None:
            log.warning("ultravox %s failed: %s after %.0f ms", operation, tracked.outcome, elapsed_ms)
            raise failure

        status = response.status_code
        if 200 <= status < 300 or status in also_return:
            log.debug("ultravox %s -> %s in %.0f ms", operation, status, elapsed_ms)
            return response
        tracked.outcome = _outcome(status)
        log.warning("ultravox %s -> %s in %.0f ms", operation, status, elapsed_ms)
        raise self._http_failure(operation, response)

    def _prepare(self, method: str, path: str, *, params: dict | None, body: dict | None,
                 accept: str, headers: dict[str, str] | None = None) -> requests.PreparedRequest:
        request = requests.PreparedRequest()
        request.prepare_method(method)
        # The base URL was prepared (checked, IDNA-encoded) once; paths are built from
        # quoted segments (`_segment`) and the query is encoded here.
        request.url = self._prepared_base_url + path + (f"?{urlencode(params, doseq=True)}" if params else "")
        request.prepare_headers({**(headers or {}), API_KEY_HEADER: self._api_key, "Accept": accept})
        request.prepare_body(data=None, files=None, json=body)
        return request

    def _transport_failure(self, operation: str, exc: requests.RequestException) -> tuple[str, UltravoxError]:
        # The message names host/URL only (the key is a header), but redact anyway.
        text = self._redact(f"{type(exc).__name__}: {exc}")[:MAX_DETAIL_CHARS]
        # A read timeout while requests downloads the body surfaces as a
        # ConnectionError wrapping urllib3's ReadTimeoutError.
        wrapped_read_timeout = bool(exc.args) and isinstance(exc.args[0], ReadTimeoutError)
        if isinstance(exc, requests.Timeout) or wrapped_read_timeout:
            return "timeout", UltravoxTimeout(operation, f"timed out ({text})")
        return "connection_error", UltravoxUnavailable(operation, f"cannot reach Ultravox ({text})")

    def _http_failure(self, operation: str, response: requests.Response) -> UltravoxError:
        status = response.status_code
        try:
            detail = self._detail(response)
        finally:
            response.close()
        if status in (429, 503):
            return UltravoxRateLimited(operation, detail, status=status,
                                       retry_after=parse_retry_after(response.headers.get("Retry-After")))
        if status in (401, 403):
            return UltravoxAuthError(operation, detail, status=status)
        if status == 404:
            return UltravoxNotFound(operation, detail, status=status)
        if 400 <= status < 500:
            return UltravoxClientError(operation, detail, status=status)
        return UltravoxServerError(operation, detail, status=status)

    def _detail(self, response: requests.Response) -> str:
        """Ultravox's own error text: the DRF `{"detail": ...}` string when
        present, else the (bounded) raw body. The key is redacted because some
        upstream errors echo request data back."""
        raw = b""
        try:
            for chunk in response.iter_content(chunk_size=8192):
                raw += chunk
                if len(raw) >= MAX_ERROR_BODY_BYTES:
                    break
        except requests.RequestException:
            pass  # a body we cannot read is not worth masking the status code
        try:
            text = raw[:MAX_ERROR_BODY_BYTES].decode(response.encoding or "utf-8", errors="replace")
        except LookupError:  # a charset name Python does not know
            text = raw[:MAX_ERROR_BODY_BYTES].decode("utf-8", errors="replace")
        text = text.strip()
        try:
            data = json.loads(text)
        except ValueError:
            data = None
        if isinstance(data, dict) and isinstance(data.get("detail"), str):
            text = data["detail"]
        detail = self._redact(text)
        if len(detail) > MAX_DETAIL_CHARS:
            detail = detail[:MAX_DETAIL_CHARS] + "..."
        return detail or f"HTTP {response.status_code} without a body"

    def _redact(self, text: str) -> str:
        return text.replace(self._api_key, REDACTED)


@functools.lru_cache(maxsize=16)
def _prepared_base_url(base_url: str) -> str:
    """The base URL as requests prepares it (validated, host IDNA-encoded, path quoted),
    without the trailing slash: clients are built per request, the base URL is not."""
    request = requests.PreparedRequest()
    request.prepare_url(base_url, None)
    assert request.url is not None  # prepare_url sets it (or raises)
    return request.url.rstrip("/")


def _segment(identifier: str) -> str:
    """An id as one URL path segment (ids come from webhooks and users)."""
    if not identifier:
        raise ValueError("an Ultravox id must not be empty")
    return quote(identifier, safe="")


def _cursor_from(next_url: str) -> str | None:
    values = parse_qs(urlsplit(next_url).query).get("cursor")
    return values[0] if values else None
