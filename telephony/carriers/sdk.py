"""Factories for the official carrier SDK clients, pointed at a configurable base URL.

The real hosts are the defaults; tests, benchmarks and the README point them at the
local simulator (``python -m telephony.sim carriers``). Every factory:

- never lets the SDK re-send a request by itself: placing a call is not idempotent, and
  a POST that timed out or failed with a 5xx may still have placed the call. Retrying
  is the caller's decision (Telnyx: with the same ``command_id``);
- refuses empty credentials instead of letting the SDK fall back to process-wide
  environment variables (TWILIO_AUTH_TOKEN, TELNYX_API_KEY, PLIVO_AUTH_TOKEN), which
  would silently bill the wrong tenant;
- keeps secrets out of exception messages (only the parameter name is reported);
- sends through a metered HTTP layer (carriers/http_metrics.py): every request is
  counted and timed by carrier, operation and outcome.

The SDKs themselves are imported the first time a carrier of their kind is used
(``lazy_module``, lazy.py): together they take ~100 MB and several seconds to import
(Telnyx alone ~60 MB and 2+ s), which every web worker, CLI command and campaign worker
paid at start whether or not any agency uses that carrier.
"""
from __future__ import annotations

import functools
import hashlib
import threading
from collections import OrderedDict
from typing import TYPE_CHECKING, Any, Callable

# The real hosts, which are also the settings' defaults: written once, in config.py.
from ..config import DEFAULT_PLIVO_API_BASE, DEFAULT_TELNYX_API_BASE, DEFAULT_TWILIO_API_BASE
from .http_metrics import metered_requests_adapter
from .httpx_metrics import metered_httpx_transport
from .lazy import lazy_module

__all__ = ["lazy_module", "cached_client", "twilio_client", "telnyx_client", "plivo_client"]


if TYPE_CHECKING:
    import plivo
    import telnyx
    from twilio import rest as twilio_rest
    from twilio.http import http_client as twilio_http
else:
    plivo = lazy_module("plivo")
    telnyx = lazy_module("telnyx")
    twilio_http = lazy_module("twilio.http.http_client")
    twilio_rest = lazy_module("twilio.rest")

# Enough pooled connections for concurrent use of one client from a thread pool.
_POOL_SIZE = 32


def _require(name: str, value: str) -> None:
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"{name} must be a non-empty string")


def _clean_base(name: str, api_base: str) -> str:
    _require(name, api_base)
    if not api_base.startswith(("https://", "http://")):
        raise ValueError(f"{name} must be an http(s) URL")
    return api_base.rstrip("/")


# -- one client per account -----------------------------------------------------------------

# A client per agency account and base URL, kept so its pooled HTTP connection is reused:
# a new client per call would open a new TCP and TLS connection for every dial, which
# adds tens of milliseconds (and their variance) between a paced slot and the carrier.
# The SDK clients are safe to share between threads (requests sessions, httpx clients).
_MAX_CACHED_CLIENTS = 256
_clients: "OrderedDict[str, Any]" = OrderedDict()
_clients_lock = threading.Lock()


def cached_client(kind: str, identity: tuple[str, ...], build: Callable[[], Any]) -> Any:
    """The client for (kind, identity), built once; identity holds secrets, so only its
    digest is kept as the key. Least recently used clients are dropped past 256."""
    key = hashlib.sha256("\0".join((kind, *identity)).encode()).hexdigest()
    with _clients_lock:
        client = _clients.get(key)
        if client is not None:
            _clients.move_to_end(key)
            return client
    client = build()  # outside the lock: building may be slow; a racing duplicate is harmless
    with _clients_lock:
        client = _clients.setdefault(key, client)
        _clients.move_to_end(key)
        while len(_clients) > _MAX_CACHED_CLIENTS:
            _clients.popitem(last=False)
    return client


# -- Twilio --------------------------------------------------------------------------------


def twilio_client(
    account_sid: str,
    auth_token: str,
    *,
    api_base: str = DEFAULT_TWILIO_API_BASE,
    timeout: float = 10.0,
) -> twilio_rest.Client:
    """A twilio.rest.Client whose ``api`` domain (``/2010-04-01``, Calls) uses ``api_base``.

    Only the ``api`` domain is redirected; other Twilio products keep their real hosts.
    """
    _require("account_sid", account_sid)
    _require("auth_token", auth_token)
    base = _clean_base("api_base", api_base)
    # max_retries=0 and explicit adapters on both schemes: TwilioHttpClient mounts its
    # adapter for https:// only, and urllib3 must never re-send a call-creating POST.
    http_client = twilio_http.TwilioHttpClient(timeout=timeout, max_retries=0)
    assert http_client.session is not None  # pool_connections=True creates one
    for scheme in ("https://", "http://"):
        http_client.session.mount(scheme, metered_requests_adapter("twilio", pool_maxsize=_POOL_SIZE))
    client = twilio_rest.Client(account_sid, auth_token, http_client=http_client)
    # TWILIO_EDGE / TWILIO_REGION from the environment would rewrite the host
    # (api.<edge>.<region>.twilio.com), mangling a custom base; api_base is authoritative.
    client.edge = None
    client.region = None
    # The SDK hard-codes "https://api.twilio.com" in ApiBase.__init__; the Domain keeps it
    # as an instance attribute, so overriding it here affects this client only.
    client.api.base_url = base
    return client


