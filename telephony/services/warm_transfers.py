"""Warm transfers: the caller waits on hold while the person's phone rings; the person
hears a whisper (who is calling and why) and presses a key to take the call, which joins
them with the caller. If they decline, do not answer or hang up before accepting, the
caller is taken off hold, back to the agent (transfer_outcomes.py).

Twilio and Plivo run it through XML callbacks (hold, whisper, whisper-result,
leg-status, resume); Telnyx through Call Control events of the person's leg.
"""
from __future__ import annotations

import logging
import uuid
from typing import Any, Mapping

from sqlalchemy import update
from sqlalchemy.orm import Session

from ..carriers.base import WebhookRequest
from ..carriers.transfers import ANSWERED, DECLINED, FAILED, LegReport, PlivoTransferer, TelnyxTransferer, WarmDial
from ..models import Call, CallTransfer
from .outbound import carrier_client, carrier_credentials
from .transfer_carriers import CARRIER_TIMEOUT, callback_url, target_settings, transferer, verified_transfer
from .transfer_outcomes import (
    DIALING,
    GOODBYE,
    IN_CONVERSATION,
    announce,
    bring_back,
    mark_answered,
    put_caller_back,
    resume_join_url,
    settle,
)

log = logging.getLogger(__name__)

WHISPER = "This is a call transfer from the AI assistant. {reason} Press {digit} to take the call."
WHISPER_NO_PROMPT = "This is a call transfer from the AI assistant. {reason} Connecting you now."


class CallerOnHoldReturned(Exception):
    """A warm transfer failed after the caller was put on hold; they were taken back to
    the agent already (the transfer is settled)."""


def _room(transfer_id: uuid.UUID) -> str:
    return f"transfer-{transfer_id}"


def hold_and_dial(session: Session, transfer: CallTransfer, root: Call, target: dict[str, Any],
                  credentials: Mapping[str, str]) -> None:
    """The caller on hold, the person's phone ringing; the leg id recorded. Raises what
    the carrier raised if the hold failed (the caller is still with the agent), and
    CallerOnHoldReturned if the person could not be dialled."""
    our_number = root.to_number if root.direction.value == "inbound" else root.from_number
    transfer_id = transfer.id
    dial = WarmDial(destination=transfer.destination, from_number=target.get("caller_id") or our_number or "",
                    ring_timeout=transfer.ring_timeout_seconds, room=_room(transfer_id), command_id=str(transfer_id),
                    callback_url=lambda kind: callback_url(transfer_id, kind))
    carrier = transferer(transfer.carrier)
    client = carrier_client(transfer.carrier, credentials, timeout=CARRIER_TIMEOUT)
    carrier.hold(client, root.carrier_call_id or "", dial)  # fails: the caller is still with the agent
    try:
        leg_id = carrier.dial_person(client, dial, credentials=credentials)
    except Exception as exc:  # noqa: BLE001 - the caller is on hold: take them back to the agent
        log.error("call %s: the person could not be dialled: %s", root.id, type(exc).__name__)
        _finish(session, transfer, LegReport(final=True, outcome=FAILED))
        raise CallerOnHoldReturned() from None
    session.execute(update(CallTransfer).where(CallTransfer.id == transfer_id, CallTransfer.carrier_leg_id.is_(None))
                    .values(carrier_leg_id=leg_id).execution_options(synchronize_session=False))
    session.commit()


def _whisper_text(transfer: CallTransfer, accept_digit: str | None) -> str:
    reason = (transfer.reason or "").strip()
    reason = reason if reason.endswith((".", "!", "?")) or not reason else reason + "."
    template = WHISPER if accept_digit else WHISPER_NO_PROMPT
    return template.format(reason=reason or "The caller asked for you.", digit=accept_digit)


def _accept_digit(session: Session, transfer: CallTransfer) -> str | None:
    """The key the person presses to take the call; None: they take it on answering."""
    return target_settings(session, transfer).get("accept_digit", "1")


# -- Twilio and Plivo: XML callbacks --------------------------------------------------------

def hold_instructions(session: Session, transfer_id: uuid.UUID, request: WebhookRequest) -> str:
    """Plivo: the caller's call was transferred here: wait in the transfer's conference."""
    transfer = verified_transfer(session, transfer_id, request)
    session.rollback()
    return PlivoTransferer().hold_xml(_room(transfer.id))


