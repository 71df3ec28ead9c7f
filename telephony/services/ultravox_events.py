"""Ultravox webhooks (call.started, call.joined, call.ended, call.billed): verify, then update the call.

1. Find the agency whose secret must have signed the body: the URL
   (/webhooks/ultravox/<agency_id>), else the call's `telephony.agency_id`
   metadata, else our calls row for the Ultravox call id, else the agency
   mapping the call's agentId (only if exactly one does).
2. Verify X-Ultravox-Webhook-Signature: hex HMAC-SHA256(secret, raw body +
   X-Ultravox-Webhook-Timestamp), any of its comma-separated signatures
   (rotation), with a fresh timestamp. Anything unverifiable is refused and
   nothing is written.
3. Record `{callId}:{event}` in the idempotency ledger (same transaction as
   the update, so a duplicate is a no-op), find the call - or rebuild it
   from the call's metadata when we never stored it - and apply the call
   snapshot monotonically: times and end reason are only ever filled in,
   the status only moves forward (call_states.should_advance). So duplicated
   and reordered webhooks are harmless.
4. Emit our own events to the agency's endpoints, charge credits on
   call.billed (once per call), and queue the enrichment job; the slow work
   happens in the worker.
"""
from __future__ import annotations

import hashlib
import hmac
import json
import logging
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from decimal import ROUND_CEILING, Decimal
from typing import Any, TypeVar

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from .. import call_states
from ..carriers.base import MAX_DURATION_SECONDS
from ..carriers.registry import CARRIERS
from ..credentials import get_credentials
from ..db import rows_affected
from ..errors import DomainError, InvalidInput, Unauthorized
from ..logging import call_id_var
from ..models import Agency, AgentMapping, Call, CallDirection, CallSource, utcnow
from ..text import storable
from .enrichment import schedule_enrichment
from .events import emit_call_event
from .idempotency import first_time
from .transfers import handed_off

log = logging.getLogger(__name__)
E = TypeVar("E", CallSource, CallDirection)

PROVIDER = "ultravox"
SIGNATURE_HEADER = "X-Ultravox-Webhook-Signature"
TIMESTAMP_HEADER = "X-Ultravox-Webhook-Timestamp"
EVENTS = frozenset({"call.started", "call.joined", "call.ended", "call.billed"})
# Ultravox suggests "within the last minute"; 5 minutes leaves room for clock
# skew and for queueing on their side. The future bound is only clock skew.
MAX_AGE = timedelta(minutes=5)
MAX_FUTURE = timedelta(minutes=1)
MAX_SIGNATURES = 10  # rotation means two; more is abuse
# Ultravox sends call.started as it creates the call, which can overtake the
# insert of a call we are creating ourselves; see CallNotStoredYet.
STARTED_GRACE = timedelta(seconds=60)
# Ultravox medium -> our call source: each carrier's medium is its own (from its
# description), the others are ours.
MEDIUM_SOURCES = {"webRtc": CallSource.webrtc, "serverWebSocket": CallSource.websocket,
                  **{carrier.medium_name: CallSource(carrier.name) for carrier in CARRIERS}}


class WebhookRejected(Unauthorized):
    def __init__(self) -> None:
        # One message for every reason: a forger learns nothing about which check failed.
        super().__init__("Webhook signature could not be verified")


class CallNotStoredYet(DomainError):
    """call.started for a call we created a moment ago and have not stored yet:
    answer 503 so Ultravox retries (~30 s) instead of us racing the insert."""

    status = 503
    code = "not_ready"
    retry_after = 30

    def __init__(self) -> None:
        super().__init__("The call is not stored yet; retry later")


@dataclass(frozen=True)
class IngestResult:
    outcome: str  # processed, duplicate, ignored
    call_id: uuid.UUID | None = None


