"""Event webhooks to agencies: the outbox and its delivery.

`emit_event` writes one `event_deliveries` row per enabled endpoint that
subscribes to the event, plus one job per row, in the caller's transaction:
the event exists exactly when the state change that caused it is committed,
and it survives restarts because both live in the database.

The worker sends each delivery (job `event.deliver`), signed the Standard
Webhooks way:

    webhook-id:        the event id (the same on every attempt and endpoint)
    webhook-timestamp: unix seconds of this attempt
    webhook-signature: "v1,<base64 HMAC-SHA256(key, f'{id}.{timestamp}.{body}')>"
                       (one per active secret, space-separated, during rotation)

where key is the base64-decoded part of the endpoint secret after "whsec_".
A 2xx answer delivers it; anything else (3xx included: redirects are never
followed), a timeout or a connection error is retried after RETRY_DELAYS;
410 Gone stops retrying and disables the endpoint (the receiver said it is
gone for good; the agency can re-enable it). Delivery is at-least-once:
receivers deduplicate on webhook-id.

Unless the local-development opt-out (EVENT_ENDPOINTS_ALLOW_PRIVATE) is set, a
delivery goes only to https:// hosts that resolve only to public addresses, and
connects to the addresses it checked (no second lookup). The errors the agency
reads are generic: they never name an address or a port.
"""
from __future__ import annotations

import base64
import enum
import hashlib
import hmac
import ipaddress
import json
import logging
import socket
import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

import requests
from requests.adapters import HTTPAdapter
from sqlalchemy import select
from sqlalchemy.orm import Session
from urllib3.connection import HTTPConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
from urllib3.exceptions import ConnectTimeoutError, NewConnectionError
from urllib3.util import connection as urllib3_connection

from ..capped_http import WatchedHTTPSConnection, capped_post, watch_socket
from ..credentials import CredentialStore
from ..jobs import JobContext, RetryLater, enqueue
from ..metrics import EVENT_DELIVERIES, EVENT_DELIVERY_DURATION
from ..models import Call, EventDelivery, EventEndpoint, utcnow
from .idempotency import first_time

log = logging.getLogger(__name__)

# call.answered_by: the answering-machine verdict of an outbound call; call.transferred: a transfer's outcome.
EVENT_TYPES = ("call.started", "call.answered", "call.ended", "call.failed", "campaign.completed",
               "call.answered_by", "call.transferred")
CALL_TERMINAL_EVENTS = frozenset({"call.ended", "call.failed"})
DELIVER_JOB = "event.deliver"
# Wait before attempt n+1 after attempt n failed: 8 attempts spread over about 7.7 hours.
RETRY_DELAYS = (30, 120, 600, 1800, 3600, 7200, 14400)
MAX_ATTEMPTS = len(RETRY_DELAYS) + 1
TIMEOUT = (3.0, 10.0)  # connect, read: each socket operation
# The whole attempt, however slowly the receiver answers (one byte at a time
# included): a hanging endpoint holds a worker's job slot at most this long
# (a connect still under way is bounded by its own timeout, per address).
TOTAL_TIMEOUT = 10.0
SECRET_PREFIX = "whsec_"
# After a rotation the previous secret keeps signing this long, so a receiver
# can switch secrets without rejecting anything in between.
PREVIOUS_SECRET_GRACE = timedelta(hours=24)
EMITTED_PROVIDER = "telephony.events"
USER_AGENT = "telephony-webhooks/1"
# Overrides any proxy from the environment (None removes a setting in requests).
_NO_PROXIES: dict[str, Any] = {"http": None, "https": None, "all": None}


# -- emitting ------------------------------------------------------------------------

