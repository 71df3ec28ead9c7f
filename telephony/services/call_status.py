"""Carrier status callbacks: ringing, in progress, completed / busy / no-answer / failed.

Callbacks arrive duplicated and out of order. A call only ever moves forward
(telephony.call_states: created < ringing < in-progress < terminal, terminal is final),
and when the carrier numbers its callbacks (Twilio / TeXML SequenceNumber) a number not
above the highest one applied is ignored. Both rules live in the WHERE clause of one
UPDATE, so concurrent callbacks cannot interleave a read and a write. Telnyx Call Control events
are additionally deduplicated by event id (processed_webhook_events).
"""
from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass

from sqlalchemy import or_, select, update
from sqlalchemy.orm import Session

from .. import call_states
from ..carriers.base import CarrierAdapter, StatusEvent, WebhookRequest
from ..context import get_credentials
from ..credentials import ProviderCredentials
from ..errors import Forbidden
from ..models import Call, CallSource, utcnow
from .events import emit_call_event

log = logging.getLogger(__name__)


class SignatureRejected(Forbidden):
    """A carrier webhook without a valid signature (any route): 403, nothing written."""

    code = "invalid_signature"

    def __init__(self) -> None:
        super().__init__("Missing or invalid webhook signature")


@dataclass(frozen=True)
class VerifiedCall:
    call_id: uuid.UUID
    agency_id: uuid.UUID
    credentials: ProviderCredentials


def apply_status(session: Session, adapter: CarrierAdapter, request: WebhookRequest) -> bool:
    """Apply one status callback; True if the call changed. Raises SignatureRejected."""
    event = adapter.parse_status(request)
    if event is None:
        return False  # nothing we track (e.g. "initiated"): nothing to verify or write
    verified = verified_call(session, adapter, request, event.carrier_call_id)
    if verified is None:
        return False
    end_reads_before_writing(session)
    changed = apply_event(session, verified.call_id, event)
    session.commit()
    return changed


def verified_call(session: Session, adapter: CarrierAdapter, request: WebhookRequest,
                  carrier_call_id: str) -> VerifiedCall | None:
    """The call a callback is about, once its signature checks out with the owning
    agency's credentials. None for a call we do not know (nothing is written then, so
    there is nothing to protect); SignatureRejected for a bad signature."""
    row = session.execute(select(Call.id, Call.agency_id)
                          .where(Call.source == CallSource(adapter.name), Call.carrier_call_id == carrier_call_id)
                          ).first() if carrier_call_id else None
    if row is None:
        session.rollback()
        log.info("%s callback for unknown call %r ignored", adapter.name, carrier_call_id)
        return None
    credentials = verified_credentials(session, adapter, request, row.agency_id)
    return VerifiedCall(call_id=row.id, agency_id=row.agency_id, credentials=credentials)


def verified_credentials(session: Session, adapter: CarrierAdapter, request: WebhookRequest,
                         agency_id: uuid.UUID) -> ProviderCredentials:
    """The agency's carrier credentials, once the request's signature checks out with
    them; SignatureRejected (nothing written) otherwise."""
    credentials = get_credentials().get(session, agency_id, adapter.name)
    if not adapter.verify(request, credentials):
        session.rollback()
        log.warning("%s webhook for agency %s rejected: bad or missing signature%s", adapter.name, agency_id,
                    "" if credentials else f" (no {adapter.name} credentials stored)")
        raise SignatureRejected()
    return credentials


def end_reads_before_writing(session: Session) -> None:
    """SQLite cannot turn a read snapshot into a write once another connection has
    written meanwhile (it fails at once with "database is locked"; busy_timeout does
    not apply), so there a write opens a transaction of its own. PostgreSQL (READ
    COMMITTED) has no such limit, and keeping the reads and the write in one
    transaction saves a pool checkout, its ping and a BEGIN/ROLLBACK round trip."""
    if session.get_bind().dialect.name == "sqlite":
        session.rollback()


# Terminal statuses a carrier reports for a call that never connected. "completed" is
# left to Ultravox's call.ended, which carries the end reason and billing.
CARRIER_FAILURES = call_states.TERMINAL - {call_states.COMPLETED}


def apply_event(session: Session, call_id: uuid.UUID, event: StatusEvent) -> bool:
    """One conditional UPDATE (the caller commits); True if it changed the call."""
    # call_states.should_advance as a WHERE clause: every status the new one may not
    # follow (an unknown one counts as "created", exactly as should_advance treats it).
    blocked = sorted(status for status in call_states.ALL if not call_states.should_advance(status, event.status))
    statement = update(Call).where(Call.id == call_id, Call.status.not_in(blocked))
    values: dict[str, object] = {"status": event.status}
    if event.sequence is not None:
        statement = statement.where(or_(Call.carrier_status_seq.is_(None), Call.carrier_status_seq < event.sequence))
        values["carrier_status_seq"] = event.sequence
    if call_states.is_terminal(event.status):
        values["ended_at"] = utcnow()
        if event.duration_seconds is not None:
            values["duration_seconds"] = event.duration_seconds
    result = session.execute(statement.values(**values).execution_options(synchronize_session=False))
    changed = result.rowcount == 1
    log.info("call %s: %s%s", call_id, event.status, "" if changed else " ignored (duplicate or out of order)")
    if changed and event.status in CARRIER_FAILURES:
        # The carrier knows first that nobody will answer; Ultravox reports the unjoined
        # call only when its join timeout runs out. The agency hears it now, once: the
        # terminal event slot is shared with Ultravox's later call.ended.
        emit_call_event(session, session.get(Call, call_id, populate_existing=True), "call.failed")
    return changed