def ingest(session: Session, *, body: bytes, signature: str | None, timestamp: str | None,
           path_agency_id: uuid.UUID | None = None, now: datetime | None = None) -> IngestResult:
    """Verify and apply one webhook. The caller commits on success."""
    now = now or utcnow()
    event, snapshot = _parse(body)
    ultravox_call_id: str = snapshot["callId"]
    raw_metadata = snapshot.get("metadata")
    metadata: dict[str, Any] = raw_metadata if isinstance(raw_metadata, dict) else {}
    existing = session.scalar(select(Call).where(Call.ultravox_call_id == ultravox_call_id))

    candidates = _candidate_agencies(session, path_agency_id, metadata, existing, snapshot.get("agentId"))
    store = get_credentials()
    # The agency is the one whose own secret signed this: another agency that maps the
    # same Ultravox agent (an agent id is public in a widget) cannot take its webhooks.
    signed_by = [agency for agency in candidates
                 if verify_signature(store.get(session, agency, "ultravox").get("webhook_secret"), body, signature,
                                     timestamp, now=now)]
    if len(signed_by) != 1:
        log.warning("ultravox webhook refused: unverifiable", extra={"ultravox_call_id": ultravox_call_id})
        raise WebhookRejected()
    agency_id = signed_by[0]
    # Authentic for agency_id from here on. It may only touch that agency's calls.
    metadata_agency = _uuid(metadata.get("telephony.agency_id"))
    if (existing is not None and existing.agency_id != agency_id) or metadata_agency not in (None, agency_id):
        log.warning("ultravox webhook signed by agency %s names another agency's call", agency_id)
        raise WebhookRejected()
    if event not in EVENTS:
        return IngestResult("ignored")
    # End the read-only part (nothing is written yet) so the write transaction
    # begins with its first write. SQLite then makes concurrent deliveries wait
    # their turn instead of failing one that would have to upgrade a stale read
    # snapshot; PostgreSQL is indifferent.
    session.rollback()
    if not first_time(session, PROVIDER, f"{ultravox_call_id}:{event}", agency_id):
        return IngestResult("duplicate")

    call, repaired = _find_or_repair(session, agency_id, event, snapshot, metadata, existing, now)
    call_id_var.set(str(call.id))
    if repaired or event == "call.started":
        emit_call_event(session, call, "call.started")
    if event == "call.billed":
        _charge_credits(session, call, snapshot)
    apply_snapshot(session, call, snapshot,
                   agent_leg_only=bool(snapshot.get("ended")) and handed_off(session, call.id))
    session.flush()
    log.info("ultravox %s applied; call is %s", event, call.status,
             extra={"ultravox_call_id": ultravox_call_id, "repaired": repaired})
    return IngestResult("processed", call.id)


# -- verification ----------------------------------------------------------------------

def verify_signature(secret: str | None, body: bytes, signature: str | None, timestamp: str | None, *,
                     now: datetime) -> bool:
    """Ultravox's scheme: hex HMAC-SHA256(secret, raw body + timestamp header), no separator."""
    if not secret or not signature or not timestamp or len(timestamp) > 64:
        return False
    sent_at = parse_timestamp(timestamp)
    if sent_at is None or now - sent_at > MAX_AGE or sent_at - now > MAX_FUTURE:
        return False
    expected = hmac.new(secret.encode(), body + timestamp.encode(), hashlib.sha256).hexdigest().encode()
    candidates = [part.strip().lower().encode("utf-8", "replace") for part in signature.split(",")]
    # Compare all candidates (no early exit), each in constant time.
    matches = [hmac.compare_digest(expected, candidate) for candidate in candidates[:MAX_SIGNATURES]]
    return any(matches)


def parse_timestamp(value: str) -> datetime | None:
    """ISO-8601 with Z or an offset; a naive value is taken as UTC."""
    try:
        parsed = datetime.fromisoformat(value.strip())
        # In UTC here: an offset that crosses the datetime limits (year 1 or 9999) is no time.
        return parsed.replace(tzinfo=timezone.utc) if parsed.tzinfo is None else parsed.astimezone(timezone.utc)
    except (ValueError, OverflowError):
        return None


# -- parsing and agency resolution ----------------------------------------------------------