def emit_event(session: Session, agency_id: uuid.UUID, event_type: str, data: dict[str, Any]) -> None:
    """Queue `event_type` for every enabled endpoint of the agency that subscribes to it.

    Call it inside the transaction that makes the change; nothing is sent
    unless that transaction commits. `data` must be JSON-serialisable (UUIDs,
    datetimes and enums are converted)."""
    if event_type not in EVENT_TYPES:
        raise ValueError(f"unknown event type {event_type!r}")
    endpoints = [endpoint for endpoint in session.scalars(
        select(EventEndpoint).where(EventEndpoint.agency_id == agency_id, EventEndpoint.enabled.is_(True))
        .order_by(EventEndpoint.created_at, EventEndpoint.id)) if event_type in endpoint.events]
    if not endpoints:
        return
    event_id = uuid.uuid4()
    now = utcnow()
    # Serialised once: every attempt to every endpoint sends (and signs) the same bytes.
    body = json.dumps({"id": str(event_id), "type": event_type, "timestamp": now.isoformat(), "data": data},
                      separators=(",", ":"), default=_json_default)
    for endpoint in endpoints:
        delivery = EventDelivery(id=uuid.uuid4(), agency_id=agency_id, endpoint_id=endpoint.id, event_id=event_id,
                                 event_type=event_type, payload=body, status="pending", attempts=0,
                                 next_attempt_at=now, created_at=now)
        session.add(delivery)
        enqueue(session, DELIVER_JOB, {"delivery_id": str(delivery.id)}, agency_id=agency_id)
    log.info("event %s queued for %d endpoint(s)", event_type, len(endpoints),
             extra={"event_id": str(event_id), "event_type": event_type})


def emit_call_event(session: Session, call: Call, event_type: str) -> bool:
    """Emit a call event at most once per call, whoever reports it (Ultravox
    webhooks, carrier callbacks, retries). call.ended and call.failed share one
    slot: every call gets exactly one terminal event. True if emitted now."""
    slot = "terminal" if event_type in CALL_TERMINAL_EVENTS else event_type
    if not first_time(session, EMITTED_PROVIDER, f"{call.id}:{slot}", call.agency_id):
        return False
    emit_event(session, call.agency_id, event_type, call_event_data(call))
    return True


def call_event_data(call: Call) -> dict[str, Any]:
    """The `data` of call.* events: the call as the history API shows it, minus the transcript."""
    return {
        "call_id": call.id, "ultravox_call_id": call.ultravox_call_id, "agent_id": call.agent_id,
        "source": call.source, "direction": call.direction, "status": call.status,
        "from_number": call.from_number, "to_number": call.to_number, "end_reason": call.end_reason,
        "created_at": call.created_at, "joined_at": call.joined_at, "ended_at": call.ended_at,
        "duration_seconds": call.duration_seconds, "billed_duration_seconds": call.billed_duration_seconds,
        "metadata": call.metadata_ or {},
        "answered_by": call.answered_by, "answered_by_detail": call.answered_by_detail,
        "machine_action": call.machine_action,
    }


def _json_default(value: Any) -> Any:
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, enum.Enum):
        return value.value
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


# -- secrets and signatures ------------------------------------------------------------

def sealed_purpose(endpoint_id: uuid.UUID) -> str:
    """What an endpoint's secret is sealed for (binds the ciphertext to this endpoint)."""
    return f"event_endpoint:{endpoint_id}"


def active_secrets(store: CredentialStore, endpoint: EventEndpoint, now: datetime) -> list[str]:
    """The secrets that sign deliveries now: the current one, and the previous
    one while its rotation grace period lasts (unsealed with `store`)."""
    purpose = sealed_purpose(endpoint.id)
    found = [store.unseal(endpoint.agency_id, purpose, endpoint.secret_ciphertext)]
    if (endpoint.previous_secret_ciphertext and endpoint.previous_secret_expires_at
            and endpoint.previous_secret_expires_at > now):
        found.append(store.unseal(endpoint.agency_id, purpose, endpoint.previous_secret_ciphertext))
    return found


