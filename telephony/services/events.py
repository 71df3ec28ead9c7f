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
from sqlalchemy import select
from sqlalchemy.orm import Session

from ..capped_http import capped_post
from ..credentials import CredentialStore
from ..jobs import JobContext, RetryLater, enqueue
from ..models import Call, EventDelivery, EventEndpoint, utcnow
from .idempotency import first_time

log = logging.getLogger(__name__)

EVENT_TYPES = ("call.started", "call.answered", "call.ended", "call.failed", "campaign.completed")
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

def url_problem(url: str, *, production: bool) -> str | None:
    """Why this endpoint URL is refused, or None. Checked when an endpoint is
    saved; in production the host is resolved again before every send."""
    try:
        parts = urlsplit(url)
        _ = parts.port  # a malformed port raises here
    except ValueError:
        return "is not a valid URL"
    allowed = ("https",) if production else ("http", "https")
    if parts.scheme not in allowed or not parts.hostname:
        return "must be an https:// URL" if production else "must be an http:// or https:// URL"
    if parts.username is not None or parts.password is not None:
        return "must not contain credentials"
    if parts.fragment:
        return "must not contain a fragment"
    if production:
        host = parts.hostname
        if host == "localhost" or host.endswith(".localhost") or not _public_literal(host):
            return "must point to a public host"
    return None


def _public_literal(host: str) -> bool:
    """False for IP literals that are not globally routable; names pass here."""
    try:
        return ipaddress.ip_address(host).is_global
    except ValueError:
        return True


def _resolves_publicly(host: str, port: int) -> bool:
    """Production guard against agencies aiming us at internal services: every
    address the host resolves to must be globally routable."""
    try:
        infos = socket.getaddrinfo(host, port, proto=socket.IPPROTO_TCP)
    except OSError:
        return True  # let the request itself report the DNS failure
    for info in infos:
        address = info[4][0]  # a string for AF_INET and AF_INET6, the only TCP families
        if not isinstance(address, str) or not ipaddress.ip_address(address.split("%")[0]).is_global:
            return False
    return True


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
    attempt = _send(prepared, production=context.config.production)
    with context.db.session() as session:
        delay = _record(session, delivery_id, attempt)
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


def _send(prepared: _Prepared, *, production: bool) -> _Attempt:
    if production:
        parts = urlsplit(prepared.url)
        if not _resolves_publicly(parts.hostname or "", parts.port or 443):
            return _Attempt(None, "refused: the host resolves to a non-public address")
    timestamp = int(time.time())
    headers = {
        "Content-Type": "application/json",
        "User-Agent": USER_AGENT,
        "webhook-id": prepared.webhook_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": " ".join(sign(secret, prepared.webhook_id, timestamp, prepared.body)
                                      for secret in prepared.secrets),
    }
    try:
        # stream=True and no read: only the status matters, and a receiver
        # cannot make us download a large body.
        response = capped_post(prepared.url, total=TOTAL_TIMEOUT, data=prepared.body.encode(), headers=headers,
                               timeout=TIMEOUT, allow_redirects=False, stream=True)
    except requests.Timeout:
        return _Attempt(None, "timed out")
    except requests.RequestException as exc:
        return _Attempt(None, f"connection failed ({type(exc).__name__})")
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
