"""Answering machines on outbound calls: the carrier's verdict, and what follows from it.

Every outbound dial asks the carrier for asynchronous detection (Twilio DetectMessageEnd
with AsyncAmd, Telnyx ``greeting_end``, Plivo ``machine_detection_url``; see
``carriers/``): the callee hears the agent at once, as without detection, and the
verdict arrives later at ``/webhooks/outbound/<carrier>/amd/<call_id>`` (Telnyx: on its
Call Control webhook, with the call's other events).

A verdict is applied once and in order:
- signed: checked with the owning agency's credentials like every carrier callback
  (``outbound_callbacks.apply_callback``: SignatureRejected, 403, nothing written);
- idempotent: the first verdict wins (the UPDATE is conditional on ``answered_by`` being
  unset), every later step is a conditional move of ``machine_action``, and Telnyx event
  ids go through the processed-events ledger; a replay changes nothing and commands
  nothing;
- ordered with the call's other events: a verdict means the call was answered, so it
  moves the call to in-progress (never backwards: ``call_status.apply_event``); a
  verdict for a call already over is recorded but no longer acted on.

What follows is the call's ``on_machine`` policy (``telephony.answering_machine``): the
decision is committed as ``machine_action`` BEFORE the carrier is commanded (hang up, or
stop the stream and leave the message), so the campaign attempt's outcome (voicemail,
voicemail_left, fax) is known whenever the call's end is reported. A failed command is
logged and the carrier is still answered 2xx (retrying its webhook cannot fix it).
"""
from __future__ import annotations

import logging
import uuid
from dataclasses import replace
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from .. import answering_machine as amd
from .. import call_states
from ..carriers.base import MACHINE, CarrierAdapter, MachineDetection, MachineMessage, StatusEvent, WebhookRequest
from ..carriers.registry import get_carriers
from ..db import end_reads_before_writing, rows_affected
from ..models import Call, CallSource, DialAttempt
from . import carrier_webhooks, outbound_callbacks
from .events import emit_call_event
from .outbound import callback_url, carrier_client, carrier_credentials

log = logging.getLogger(__name__)


def apply_detection(session: Session, carrier: str, call_id: uuid.UUID, adapter: CarrierAdapter,
                    request: WebhookRequest) -> None:
    """Apply one detection callback (a verdict, or Telnyx's greeting-ended step) to our
    outbound call ``call_id``, then carry out what the call's policy asks. Raises
    SignatureRejected for a bad signature; anything we do not track is ignored."""
    detection = adapter.parse_machine_detection(request)
    if detection is None:
        # Nothing we track; still refuse a forgery rather than answer it 2xx.
        _verify(session, carrier, call_id, adapter, request)
        return
    # Verifies the signature, binds the carrier's id if we never stored it, and moves the
    # call to in-progress: a verdict means someone (or something) answered.
    outbound_callbacks.apply_callback(session, carrier, call_id, adapter, request,
                                      event=StatusEvent(detection.carrier_call_id, call_states.IN_PROGRESS,
                                                        event_id=detection.event_id))
    call = session.scalar(select(Call).where(Call.id == call_id, Call.source == CallSource(carrier))
                          .execution_options(populate_existing=True))
    if call is None or call.carrier_call_id != detection.carrier_call_id:
        session.rollback()  # not our call, or a call the carrier id belongs to another of ours
        return
    end_reads_before_writing(session)
    if detection.answered_by is None and detection.greeting_ended and call.answered_by is None:
        # Telnyx sends a beep heard before its verdict alone: a machine, its greeting over.
        detection = replace(detection, answered_by=MACHINE)
    if detection.answered_by is not None:
        action = _record_verdict(session, call, detection)
    else:
        action = _greeting_over(session, call) if detection.greeting_ended else None
    session.commit()
    if action is not None:
        _command(session, carrier, call, action)


def message_ended(session: Session, carrier: str, call_id: uuid.UUID, adapter: CarrierAdapter,
                  request: WebhookRequest) -> None:
    """The message left on a machine has played to its end (Telnyx call.speak.ended /
    call.playback.ended): hang up. Any other call's such event is ignored."""
    call = _verify(session, carrier, call_id, adapter, request)
    if call is None:
        return
    leaving = call.machine_action == amd.ACTION_MESSAGE and not call_states.is_terminal(call.status)
    session.rollback()
    if leaving:
        _command(session, carrier, call, amd.ACTION_HANGUP)