def _parse(body: bytes) -> tuple[str | None, dict[str, Any]]:
    try:
        payload = json.loads(body)
    except (ValueError, RecursionError):  # not JSON, not UTF-8, or nested too deeply
        payload = None
    snapshot = payload.get("call") if isinstance(payload, dict) else None
    call_id = snapshot.get("callId") if isinstance(snapshot, dict) else None
    if not isinstance(snapshot, dict) or not isinstance(call_id, str):
        raise InvalidInput("body must be a JSON object with a call object carrying a callId", field="body")
    if not 0 < len(call_id) <= 64 or not storable(call_id):
        raise InvalidInput("callId must be 1 to 64 characters, without NUL or unpaired surrogates",
                           field="call.callId")
    _check_storable(payload)
    event = payload.get("event")
    # The 2024 payload had no "event"; infer it from the snapshot then.
    if event is None:
        event = "call.ended" if snapshot.get("ended") else "call.joined" if snapshot.get("joined") else "call.started"
    return (event if isinstance(event, str) else None), snapshot


# Deeper than this is not a call object (tool schemas nest a few levels): refused
# before anything of it is stored, or serialised again for the agency's events.
MAX_JSON_DEPTH = 64


def _check_storable(payload: Any) -> None:
    """InvalidInput naming the first string (key or value) the database cannot store,
    or a body nested deeper than MAX_JSON_DEPTH. Iterative: depth costs no stack."""
    stack: list[tuple[str, Any, int]] = [("", payload, 0)]
    while stack:
        path, value, depth = stack.pop()
        if depth > MAX_JSON_DEPTH:
            raise InvalidInput(f"body is nested deeper than {MAX_JSON_DEPTH} levels", field=path or "body")
        if isinstance(value, str) and not storable(value):
            raise InvalidInput("must not contain NUL characters or unpaired surrogates", field=path or "body")
        items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
        for key, item in items:
            name = str(key)
            if not storable(name):
                raise InvalidInput("keys must not contain NUL characters or unpaired surrogates",
                                   field=path or "body")
            stack.append((f"{path}.{name}" if path else name, item, depth + 1))


# At most this many agencies mapping one Ultravox agent are tried on the shared URL.
MAX_CANDIDATE_AGENCIES = 20


def _candidate_agencies(session: Session, path_agency_id: uuid.UUID | None, metadata: dict[str, Any],
                        existing: Call | None, ultravox_agent_id: Any) -> list[uuid.UUID]:
    """The agencies that may have signed this webhook: the one in the URL alone when it
    names one; on the shared URL, the one our metadata names, the one owning our row of
    the call, and those mapping its Ultravox agent. Each is checked against its own
    secret; exactly one must verify."""
    if path_agency_id is not None:
        return [path_agency_id]
    candidates: list[uuid.UUID] = []
    metadata_agency = _uuid(metadata.get("telephony.agency_id"))
    if metadata_agency is not None and session.get(Agency, metadata_agency) is not None:
        candidates.append(metadata_agency)
    if existing is not None:
        candidates.append(existing.agency_id)
    if isinstance(ultravox_agent_id, str) and 0 < len(ultravox_agent_id) <= 64 and "\x00" not in ultravox_agent_id:
        candidates.extend(session.scalars(select(AgentMapping.agency_id).distinct()
                                          .where(AgentMapping.ultravox_agent_id == ultravox_agent_id)
                                          .limit(MAX_CANDIDATE_AGENCIES)))
    return list(dict.fromkeys(candidates))


# -- finding or rebuilding the call -------------------------------------------------------------

