"""Telnyx Call Control events: an inbound call answered (or held) through the REST API.

call.initiated (incoming) is an inbound call, answered exactly like the XML carriers'
(services/inbound.py), then carried out with a REST command (answer with stream_url,
transfer, or answer and speak). Later events continue a speak-and-hang-up answer, play a
held caller's hold audio and try them again, and update the call's status, a repeated
event id being skipped.
"""
from __future__ import annotations

import logging
import uuid
from dataclasses import replace

from sqlalchemy.orm import Session

from ..carriers.base import InboundCall, WebhookRequest
from ..carriers.registry import get_carriers
from ..carriers.telnyx_call_control import CallControlEvent, TelnyxCallControl
from ..config import get_config
from ..db import end_reads_before_writing, get_db
from . import call_status, capacity, carrier_webhooks, inbound
from .carrier_webhooks import SignatureRejected
from .idempotency import first_time

log = logging.getLogger(__name__)


def handle_call_control_event(session: Session, request: WebhookRequest, carrier: str = "telnyx") -> None:
    """One Call Control event. Raises SignatureRejected for a bad signature.

    call.initiated (incoming) is an inbound call: answered exactly like the XML carriers,
    then carried out with a REST command (answer with stream_url, transfer, or answer
    and speak). Later events continue a speak-and-hang-up answer and update the call's
    status, a repeated event id being skipped. A database error here propagates (500)
    so that Telnyx redelivers the event; applying it twice is harmless."""
    adapter = get_carriers().call_control(carrier)
    api_base = get_carriers().by_name(carrier).api_base(get_config())
    event = adapter.parse_event(request)
    if event.event_type == "call.initiated":
        if event.direction != "incoming" or not event.call_control_id:
            return  # our own outbound legs: nothing to answer
        outcome = inbound.answer_inbound(session, adapter, request)
        if outcome.credentials is None or outcome.agency_id is None:
            # Unknown number (or the database is down before we knew the agency): there
            # is no agency API key to command the call with; Telnyx ends it on timeout.
            log.warning("telnyx call %s cannot be answered: no agency credentials", event.call_control_id)
            return
        # The carrier call id as command id: a repeated call.initiated repeats the same
        # command, which Telnyx ignores, so the caller is never answered twice.
        try:
            adapter.execute(outcome.answer, call_control_id=event.call_control_id,
                            agency_id=str(outcome.agency_id), credentials=outcome.credentials,
                            api_base=api_base, command_id=event.call_control_id)
        finally:
            inbound.store_pending_write(get_db(), outcome)
        return

    if event.hold is not None and event.event_type in HOLD_EVENTS:
        _continue_hold(session, adapter, request, event, api_base)
        # A held call has no row of ours yet: nothing to update below.

    if event.say is not None:
        # Such a call may have no row (unassigned number): its state names the agency.
        try:
            agency_id = uuid.UUID(event.say[0])
        except ValueError:
            raise SignatureRejected() from None
        credentials = carrier_webhooks.verified_credentials(session, adapter, request, agency_id)
        session.rollback()  # no transaction held across the REST command
        adapter.continue_say(event, credentials=credentials, api_base=api_base)

    status = adapter.parse_status(request)
    if status is None:
        return
    verified = carrier_webhooks.verified_call(session, adapter, request, status.carrier_call_id)
    if verified is None:
        return
    end_reads_before_writing(session)
    if status.event_id and not first_time(session, adapter.name, status.event_id, verified.agency_id):
        session.rollback()
        log.info("telnyx event %s already processed", status.event_id)
        return
    call_status.apply_event(session, verified.call_id, status)
    session.commit()


# call.answered plays a held caller's hold audio; its end is the next try.
HOLD_EVENTS = ("call.answered", "call.speak.ended", "call.playback.ended")
PLAYBACK_FAILED = ("file_not_found", "failed", "unknown")


def _continue_hold(session: Session, adapter: TelnyxCallControl, request: WebhookRequest,
                   event: CallControlEvent, api_base: str) -> None:
    """A Call Control caller we hold for a free slot (services/capacity.py): the answered
    call hears the hold audio; when it ends, the call is tried again like a new one
    (connect, hold again, or the fallback once the wait is over)."""
    assert event.hold is not None
    parsed = capacity.waiting_from_state(event.hold, adapter.name, event.call_control_id)
    if parsed is None:
        # Only ours can be in it; a state signed with a key since dropped cannot be trusted.
        log.warning("telnyx call %s: hold state not verifiable; leaving the call", event.call_control_id)
        return
    waiting, from_number, to_number = parsed
    if event.payload.get("status") == "call_hangup":
        return  # the audio ended because the caller hung up: nobody to connect
    call = InboundCall(carrier_call_id=event.call_control_id, from_number=from_number, to_number=to_number)
    audio_failed = event.event_type == "call.playback.ended" and event.payload.get("status") in PLAYBACK_FAILED
    if event.event_type == "call.answered" or audio_failed:
        # Answered: play the round the call was held for. Hold audio that cannot be played
        # (a wrong HOLD_AUDIO_URL): this round is spoken instead, rather than trying again
        # at once, which would spin.
        route = inbound.find_route(session, adapter.name, to_number)
        if route is None:
            session.rollback()
            return
        credentials = carrier_webhooks.verified_credentials(session, adapter, request, route.agency_id)
        session.rollback()  # no transaction held across the REST command
        # The state carries the next round already: this is the hold it was answered for.
        playing = capacity.Waiting(since=waiting.since, round=max(waiting.round - 1, 0))
        hold = inbound.hold_answer(adapter, call, playing, request.public_url).hold
        assert hold is not None
        if audio_failed:
            log.warning("telnyx call %s: hold audio not played (%s); speaking instead", event.call_control_id,
                        event.payload.get("status"))
            hold = replace(hold, audio_url=None)
        adapter.play_hold(event.call_control_id, hold, credentials=credentials, api_base=api_base)
        return
    outcome = inbound.answer_inbound(session, adapter, request, inbound.HeldCall(call=call, waiting=waiting))
    if outcome.credentials is None or outcome.agency_id is None:
        log.warning("telnyx call %s: held caller cannot be answered: no agency credentials", event.call_control_id)
        return
    try:
        adapter.execute(outcome.answer, call_control_id=event.call_control_id, agency_id=str(outcome.agency_id),
                        credentials=outcome.credentials, api_base=api_base, command_id=event.call_control_id,
                        answered=True)
    finally:
        inbound.store_pending_write(get_db(), outcome)