def whisper(session: Session, transfer_id: uuid.UUID, request: WebhookRequest) -> str:
    """The person answered (Twilio, Plivo): the whisper, and the key that accepts."""
    transfer = verified_transfer(session, transfer_id, request)
    carrier = transferer(transfer.carrier)
    if transfer.status != DIALING:
        session.rollback()
        return carrier.goodbye_xml()
    accept_digit = _accept_digit(session, transfer)
    if accept_digit is None:
        mark_answered(session, transfer.id)
    text = _whisper_text(transfer, accept_digit)
    session.rollback()
    return carrier.whisper_xml(text, accept_digit, callback_url(transfer.id, "whisper-result"), _room(transfer.id))


def whisper_result(session: Session, transfer_id: uuid.UUID, request: WebhookRequest) -> str:
    """The key the person pressed (Twilio, Plivo): join the caller, or decline."""
    transfer = verified_transfer(session, transfer_id, request)
    carrier = transferer(transfer.carrier)
    if transfer.status == DIALING and carrier.parse_digits(request) == _accept_digit(session, transfer):
        mark_answered(session, transfer.id)
        return carrier.join_xml(_room(transfer.id))
    _finish(session, transfer, LegReport(final=True, outcome=DECLINED))
    return carrier.goodbye_xml()


def leg_status(session: Session, transfer_id: uuid.UUID, request: WebhookRequest) -> None:
    """The person's leg ended (Twilio status callback, Plivo hangup URL)."""
    transfer = verified_transfer(session, transfer_id, request)
    leg = transferer(transfer.carrier).parse_leg_status(request)
    if leg is None:
        session.rollback()
        return
    if leg.outcome == ANSWERED and transfer.status != IN_CONVERSATION:
        leg = LegReport(final=True, outcome=DECLINED, leg_id=leg.leg_id)  # answered, never accepted
    _finish(session, transfer, leg)


def resume_instructions(session: Session, transfer_id: uuid.UUID, request: WebhookRequest) -> str:
    """Plivo: the caller's call was transferred back here: stream to the new agent call."""
    transfer = verified_transfer(session, transfer_id, request)
    carrier = transferer(transfer.carrier)
    join_url = resume_join_url(session, transfer)
    session.rollback()
    return carrier.after_report(LegReport(final=True, outcome=FAILED), join_url, GOODBYE)


# -- Telnyx: Call Control events --------------------------------------------------------------

def telnyx_warm_event(session: Session, transfer: CallTransfer, request: WebhookRequest) -> None:
    """Telnyx warm transfer: the person's leg answered (whisper + gather), pressed a key
    (bridge or decline) or hung up (the outcome)."""
    carrier = transferer("telnyx")
    assert isinstance(carrier, TelnyxTransferer)
    event_type, leg_id, digits = carrier.parse_event(request)
    transfer_id = transfer.id
    if event_type == "call.hangup":
        leg = carrier.parse_report(request)
        if leg is not None:
            outcome = ANSWERED if transfer.status == IN_CONVERSATION else (
                DECLINED if leg.outcome == ANSWERED else leg.outcome)
            _finish(session, transfer, LegReport(final=True, outcome=outcome, leg_id=leg_id or None))
        return
    if event_type not in ("call.answered", "call.gather.ended") or transfer.status != DIALING:
        session.rollback()
        return
    root = session.get(Call, transfer.call_id)
    accept_digit = _accept_digit(session, transfer)
    credentials = carrier_credentials(session, transfer.agency_id, "telnyx")
    text = _whisper_text(transfer, accept_digit)
    session.rollback()
    client = carrier_client("telnyx", credentials, timeout=CARRIER_TIMEOUT)
    try:
        if event_type == "call.answered" and accept_digit:
            carrier.whisper(client, leg_id, text, accept_digit, command_id=str(transfer_id))
            return
        if (event_type == "call.answered" and not accept_digit) or digits == accept_digit:
            carrier.bridge(client, (root.carrier_call_id if root else None) or "", leg_id, command_id=str(transfer_id))
            mark_answered(session, transfer_id)
            return
        carrier.hang_up_leg(client, leg_id, command_id=str(transfer_id))
    except Exception as exc:  # noqa: BLE001 - the leg's hangup settles it; logged
        log.error("transfer %s: telnyx command failed: %s", transfer_id, type(exc).__name__)
        return
    _finish(session, transfer, LegReport(final=True, outcome=DECLINED))


def _finish(session: Session, transfer: CallTransfer, leg: LegReport) -> None:
    """Settle once; when nobody took the call, take the caller off hold, back to the agent."""
    transfer_id = transfer.id
    settled_now = settle(session, transfer, leg)
    session.commit()
    if not settled_now:
        return
    if leg.outcome != ANSWERED:
        put_caller_back(session, transfer_id, bring_back(session, transfer), on_hold=True)
    announce(session, transfer_id)