def _find_or_repair(session: Session, agency_id: uuid.UUID, event: str, snapshot: dict[str, Any],
                    metadata: dict[str, Any], existing: Call | None, now: datetime) -> tuple[Call, bool]:
    """The call row, locked for this transaction; (call, True) if rebuilt now."""
    ultravox_call_id = snapshot["callId"]
    if existing is not None:
        return _locked(session, existing.id), False
    our_id = _uuid(metadata.get("telephony.call_id"))
    if our_id is not None:
        row = session.get(Call, our_id, with_for_update=True)
        if row is not None:  # stored without the Ultravox id (or under an id we do not know)
            if row.agency_id != agency_id or row.ultravox_call_id not in (None, ultravox_call_id):
                raise WebhookRejected()
            row.ultravox_call_id = ultravox_call_id
            return row, False
        created = _time(snapshot.get("created"))
        if event == "call.started" and created is not None and now - created < STARTED_GRACE:
            raise CallNotStoredYet()

    # The seeds' partial success (Ultravox has the call, our insert failed),
    # or a call Ultravox started itself (SIP, carrier XML): rebuild the record.
    source, direction = _source_and_direction(metadata, snapshot)
    call = Call(id=our_id or uuid.uuid4(), agency_id=agency_id, ultravox_call_id=ultravox_call_id,
                agent_id=_agent_id(session, agency_id, metadata, snapshot.get("agentId")),
                source=source, direction=direction, status=call_states.CREATED,
                # Carrier calls send these too (services/inbound.py), so a rebuilt
                # inbound row keeps its carrier id and numbers.
                carrier_call_id=metadata.get("telephony.carrier_call_id") or None,
                from_number=metadata.get("telephony.from") or None,
                to_number=metadata.get("telephony.to") or None,
                metadata_={k: v for k, v in metadata.items() if not str(k).startswith("telephony.")},
                created_at=_time(snapshot.get("created")) or now)
    try:
        with session.begin_nested():
            session.add(call)
            session.flush()
    except IntegrityError:
        # Another delivery for this call rebuilt it concurrently: use that row.
        row = session.scalar(select(Call).where(Call.ultravox_call_id == ultravox_call_id))
        if row is None or row.agency_id != agency_id:
            raise WebhookRejected() from None
        return _locked(session, row.id), False
    log.warning("call %s rebuilt from Ultravox call %s (%s)", call.id, ultravox_call_id, event)
    return call, True


def _locked(session: Session, call_id: uuid.UUID) -> Call:
    """The row re-read under FOR UPDATE (PostgreSQL), so concurrent webhooks
    for one call apply one after the other on fresh state."""
    return session.scalars(select(Call).where(Call.id == call_id).with_for_update()
                           .execution_options(populate_existing=True)).one()


def _agent_id(session: Session, agency_id: uuid.UUID, metadata: dict[str, Any],
              ultravox_agent_id: Any) -> uuid.UUID | None:
    ours = _uuid(metadata.get("telephony.agent_id"))
    if ours is not None:
        found = session.scalar(select(AgentMapping.id).where(AgentMapping.id == ours,
                                                             AgentMapping.agency_id == agency_id))
        if found is not None:
            return found
    if isinstance(ultravox_agent_id, str) and ultravox_agent_id:
        return session.scalar(select(AgentMapping.id).where(AgentMapping.ultravox_agent_id == ultravox_agent_id,
                                                            AgentMapping.agency_id == agency_id))
    return None


def _source_and_direction(metadata: dict[str, Any], snapshot: dict[str, Any]) -> tuple[CallSource, CallDirection]:
    """From our metadata when present; else from the medium. A call Ultravox
    started itself is someone calling in (SIP INVITE, carrier XML, browser),
    except an outgoing SIP call."""
    raw_medium = snapshot.get("medium")
    medium: dict[str, Any] = raw_medium if isinstance(raw_medium, dict) else {}
    medium_name = next(iter(medium), None)
    source = _enum(CallSource, metadata.get("telephony.source")) or (
        MEDIUM_SOURCES.get(medium_name, CallSource.webrtc) if medium_name is not None else CallSource.webrtc)
    sip = medium.get("sip")
    outgoing = isinstance(sip, dict) and "outgoing" in sip
    direction = _enum(CallDirection, metadata.get("telephony.direction")) or (
        CallDirection.outbound if outgoing else CallDirection.inbound)
    return source, direction


# -- applying --------------------------------------------------------------------------