def sign(secret: str, webhook_id: str, timestamp: int, body: str) -> str:
    """One Standard Webhooks signature: "v1,<base64 HMAC-SHA256>"."""
    key = base64.b64decode(secret.removeprefix(SECRET_PREFIX))
    digest = hmac.new(key, f"{webhook_id}.{timestamp}.{body}".encode(), hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


# -- destinations ------------------------------------------------------------------------
#
# The SSRF guard (on unless the deployment sets the local-development opt-out): an
# endpoint must be https:// and its host must resolve only to public addresses. The host
# is resolved once per delivery and the connection goes to exactly that address (see
# _PinnedAdapter), so a name that answers a public address to the check and an internal
# one to the connection (DNS rebinding) gains nothing.

REFUSED_NOT_PUBLIC = "refused: the host does not resolve to a public address"

# Not public: the IANA special-purpose IPv4 blocks, multicast and the reserved 240/4.
_NON_PUBLIC_V4 = tuple(ipaddress.IPv4Network(block) for block in (
    "0.0.0.0/8", "10.0.0.0/8", "100.64.0.0/10", "127.0.0.0/8", "169.254.0.0/16", "172.16.0.0/12",
    "192.0.0.0/24", "192.0.2.0/24", "192.88.99.0/24", "192.168.0.0/16", "198.18.0.0/15", "198.51.100.0/24",
    "203.0.113.0/24", "224.0.0.0/4", "240.0.0.0/4"))
_GLOBAL_UNICAST_V6 = ipaddress.IPv6Network("2000::/3")
_NAT64_V6 = ipaddress.IPv6Network("64:ff9b::/96")  # well-known NAT64 prefix: the last 32 bits are IPv4
_SIX_TO_FOUR_V6 = ipaddress.IPv6Network("2002::/16")  # 6to4: bits 16-48 are IPv4
# Inside 2000::/3 but not a public host: IETF protocol assignments (Teredo 2001::/32 among
# them, whose embedded addresses we do not trust), and the documentation ranges.
_NON_PUBLIC_V6 = tuple(ipaddress.IPv6Network(block) for block in ("2001::/23", "2001:db8::/32", "3fff::/20"))


def is_public_address(address: str) -> bool:
    """True only for a globally routable unicast address.

    IPv6 must be global unicast (2000::/3: this leaves out loopback, unspecified, the
    IPv4-mapped and IPv4-compatible forms, link-local, site-local, unique-local,
    multicast and the local-use NAT64 prefix 64:ff9b:1::/48), except the well-known
    NAT64 prefix 64:ff9b::/96, judged by the IPv4 address it embeds; 6to4 is judged by
    its embedded IPv4 too."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv4Address):
        return not any(ip in block for block in _NON_PUBLIC_V4)
    if ip.scope_id:
        return False
    if ip in _NAT64_V6:
        return is_public_address(str(ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)))
    if ip not in _GLOBAL_UNICAST_V6 or any(ip in block for block in _NON_PUBLIC_V6):
        return False
    if ip in _SIX_TO_FOUR_V6:
        return ip.sixtofour is not None and is_public_address(str(ip.sixtofour))
    return True


def url_problem(url: str, *, allow_private: bool) -> str | None:
    """Why this endpoint URL is refused, or None. Checked when an endpoint is saved and
    again before every send, where the host is also resolved (see resolve_destination).

    `allow_private` is the local-development opt-out: http:// and any host."""
    try:
        parts = urlsplit(url)
        _ = parts.port  # a malformed port raises here
    except ValueError:
        return "is not a valid URL"
    allowed = ("http", "https") if allow_private else ("https",)
    if parts.scheme not in allowed or not parts.hostname:
        return "must be an http:// or https:// URL" if allow_private else "must be an https:// URL"
    if parts.username is not None or parts.password is not None:
        return "must not contain credentials"
    if parts.fragment:
        return "must not contain a fragment"
    if allow_private:
        return None
    host = parts.hostname.rstrip(".")
    if host == "localhost" or host.endswith(".localhost") or "%" in host:
        return "must point to a public host"
    try:
        ipaddress.ip_address(host)
    except ValueError:
        # A name. One whose last label is a number is an IPv4 address in another spelling
        # (2130706433, 0x7f000001, 017700000001, 127.1, 0x7f.1): what it means depends on
        # who parses it, so only the dotted-decimal form is accepted.
        last = host.rsplit(".", 1)[-1]
        if last.isdigit() or (last.startswith("0x") and all(c in "0123456789abcdef" for c in last[2:])):
            return "must write an IP address in dotted-decimal form"
        return None
    return None if is_public_address(host) else "must point to a public host"


def resolve_destination(url: str, *, allow_private: bool) -> tuple[str, ...] | None:
    """The addresses a delivery to `url` may connect to (in the resolver's order), or None
    when refused: the host resolves to nothing, or (unless `allow_private`) to any
    non-public address. Both refusals read the same to the agency, so whether an
    internal name exists does not show."""
    parts = urlsplit(url)
    host = (parts.hostname or "").rstrip(".")
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP)
    except (OSError, UnicodeError):
        return None
    addresses = tuple(dict.fromkeys(info[4][0] for info in infos
                                    if info[0] in (socket.AF_INET, socket.AF_INET6) and isinstance(info[4][0], str)))
    if not addresses:
        return None
    if not allow_private and not all(is_public_address(address) for address in addresses):
        return None
    return addresses