def _verify(session: Session, carrier: str, call_id: uuid.UUID, adapter: CarrierAdapter,
            request: WebhookRequest) -> Call | None:
    call = session.scalar(select(Call).where(Call.id == call_id, Call.source == CallSource(carrier)))
    if call is None:
        session.rollback()
        return None
    carrier_webhooks.verified_credentials(session, adapter, request, call.agency_id)
    return call


def _record_verdict(session: Session, call: Call, detection: MachineDetection) -> str | None:
    """Store who answered on the call and its campaign attempt, with what we will do about
    it; the first verdict wins. Returns the action to carry out now, or None."""
    assert detection.answered_by is not None
    live = not call_states.is_terminal(call.status)
    message = MachineMessage.from_dict(call.machine_message)
    action = amd.decide(call.on_machine, detection.answered_by, has_message=message is not None,
                        greeting_follows=detection.greeting_follows) if live else None
    result = session.execute(update(Call).where(Call.id == call.id, Call.answered_by.is_(None))
                             .values(answered_by=detection.answered_by, answered_by_detail=detection.detail,
                                     machine_action=action)
                             .execution_options(synchronize_session=False))
    if rows_affected(result) != 1:
        log.info("call %s: answering-machine verdict %r ignored (one was recorded already)", call.id,
                 detection.detail)
        return None
    session.execute(update(DialAttempt).where(DialAttempt.call_id == call.id, DialAttempt.answered_by.is_(None))
                    .values(answered_by=detection.answered_by).execution_options(synchronize_session=False))
    session.refresh(call)
    emit_call_event(session, call, "call.answered_by")
    log.info("call %s answered by %s (%s): %s", call.id, detection.answered_by, detection.detail,
             action or ("too late, the call is over" if not live else "nothing to do"))
    return action if action in (amd.ACTION_HANGUP, amd.ACTION_MESSAGE) else None


def _greeting_over(session: Session, call: Call) -> str | None:
    """A machine's greeting ended (Telnyx): the message we waited to leave is left now."""
    result = session.execute(update(Call).where(Call.id == call.id, Call.machine_action == amd.ACTION_WAIT_BEEP,
                                                Call.status.not_in(sorted(call_states.TERMINAL)))
                             .values(machine_action=amd.ACTION_MESSAGE)
                             .execution_options(synchronize_session=False))
    return amd.ACTION_MESSAGE if rows_affected(result) == 1 else None


def _command(session: Session, carrier: str, call: Call, action: str) -> None:
    """Hang up, or leave the call's message, through the carrier's SDK (after the commit:
    no transaction is held across HTTP). Failures are logged, never raised."""
    dialer = get_carriers().dialer(carrier)
    carrier_call_id = call.carrier_call_id
    if dialer is None or not carrier_call_id:
        return
    try:
        credentials = carrier_credentials(session, call.agency_id, carrier)
        session.rollback()
        client: Any = carrier_client(carrier, credentials)
        if action == amd.ACTION_HANGUP:
            dialer.hang_up(client, carrier_call_id)
        else:
            message = MachineMessage.from_dict(call.machine_message)
            if message is None:  # cannot happen: decide() hangs up when there is no message
                dialer.hang_up(client, carrier_call_id)
                return
            dialer.leave_message(client, carrier_call_id, message,
                                 lambda kind: callback_url(carrier, kind, call.id))
    except Exception as exc:  # the SDK's errors, missing credentials: the webhook is still answered
        log.error("call %s: could not %s on %s (%s); the agent stays on the line", call.id,
                  "hang up" if action == amd.ACTION_HANGUP else "leave the message", carrier,
                  exc.__class__.__name__)


def voicemail_message(session: Session, carrier: str, call_id: uuid.UUID, adapter: CarrierAdapter,
                      request: WebhookRequest) -> MachineMessage | None:
    """The message to leave on the machine that answered ``call_id`` (Plivo fetches it
    after our transfer), once the request's signature checks out; None if there is none."""
    call = _verify(session, carrier, call_id, adapter, request)
    if call is None:
        return None
    message = MachineMessage.from_dict(call.machine_message) if call.machine_action == amd.ACTION_MESSAGE else None
    session.rollback()
    return message