def apply_snapshot(session: Session, call: Call, snapshot: dict[str, Any], *, agent_leg_only: bool = False) -> None:
    """Fill in what the Ultravox call object says. Every event carries the whole
    call, so a late or reordered event can only add, never undo.

    ``agent_leg_only``: the call was handed to a person (services/transfers.py), so its
    Ultravox leg ending is not the call ending: the caller may still be talking. Only the
    leg's summary is kept; the carrier's status callback ends the call."""
    joined = _time(snapshot.get("joined"))
    ended = _time(snapshot.get("ended"))
    if joined is not None:
        if call.joined_at is None:
            call.joined_at = joined
        _advance(call, call_states.IN_PROGRESS)
        emit_call_event(session, call, "call.answered")
    if ended is None:
        return
    if agent_leg_only:
        for attribute, key in (("summary", "summary"), ("short_summary", "shortSummary")):
            if isinstance(snapshot.get(key), str):
                setattr(call, attribute, snapshot[key])
        return
    if call.ended_at is None:
        call.ended_at = ended
    if call.end_reason is None and isinstance(snapshot.get("endReason"), str):
        call.end_reason = snapshot["endReason"][:64]
    if call.duration_seconds is None and call.joined_at is not None:
        seconds = max(0, round((ended - call.joined_at).total_seconds()))
        call.duration_seconds = seconds if seconds <= MAX_DURATION_SECONDS else None
    for attribute, key in (("summary", "summary"), ("short_summary", "shortSummary")):
        if isinstance(snapshot.get(key), str):
            setattr(call, attribute, snapshot[key])
    billed = parse_duration(snapshot.get("billedDuration"))
    if billed is not None and call.credits_charged_seconds is None:
        call.billed_duration_seconds = billed  # provisional until call.billed; that one is final
    # Ended without ever being joined (e.g. endReason "unjoined") is a failed call,
    # unless a carrier already gave it a terminal status.
    _advance(call, call_states.COMPLETED if call.joined_at is not None else call_states.FAILED)
    call.join_url = None  # the call is over: nobody may join it, a replayed webhook included
    emit_call_event(session, call, "call.ended" if call.status == call_states.COMPLETED else "call.failed")
    schedule_enrichment(session, call)


def _advance(call: Call, status: str) -> None:
    if call_states.should_advance(call.status, status):
        call.status = status


def _charge_credits(session: Session, call: Call, snapshot: dict[str, Any]) -> None:
    """Deduct the billed duration from the agency's credits, once per call: the
    conditional UPDATE succeeds for exactly one call.billed, however many arrive."""
    seconds = parse_duration(snapshot.get("billedDuration"))
    if seconds is None:
        log.warning("call.billed without a usable billedDuration: %r", snapshot.get("billedDuration"))
        return
    charged = rows_affected(session.execute(
        update(Call).where(Call.id == call.id, Call.credits_charged_seconds.is_(None))
        .values(credits_charged_seconds=seconds, billed_duration_seconds=seconds)))
    if charged:
        session.execute(update(Agency).where(Agency.id == call.agency_id)
                        .values(credit_balance=Agency.credit_balance - seconds))


# -- small parsers ------------------------------------------------------------------------

def parse_duration(value: Any) -> int | None:
    """Ultravox durations ("42s", "42.5s") in whole seconds, rounded up."""
    if not isinstance(value, str) or not value.endswith("s") or len(value) > 32:
        return None
    try:
        seconds = Decimal(value[:-1])
    except ArithmeticError:
        return None
    if not seconds.is_finite() or not 0 <= seconds <= MAX_DURATION_SECONDS:
        return None  # beyond a week (2**31 s would not even fit the column): not a call's duration
    return int(seconds.to_integral_value(rounding=ROUND_CEILING))


def _time(value: Any) -> datetime | None:
    return parse_timestamp(value) if isinstance(value, str) else None


def _uuid(value: Any) -> uuid.UUID | None:
    try:
        return uuid.UUID(value) if isinstance(value, str) else None
    except ValueError:
        return None


def _enum(enum_cls: type[E], value: Any) -> E | None:
    try:
        return enum_cls(value) if isinstance(value, str) else None
    except ValueError:
        return None