class _PinnedConnection(HTTPConnection):
    """Connects to the first of `pinned_addresses` that answers, whatever the host name
    resolves to by now; no other address. The host name stays the connection's `host`:
    the Host header, SNI and the certificate check."""

    pinned_addresses: tuple[str, ...] = ()

    def _new_conn(self) -> socket.socket:
        error: OSError = OSError("no address")
        for address in self.pinned_addresses:
            try:
                sock = urllib3_connection.create_connection(
                    (address, self.port), self.timeout, source_address=self.source_address,
                    socket_options=self.socket_options)
            except OSError as exc:
                error = exc
                continue
            watch_socket(sock)  # under the delivery's total cap
            return sock
        if isinstance(error, TimeoutError):
            raise ConnectTimeoutError(self, "connect timed out") from error
        raise NewConnectionError(self, f"connection failed: {error}") from error


class _PinnedAdapter(HTTPAdapter):
    """A transport adapter whose every connection goes to pre-resolved addresses."""

    def __init__(self, addresses: tuple[str, ...]) -> None:
        self.pinned_addresses = addresses  # before super().__init__, which builds the pool manager
        super().__init__(max_retries=0)

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        pinned = {"pinned_addresses": self.pinned_addresses}
        http = type("PinnedHTTPConnection", (_PinnedConnection,), pinned)
        https = type("PinnedHTTPSConnection", (_PinnedConnection, WatchedHTTPSConnection), pinned)
        self.poolmanager.pool_classes_by_scheme = {
            "http": type("PinnedHTTPConnectionPool", (HTTPConnectionPool,), {"ConnectionCls": http}),
            "https": type("PinnedHTTPSConnectionPool", (HTTPSConnectionPool,), {"ConnectionCls": https}),
        }


# -- delivering ---------------------------------------------------------------------------

@dataclass(frozen=True)
class _Prepared:
    url: str
    body: str
    webhook_id: str
    secrets: list[str]


@dataclass(frozen=True)
class _Attempt:
    status_code: int | None
    error: str | None

    @property
    def ok(self) -> bool:
        return self.status_code is not None and 200 <= self.status_code < 300


def deliver(context: JobContext, payload: dict[str, Any]) -> None:
    """The DELIVER_JOB handler: send one delivery once; schedule the next attempt with RetryLater."""
    delivery_id = uuid.UUID(payload["delivery_id"])
    with context.db.session() as session:
        prepared = _prepare(session, context.credentials, delivery_id)
    if prepared is None:
        return
    # No database connection is held while the receiver takes its time.
    started = time.perf_counter()
    attempt = _send(prepared, allow_private=context.config.event_endpoints_allow_private)
    took = time.perf_counter() - started
    with context.db.session() as session:
        delay = _record(session, delivery_id, attempt)
    outcome = "delivered" if attempt.ok else "retry" if delay is not None else "failed"
    EVENT_DELIVERIES.labels(outcome).inc()
    EVENT_DELIVERY_DURATION.labels(outcome).observe(took)
    if delay is not None:
        raise RetryLater(delay, f"delivery {delivery_id} failed: {attempt.error}")