# -- Telnyx --------------------------------------------------------------------------------


def telnyx_client(
    api_key: str,
    *,
    api_base: str = DEFAULT_TELNYX_API_BASE,
    public_key: str | None = None,
    timeout: float = 10.0,
) -> telnyx.Telnyx:
    """A telnyx.Telnyx client. ``api_base`` must include ``/v2`` (the SDK appends
    ``/calls`` etc. to it). ``public_key`` (base64 Ed25519) verifies webhooks.

    max_retries=0: by default the SDK re-sends 408/409/429/5xx and connection errors up
    to twice, and a dial that may have gone through must never be repeated silently.
    """
    _require("api_key", api_key)
    if public_key is not None:
        _require("public_key", public_key)
    base = _clean_base("api_base", api_base)
    return telnyx.Telnyx(
        api_key=api_key,
        public_key=public_key,
        base_url=base,
        timeout=timeout,
        max_retries=0,
        # The SDK's own defaults (redirects, timeouts) with a transport that counts requests.
        http_client=telnyx.DefaultHttpxClient(
            transport=metered_httpx_transport("telnyx", max_connections=_POOL_SIZE)),
    )


# -- Plivo ---------------------------------------------------------------------------------


@functools.cache
def _pinned_plivo_client_class() -> type[plivo.RestClient]:
    """The class below, defined once the Plivo SDK it extends is first needed."""

    class _PinnedPlivoClient(plivo.RestClient):
        """plivo.RestClient that talks to one base URL and never re-sends a request.

        Why a subclass: in plivo 4.63 ``Client.request()`` reassigns ``self.base_uri`` from
        module constants (PLIVO_API_BASE_URI, API_VOICE_BASE_URI, API_VOICE_BASE_URI_FALLBACK_1/2)
        on every request, so setting ``client.base_uri`` is overwritten at once, and patching
        the module constants would redirect every Plivo client in the process, across threads.
        And for "voice" requests (calls.create, hangup, ...) a 5xx makes it call itself again
        against the "fallback" URIs, up to three POSTs for one calls.create (duplicate calls).

        (a) ``base_uri`` is a read-only property here: the parent's assignments are ignored,
            and every URL it builds (create_request / create_multipart_request read
            ``self.base_uri``) starts with this client's own base. No globals change, and
            there is no window where another thread could observe a different value.
        (b) ``request()`` drops the ``is_voice_request`` flag before delegating. Voice and
            non-voice requests differ only in which base URI constant is chosen (overridden
            by (a)) and in the 5xx fallback loop, so without the flag the parent sends the
            request exactly once and maps a 5xx to PlivoServerError / PlivoRestError.
        Both hooks are small and checked by tests/test_sim_carriers.py against the installed
        SDK, so an SDK upgrade that changes this internal behaviour fails loudly.
        Not covered: Call Insights (stats.plivo.com) and Lookup requests, which build
        absolute URLs of their own; this service does not use them.
        """

        def __init__(self, auth_id: str, auth_token: str, *, api_base: str, timeout: float) -> None:
            # Set before the parent's __init__, whose own base_uri assignment is ignored.
            self._pinned_base_uri = f"{api_base}/v1/Account"
            super().__init__(auth_id=auth_id, auth_token=auth_token, timeout=timeout)
            # Plain requests sessions retry nothing on their own (HTTPAdapter max_retries=0),
            # but mount explicit adapters so that stays true and the pool fits concurrency.
            for session in (self.session, self.multipart_session):
                for scheme in ("https://", "http://"):
                    session.mount(scheme, metered_requests_adapter("plivo", pool_maxsize=_POOL_SIZE))

        @property
        def base_uri(self) -> str:
            return self._pinned_base_uri

        @base_uri.setter
        def base_uri(self, _value: str) -> None:
            # The parent reassigns module-level URIs on every request; ignore them.
            return None

        def request(self, method: str, path: Any = None, data: Any = None, *args: Any, **kwargs: Any) -> Any:
            kwargs.pop("is_voice_request", None)  # disables the 5xx "fallback" re-send loop
            return super().request(method, path, data, *args, **kwargs)

    return _PinnedPlivoClient


def plivo_client(
    auth_id: str,
    auth_token: str,
    *,
    api_base: str = DEFAULT_PLIVO_API_BASE,
    timeout: float = 10.0,
) -> plivo.RestClient:
    """A plivo.RestClient sending every request to ``api_base`` (host only, no
    ``/v1``) exactly once. See ``_PinnedPlivoClient`` for why this needs a subclass."""
    _require("auth_id", auth_id)
    _require("auth_token", auth_token)
    base = _clean_base("api_base", api_base)
    return _pinned_plivo_client_class()(auth_id, auth_token, api_base=base, timeout=timeout)
