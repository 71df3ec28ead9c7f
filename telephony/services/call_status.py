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

from sqlalchemy import or_, update
from sqlalchemy.orm import Session

from .. import call_states
from ..carriers.base import CarrierAdapter, StatusEvent, WebhookRequest
from ..db import end_reads_before_writing, rows_affected
from ..models import Call, utcnow
from .carrier_webhooks import verified_call
from .events import emit_call_event
from .transfers import handed_off

log = logging.getLogger(__name__)


def apply_status(session: Session, adapter: CarrierAdapter, request: WebhookRequest) -> bool:
    """Apply one status callback; True if the call changed. Raises SignatureRejected
    (carrier_webhooks) for a bad signature."""
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
        values["join_url"] = None  # nobody may join a call that is over (see inbound replays)
        if event.duration_seconds is not None:
            values["duration_seconds"] = event.duration_seconds
    result = session.execute(statement.values(**values).execution_options(synchronize_session=False))
    changed = rows_affected(result) == 1
    log.info("call %s: %s%s", call_id, event.status, "" if changed else " ignored (duplicate or out of order)")
    if changed and event.status in CARRIER_FAILURES:
        # The carrier knows first that nobody will answer; Ultravox reports the unjoined
        # call only when its join timeout runs out. The agency hears it now, once: the
        # terminal event slot is shared with Ultravox's later call.ended.
        call = session.get(Call, call_id, populate_existing=True)
        if call is None:  # cannot happen: this transaction just updated (and so locked) the row
            raise LookupError(f"call {call_id} vanished after its status update")
        emit_call_event(session, call, "call.failed")
    elif changed and event.status == call_states.COMPLETED and handed_off(session, call_id):
        # A call handed to a person ends when the carrier says so, not with its agent leg
        # (ultravox_events leaves it open): this is its end.
        call = session.get(Call, call_id, populate_existing=True)
        if call is not None:
            emit_call_event(session, call, "call.ended")
    return changed