def _prepare(session: Session, credentials: CredentialStore, delivery_id: uuid.UUID) -> _Prepared | None:
    delivery = session.get(EventDelivery, delivery_id)
    if delivery is None or delivery.status != "pending":
        return None  # deleted with its endpoint, or already settled by an earlier run
    endpoint = session.get(EventEndpoint, delivery.endpoint_id)
    if endpoint is None or not endpoint.enabled:
        delivery.status, delivery.last_error, delivery.next_attempt_at = "failed", "endpoint disabled", None
        return None
    return _Prepared(url=endpoint.url, body=delivery.payload, webhook_id=str(delivery.event_id),
                     secrets=active_secrets(credentials, endpoint, utcnow()))


def _send(prepared: _Prepared, *, allow_private: bool) -> _Attempt:
    problem = url_problem(prepared.url, allow_private=allow_private)
    if problem:  # saved under other rules (e.g. before the opt-out was turned off)
        return _Attempt(None, f"refused: the url {problem}")
    # Resolved once, here; the connection goes to this address and no other.
    addresses = resolve_destination(prepared.url, allow_private=allow_private)
    if addresses is None:
        return _Attempt(None, REFUSED_NOT_PUBLIC)
    timestamp = int(time.time())
    headers = {
        "Content-Type": "application/json",
        "User-Agent": USER_AGENT,
        "webhook-id": prepared.webhook_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": " ".join(sign(secret, prepared.webhook_id, timestamp, prepared.body)
                                      for secret in prepared.secrets),
    }
    # What the agency reads (last_error) is generic: never an address, a port or an
    # exception's text. The details go to our log.
    try:
        # Connections go only to the addresses checked above (pinned), and the whole
        # attempt is capped (TOTAL_TIMEOUT). stream=True and no read: only the status
        # matters, and a receiver cannot make us download a large body. Proxies from the
        # environment are not used: a proxy would resolve the host again.
        response = capped_post(prepared.url, total=TOTAL_TIMEOUT, adapter=_PinnedAdapter(addresses),
                               data=prepared.body.encode(), headers=headers, timeout=TIMEOUT,
                               allow_redirects=False, stream=True, proxies=_NO_PROXIES)
    except requests.Timeout as exc:
        log.info("event delivery %s timed out: %s", prepared.webhook_id, exc)
        return _Attempt(None, "timed out")
    except requests.RequestException as exc:
        log.info("event delivery %s failed: %s", prepared.webhook_id, exc)
        return _Attempt(None, "connection failed")
    response.close()
    status = response.status_code
    if 200 <= status < 300:
        return _Attempt(status, None)
    note = " (redirects are not followed)" if 300 <= status < 400 else ""
    return _Attempt(status, f"HTTP {status}{note}")


def _record(session: Session, delivery_id: uuid.UUID, attempt: _Attempt) -> float | None:
    """Store the attempt; the delay before the next one, or None when settled."""
    delivery = session.get(EventDelivery, delivery_id, with_for_update=True)
    if delivery is None or delivery.status != "pending":
        return None
    now = utcnow()
    delivery.attempts += 1
    delivery.last_attempt_at = now
    delivery.last_status_code = attempt.status_code
    delivery.last_error = attempt.error
    delivery.next_attempt_at = None
    if attempt.ok:
        delivery.status, delivery.delivered_at = "delivered", now
        return None
    if attempt.status_code == 410:
        delivery.status = "failed"
        endpoint = session.get(EventEndpoint, delivery.endpoint_id)
        if endpoint is not None and endpoint.enabled:
            endpoint.enabled, endpoint.disabled_reason = False, "the receiver answered 410 Gone"
            log.warning("event endpoint %s disabled: 410 Gone", endpoint.id)
        return None
    if delivery.attempts >= MAX_ATTEMPTS:
        delivery.status = "failed"
        log.warning("delivery %s failed for good after %d attempts: %s", delivery_id, delivery.attempts,
                    attempt.error)
        return None
    delay = RETRY_DELAYS[delivery.attempts - 1]
    delivery.next_attempt_at = now + timedelta(seconds=delay)
    return delay
