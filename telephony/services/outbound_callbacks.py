"""Carrier callbacks for outbound calls, addressed by our call id.

Our call id is in the callback URL, so a callback can settle a call even when the
worker that dialled it died before it stored the carrier's call id: the callback
proves the carrier placed the call, and the dial attempt becomes "placed" instead
of ever being dialled again.
"""
from __future__ import annotations

import logging
import uuid

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from ..carriers.base import CarrierAdapter, StatusEvent, WebhookRequest
from ..db import end_reads_before_writing
from ..models import Call, CallSource
from . import call_status, carrier_webhooks
from .campaigns.outcomes import bind_attempt, settle_call
from .idempotency import first_time
from .outbound import record_carrier_call

log = logging.getLogger(__name__)


def _outbound_call(session: Session, carrier: str, call_id: uuid.UUID) -> Call | None:
    return session.scalar(select(Call).where(Call.id == call_id, Call.source == CallSource(carrier)))


def apply_callback(session: Session, carrier: str, call_id: uuid.UUID, adapter: CarrierAdapter,
                   request: WebhookRequest, *, event: StatusEvent | None = None, bind_id: str | None = None) -> None:
    """Verify the signature with the owning agency's credentials (SignatureRejected
    otherwise), bind the carrier's call id if we never stored it, apply the status,
    settle the campaign attempt. An unknown call id is ignored."""
    call = _outbound_call(session, carrier, call_id)
    if call is None:
        session.rollback()
        return
    carrier_webhooks.verified_credentials(session, adapter, request, call.agency_id)
    event = event if event is not None else adapter.parse_status(request)
    carrier_call_id = bind_id or (event.carrier_call_id if event is not None else None)
    if (carrier_call_id and carrier_call_id != call.carrier_call_id
            and _held_by_another_call(session, carrier, call_id, carrier_call_id)):
        # One carrier call is one of ours: binding it twice would break the unique key.
        log.warning("%s callback for call %s names carrier call %r of another call; ignored",
                    carrier, call_id, carrier_call_id)
        session.rollback()
        return
    end_reads_before_writing(session)
    if carrier_call_id and carrier == "plivo" and call.carrier_call_id != carrier_call_id:
        # Plivo answers calls.create with a request_uuid; its callbacks carry the CallUUID.
        _set_carrier_call_id(session, call_id, carrier_call_id)
    elif carrier_call_id:
        record_carrier_call(session, call_id, carrier_call_id)
    if event is not None:
        if event.event_id and not first_time(session, carrier, event.event_id, call.agency_id):
            session.rollback()
            return
        call_status.apply_event(session, call_id, event)
    session.commit()
    bind_attempt(session, call_id, carrier_call_id)
    if event is not None:
        settle_call(session, call_id)


def _held_by_another_call(session: Session, carrier: str, call_id: uuid.UUID, carrier_call_id: str) -> bool:
    return session.scalar(select(Call.id).where(Call.source == CallSource(carrier), Call.id != call_id,
                                                Call.carrier_call_id == carrier_call_id).limit(1)) is not None


def plivo_answer(session: Session, call_id: uuid.UUID, adapter: CarrierAdapter,
                 request: WebhookRequest) -> str | None:
    """The joinUrl to stream this answered Plivo call to (the Ultravox call created
    before dialling; Plivo may fetch the answer URL again), or None if unknown."""
    call = _outbound_call(session, "plivo", call_id)
    if call is None or not call.join_url:
        session.rollback()
        return None
    carrier_webhooks.verified_credentials(session, adapter, request, call.agency_id)
    join_url = call.join_url
    call_uuid = request.field("CallUUID")
    if call_uuid and _held_by_another_call(session, "plivo", call_id, call_uuid):
        log.warning("plivo answer for call %s names carrier call %r of another call; not bound", call_id, call_uuid)
        call_uuid = ""
    session.rollback()
    if call_uuid:
        _set_carrier_call_id(session, call_id, call_uuid)
        session.commit()
        bind_attempt(session, call_id, call_uuid)
    return join_url


def _set_carrier_call_id(session: Session, call_id: uuid.UUID, carrier_call_id: str) -> None:
    session.execute(update(Call).where(Call.id == call_id).values(carrier_call_id=carrier_call_id)
                    .execution_options(synchronize_session=False))
