"""Live call control: the agent hands the caller to a person, and gets the caller back
when nobody takes the call.

1. The agent's `transferCall` tool (services/transfer_tool.py) posts here. `invoke`
   accepts nothing else: a token that is not the call's own is 401, a call whose
   Ultravox id does not match (another call, another agency's call) is 404, a call that
   is over is 409, and a destination that is not one of the agent's target names is
   refused (422) with nothing dialled: the model chooses a name, never a number.
2. The transfer is recorded (call_transfers) and committed before the carrier is asked,
   so the carrier's callbacks always find it; then the live carrier call is redirected
   to dial the target (carriers/transfers.py), and the tool answers with a sentence the
   agent can speak.
3. The carrier reports the person's leg (`report`): answered, busy, no-answer, declined
   or failed. On anything but answered the caller is brought back to the agent: a new
   Ultravox call for the same agent, continuing the conversation (`priorCallId`), told
   that the transfer failed. It is a call row of its own (so its billing and lifecycle are
   the ordinary ones), marked with the call it resumes.
4. While a call has been handed off, the end of its first agent leg does not end it:
   the carrier's status callback does (ultravox_events / call_status ask `handed_off`).
"""
from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
from typing import Any, Mapping

from sqlalchemy import exists, select, update
from sqlalchemy.orm import Session

from .. import call_states
from ..carriers.base import WebhookRequest
from ..carriers.registry import get_carriers
from ..carriers.transfers import (
    ANSWERED,
    DECLINED,
    FAILED,
    CallTransferer,
    LegReport,
    PlivoTransferer,
    TelnyxTransferer,
    TransferDial,
    TwilioTransferer,
    WarmDial,
)
from ..config import get_config
from ..credentials import get_credentials
from ..db import rollback_quietly, rows_affected
from ..errors import Conflict, DomainError, InvalidInput, NotFound, Unauthorized
from ..metrics import TRANSFERS
from ..models import AgentMapping, Call, CallTransfer, utcnow
from ..ultravox_errors import UltravoxError
from . import carrier_webhooks, transfer_tool
from .calls import NewCall, start_call
from .events import emit_event
from .outbound import CarrierError, carrier_client, carrier_credentials
from .transfer_targets import DEFAULT_RING_TIMEOUT, find_target

log = logging.getLogger(__name__)

DIALING, IN_CONVERSATION, ENDED = "dialing", "answered", "ended"
LIVE_STATUSES = (DIALING, IN_CONVERSATION)
GOODBYE = "We are sorry, nobody could take your call right now. Please call again later. Goodbye."
RESUMED_FROM_KEY = "resumed_from_call_id"
MAX_REASON = 500
# Seconds per carrier request: the tool must answer within its Ultravox timeout
# (transfer_tool.TOOL_TIMEOUT, 8 s), and a warm transfer makes two requests.
CARRIER_TIMEOUT = 3.0
# What the agent hears back from the tool. Cold transfers cut the agent's leg moments
# later, so these are short.
STARTED_RESULT = "Transferring the caller to {name} now. Say nothing more."
NOT_STARTED_RESULT = ("The transfer to {name} could not be started. Apologise, and offer to help another way "
                      "or to take a message.")
FAILED_PROMPT = ("You tried to transfer the caller to {name}, but the transfer did not go through ({outcome}). "
                 "Tell the caller briefly that nobody could take the call right now, and offer to help another "
                 "way or to take a message.")


class TransferRefused(DomainError):
    status = 422
    code = "destination_not_allowed"


class CallOver(Conflict):
    code = "call_ended"


class CallerOnHoldReturned(Exception):
    """A warm transfer failed after the caller was put on hold; they were taken back to
    the agent already (the transfer is settled)."""


def transferer(carrier: str) -> CallTransferer:
    """The carrier's transfer adapter (the app's registry holds its Telnyx codec)."""
    if carrier == "twilio":
        return TwilioTransferer()
    if carrier == "plivo":
        return PlivoTransferer()
    if carrier == "telnyx":
        return TelnyxTransferer(get_carriers().call_control("telnyx"))
    raise InvalidInput(f"transfers are not available on {carrier}", field="carrier")


def callback_url(transfer_id: uuid.UUID, kind: str) -> str:
    return f"{get_config().public_base_url}/webhooks/transfers/{transfer_id}/{kind}"


@dataclass(frozen=True)
class ToolResult:
    status: int
    result: str


# -- 1. the tool ---------------------------------------------------------------------

def invoke(session: Session, call_id: uuid.UUID, token: str | None, body: Mapping[str, Any]) -> ToolResult:
    """The agent asked to transfer call ``call_id``. Raises Unauthorized, NotFound,
    CallOver / Conflict, TransferRefused or InvalidInput (nothing dialled for any)."""
    if not transfer_tool.token_valid(get_credentials(), call_id, token):
        raise Unauthorized("invalid transfer token")
    destination, reason, ultravox_call_id = body.get("destination"), body.get("reason"), body.get("ultravox_call_id")
    call = session.get(Call, call_id)
    # The token is this call's; the Ultravox id must be its too (a tool invocation
    # replayed against another call, or another agency's, finds nothing). An inbound
    # call's Ultravox id is written just after the carrier got its answer: until then it
    # must at least be no other call's.
    if call is None or not isinstance(ultravox_call_id, str) or not _is_its_leg(session, call, ultravox_call_id):
        raise NotFound("Call not found", field="call_id")
    root = _carrier_call(session, call)
    if root is None or root.carrier_call_id is None:
        raise NotFound("Call not found", field="call_id")
    if call_states.is_terminal(call.status) or call_states.is_terminal(root.status):
        raise CallOver("The call has ended")
    agent = session.scalar(select(AgentMapping).where(AgentMapping.id == call.agent_id,
                                                      AgentMapping.agency_id == call.agency_id))
    target = find_target(agent.transfer_targets if agent else None, destination)
    if target is None:
        log.warning("call %s: transfer to an unlisted destination refused", call.id)
        TRANSFERS.labels(root.source.value, "none", "refused").inc()
        raise TransferRefused("destination is not one of this agent's transfer targets", field="destination")
    if session.scalar(select(exists().where(CallTransfer.call_id == root.id,
                                            CallTransfer.status.in_(LIVE_STATUSES)))):
        raise Conflict("a transfer of this call is already under way")
    carrier = root.source.value
    credentials = carrier_credentials(session, call.agency_id, carrier)
    transfer = CallTransfer(
        id=uuid.uuid4(), agency_id=call.agency_id, call_id=root.id, carrier=carrier, target_name=target["name"],
        destination=target["destination"], mode=target.get("mode", "cold"),
        ring_timeout_seconds=target.get("ring_timeout_seconds", DEFAULT_RING_TIMEOUT),
        reason=(reason[:MAX_REASON] if isinstance(reason, str) else None), status=DIALING,
        ultravox_call_id=ultravox_call_id, started_at=utcnow())
    session.add(transfer)
    session.commit()  # before the carrier is asked: its callbacks must find the row

    transfer_id = transfer.id
    try:
        if transfer.mode == "warm":
            _hold_and_dial(session, transfer, root, target, credentials)
        else:
            dial = TransferDial(destination=target["destination"], caller_id=target.get("caller_id"),
                                ring_timeout=transfer.ring_timeout_seconds, command_id=str(transfer_id),
                                callback_url=lambda kind: callback_url(transfer_id, kind))
            client = carrier_client(carrier, credentials, timeout=CARRIER_TIMEOUT)
            transferer(carrier).redirect(client, root.carrier_call_id, dial)
    except CallerOnHoldReturned:
        return ToolResult(200, NOT_STARTED_RESULT.format(name=target["name"]))
    except (CarrierError, DomainError) as exc:
        log.error("call %s: transfer not started: %s", root.id, exc)
        return _not_started(session, transfer)
    except Exception as exc:  # noqa: BLE001 - the SDKs' own errors: the call goes on with the agent
        log.error("call %s: transfer not started: %s", root.id, type(exc).__name__)
        return _not_started(session, transfer)
    log.info("call %s: transfer %s to %s (%s) started", root.id, transfer.id, transfer.target_name, transfer.mode)
    return ToolResult(200, STARTED_RESULT.format(name=target["name"]))


def _is_its_leg(session: Session, call: Call, ultravox_call_id: str) -> bool:
    if call.ultravox_call_id is not None:
        return call.ultravox_call_id == ultravox_call_id
    return not session.scalar(select(exists().where(Call.ultravox_call_id == ultravox_call_id, Call.id != call.id)))


def _not_started(session: Session, transfer: CallTransfer) -> ToolResult:
    if _settle(session, transfer, LegReport(final=True, outcome=FAILED)):
        session.commit()
        _announce(session, transfer.id)
    return ToolResult(200, NOT_STARTED_RESULT.format(name=transfer.target_name))


def _carrier_call(session: Session, call: Call) -> Call | None:
    """The call that holds the carrier leg: the call itself, or, for an agent call that
    resumed a failed transfer, the call it resumed (same agency only)."""
    if call.carrier_call_id is not None:
        return call
    resumed_from = (call.metadata_ or {}).get(RESUMED_FROM_KEY)
    try:
        root_id = uuid.UUID(str(resumed_from))
    except ValueError:
        return None
    root = session.get(Call, root_id)
    return root if root is not None and root.agency_id == call.agency_id else None


# -- 2. the carrier's callbacks ----------------------------------------------------------

def verified_transfer(session: Session, transfer_id: uuid.UUID, request: WebhookRequest,
                      *, call_control: bool = False) -> CallTransfer:
    """The transfer a carrier callback is about, once its signature checks out with the
    owning agency's credentials (SignatureRejected otherwise; NotFound if unknown)."""
    transfer = session.get(CallTransfer, transfer_id)
    if transfer is None:
        raise NotFound("Transfer not found")
    carriers = get_carriers()
    adapter = carriers.call_control(transfer.carrier) if call_control else carriers.xml_adapter(transfer.carrier)
    carrier_webhooks.verified_credentials(session, adapter, request, transfer.agency_id)
    return transfer


def dial_instructions(session: Session, transfer_id: uuid.UUID, request: WebhookRequest) -> str:
    """Plivo asks what to dial once the call is transferred to our URL."""
    transfer = verified_transfer(session, transfer_id, request)
    target_dial = TransferDial(destination=transfer.destination, caller_id=_caller_id(session, transfer),
                               ring_timeout=transfer.ring_timeout_seconds, command_id=str(transfer.id),
                               callback_url=lambda kind: callback_url(transfer.id, kind))
    session.rollback()
    return transferer(transfer.carrier).dial_xml(target_dial)


def _caller_id(session: Session, transfer: CallTransfer) -> str | None:
    call = session.get(Call, transfer.call_id)
    agent = session.get(AgentMapping, call.agent_id) if call and call.agent_id else None
    target = find_target(agent.transfer_targets if agent else None, transfer.target_name)
    return target.get("caller_id") if target else None


def report(session: Session, transfer_id: uuid.UUID, request: WebhookRequest, *, call_control: bool = False) -> str:
    """A carrier reports the person's leg. Returns what an XML carrier should do with the
    caller next ("" for Telnyx, which is commanded through its REST API)."""
    transfer = verified_transfer(session, transfer_id, request, call_control=call_control)
    if call_control and transfer.mode == "warm":
        telnyx_warm_event(session, transfer, request)
        return ""
    carrier = transferer(transfer.carrier)
    leg = carrier.parse_report(request)
    if leg is None:
        session.rollback()
        return ""
    if not leg.final:
        session.execute(update(CallTransfer).where(CallTransfer.id == transfer.id, CallTransfer.status == DIALING)
                        .values(status=IN_CONVERSATION, answered_at=utcnow(),
                                carrier_leg_id=leg.leg_id or transfer.carrier_leg_id))
        session.commit()
        return ""
    if transfer.status == IN_CONVERSATION:  # they answered earlier: however it ends, they talked
        leg = LegReport(final=True, outcome=ANSWERED, leg_id=leg.leg_id, talk_seconds=leg.talk_seconds)
    elif call_control and leg.outcome == ANSWERED:  # ended "normally" but never answered
        leg = LegReport(final=True, outcome=FAILED, leg_id=leg.leg_id)
    transfer_id = transfer.id
    settled_now = _settle(session, transfer, leg)
    session.commit()
    join_url: str | None = None
    if leg.outcome != ANSWERED:
        join_url = _resume_join_url(session, transfer) if not settled_now else _bring_back(session, transfer)
        if call_control and settled_now and join_url:
            _resume_telnyx(session, transfer, join_url)
    if settled_now:
        _announce(session, transfer_id)
    return carrier.after_report(leg, join_url, GOODBYE)


def _settle(session: Session, transfer: CallTransfer, leg: LegReport) -> bool:
    """Record the outcome once (a repeated callback changes nothing); True if now.
    Emits call.transferred and counts the outcome."""
    now = utcnow()
    values: dict[str, Any] = {"status": ENDED, "outcome": leg.outcome, "ended_at": now}
    if leg.leg_id:
        values["carrier_leg_id"] = leg.leg_id
    if leg.outcome == ANSWERED and transfer.answered_at is None:
        values["answered_at"] = now
    changed = rows_affected(session.execute(
        update(CallTransfer).where(CallTransfer.id == transfer.id, CallTransfer.outcome.is_(None))
        .values(**values).execution_options(synchronize_session=False)))
    if not changed:
        return False
    session.refresh(transfer)
    log.info("transfer %s of call %s: %s", transfer.id, transfer.call_id, leg.outcome)
    return True


def _announce(session: Session, transfer_id: uuid.UUID) -> None:
    """The settled transfer as the agency event call.transferred (with the call that took
    the caller back, if any) and in the metrics; committed."""
    transfer = session.get(CallTransfer, transfer_id, populate_existing=True)
    if transfer is None or transfer.outcome is None:
        return
    TRANSFERS.labels(transfer.carrier, transfer.mode, transfer.outcome).inc()
    emit_event(session, transfer.agency_id, "call.transferred", transfer_data(transfer))
    session.commit()


def transfer_data(transfer: CallTransfer) -> dict[str, Any]:
    """A transfer as the history API and the call.transferred event show it."""
    return {"id": transfer.id, "call_id": transfer.call_id, "target": transfer.target_name,
            "destination": transfer.destination, "mode": transfer.mode, "reason": transfer.reason,
            "status": transfer.status, "outcome": transfer.outcome, "carrier": transfer.carrier,
            "carrier_leg_id": transfer.carrier_leg_id, "resumed_call_id": transfer.resumed_call_id,
            "started_at": transfer.started_at, "answered_at": transfer.answered_at, "ended_at": transfer.ended_at}


# -- warm transfers ---------------------------------------------------------------------

WHISPER = "This is a call transfer from the AI assistant. {reason} Press {digit} to take the call."
WHISPER_NO_PROMPT = "This is a call transfer from the AI assistant. {reason} Connecting you now."


def _room(transfer_id: uuid.UUID) -> str:
    return f"transfer-{transfer_id}"


def _hold_and_dial(session: Session, transfer: CallTransfer, root: Call, target: dict[str, Any],
                   credentials: Mapping[str, str]) -> None:
    """The caller on hold, the person's phone ringing; the leg id recorded."""
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
        _finish_warm(session, transfer, LegReport(final=True, outcome=FAILED))
        raise CallerOnHoldReturned() from None
    session.execute(update(CallTransfer).where(CallTransfer.id == transfer_id, CallTransfer.carrier_leg_id.is_(None))
                    .values(carrier_leg_id=leg_id).execution_options(synchronize_session=False))
    session.commit()


def _target_of(session: Session, transfer: CallTransfer) -> dict[str, Any]:
    call = session.get(Call, transfer.call_id)
    agent = session.get(AgentMapping, call.agent_id) if call and call.agent_id else None
    return find_target(agent.transfer_targets if agent else None, transfer.target_name) or {}


def _whisper_text(transfer: CallTransfer, accept_digit: str | None) -> str:
    reason = (transfer.reason or "").strip()
    reason = reason if reason.endswith((".", "!", "?")) or not reason else reason + "."
    template = WHISPER if accept_digit else WHISPER_NO_PROMPT
    return template.format(reason=reason or "The caller asked for you.", digit=accept_digit)


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
    accept_digit = _target_of(session, transfer).get("accept_digit", "1")
    if accept_digit is None:
        _accepted(session, transfer)
    text = _whisper_text(transfer, accept_digit)
    session.rollback()
    return carrier.whisper_xml(text, accept_digit, callback_url(transfer.id, "whisper-result"), _room(transfer.id))


def whisper_result(session: Session, transfer_id: uuid.UUID, request: WebhookRequest) -> str:
    """The key the person pressed (Twilio, Plivo): join the caller, or decline."""
    transfer = verified_transfer(session, transfer_id, request)
    carrier = transferer(transfer.carrier)
    accept_digit = _target_of(session, transfer).get("accept_digit", "1")
    if transfer.status == DIALING and carrier.parse_digits(request) == accept_digit:
        _accepted(session, transfer)
        return carrier.join_xml(_room(transfer.id))
    _declined(session, transfer)
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
    _finish_warm(session, transfer, leg)


def resume_instructions(session: Session, transfer_id: uuid.UUID, request: WebhookRequest) -> str:
    """Plivo: the caller's call was transferred back here: stream to the new agent call."""
    transfer = verified_transfer(session, transfer_id, request)
    carrier = transferer(transfer.carrier)
    join_url = _resume_join_url(session, transfer)
    session.rollback()
    return carrier.after_report(LegReport(final=True, outcome=FAILED), join_url, GOODBYE)


def _accepted(session: Session, transfer: CallTransfer) -> None:
    session.execute(update(CallTransfer).where(CallTransfer.id == transfer.id, CallTransfer.status == DIALING)
                    .values(status=IN_CONVERSATION, answered_at=utcnow())
                    .execution_options(synchronize_session=False))
    session.commit()


def _declined(session: Session, transfer: CallTransfer) -> None:
    _finish_warm(session, transfer, LegReport(final=True, outcome=DECLINED))


def _finish_warm(session: Session, transfer: CallTransfer, leg: LegReport) -> None:
    """Settle once; when nobody took the call, take the caller off hold, back to the agent."""
    transfer_id = transfer.id
    settled_now = _settle(session, transfer, leg)
    session.commit()
    if not settled_now:
        return
    if leg.outcome != ANSWERED:
        join_url = _bring_back(session, transfer)
        _resume_live(session, transfer_id, join_url)
    _announce(session, transfer_id)


def _resume_live(session: Session, transfer_id: uuid.UUID, join_url: str | None) -> None:
    transfer = session.get(CallTransfer, transfer_id)
    root = session.get(Call, transfer.call_id) if transfer else None
    if transfer is None or root is None or root.carrier_call_id is None:
        return
    carrier = transferer(transfer.carrier)
    try:
        credentials = carrier_credentials(session, transfer.agency_id, transfer.carrier)
        session.rollback()
        client = carrier_client(transfer.carrier, credentials, timeout=CARRIER_TIMEOUT)
        if join_url:
            carrier.resume_live(client, root.carrier_call_id, join_url, command_id=str(transfer_id),
                                resume_url=callback_url(transfer_id, "resume"))
        else:
            log.error("call %s: nobody took the call and the agent could not be reached", root.id)
    except Exception as exc:  # noqa: BLE001 - logged; the carrier's webhook is answered regardless
        log.error("call %s: could not take the caller off hold: %s", root.id, type(exc).__name__)


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
            _finish_warm(session, transfer, LegReport(final=True, outcome=outcome, leg_id=leg_id or None))
        return
    if event_type not in ("call.answered", "call.gather.ended") or transfer.status != DIALING:
        session.rollback()
        return
    root = session.get(Call, transfer.call_id)
    accept_digit = _target_of(session, transfer).get("accept_digit", "1")
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
            _accepted(session, transfer)
            return
        carrier.hang_up_leg(client, leg_id, command_id=str(transfer_id))
    except Exception as exc:  # noqa: BLE001 - the leg's hangup settles it; logged
        log.error("transfer %s: telnyx command failed: %s", transfer_id, type(exc).__name__)
        return
    _declined(session, transfer)


# -- 3. back to the agent ------------------------------------------------------------------

def _bring_back(session: Session, transfer: CallTransfer) -> str | None:
    """A new agent call continuing the conversation; its joinUrl, or None when it could
    not be started (the caller then hears an apology, never silence)."""
    root = session.get(Call, transfer.call_id)
    agent = session.get(AgentMapping, root.agent_id) if root and root.agent_id else None
    if root is None or agent is None or not transfer.ultravox_call_id:
        return None
    marks = {RESUMED_FROM_KEY: str(root.id), "transfer_id": str(transfer.id)}
    prompt = FAILED_PROMPT.format(name=transfer.target_name, outcome=transfer.outcome)
    new_call = NewCall(
        agency_id=root.agency_id, agent=agent, medium=get_carriers().by_name(transfer.carrier).medium,
        source=root.source, direction=root.direction, from_number=root.from_number, to_number=root.to_number,
        metadata=marks, stored_metadata=marks, prior_ultravox_call_id=transfer.ultravox_call_id,
        extra_body={"firstSpeakerSettings": {"agent": {"prompt": prompt}}})
    transfer_id = transfer.id
    try:
        started = start_call(session, new_call)
    except (UltravoxError, DomainError) as exc:
        log.error("call %s: could not bring the caller back to the agent: %s", root.id, type(exc).__name__)
        rollback_quietly(session)
        return None
    if started.call_id is not None:
        session.execute(update(Call).where(Call.id == started.call_id).values(join_url=started.join_url)
                        .execution_options(synchronize_session=False))
        session.execute(update(CallTransfer).where(CallTransfer.id == transfer_id)
                        .values(resumed_call_id=started.call_id).execution_options(synchronize_session=False))
        session.commit()
    log.info("call %s: caller back with the agent on call %s", root.id, started.call_id)
    return started.join_url


def _resume_join_url(session: Session, transfer: CallTransfer) -> str | None:
    """A repeated callback after the caller was brought back: the same agent call."""
    if transfer.resumed_call_id is None:
        return None
    return session.scalar(select(Call.join_url).where(Call.id == transfer.resumed_call_id))


def _resume_telnyx(session: Session, transfer: CallTransfer, join_url: str) -> None:
    root = session.get(Call, transfer.call_id)
    if root is None or root.carrier_call_id is None:
        return
    try:
        credentials = carrier_credentials(session, transfer.agency_id, transfer.carrier)
        session.rollback()
        client = carrier_client(transfer.carrier, credentials, timeout=CARRIER_TIMEOUT)
        transferer(transfer.carrier).resume(client, root.carrier_call_id, join_url, command_id=str(transfer.id))
    except Exception as exc:  # noqa: BLE001 - logged; the webhook is answered 200 regardless
        log.error("call %s: could not stream the caller back to the agent: %s", root.id, type(exc).__name__)


# -- 4. the call's end -------------------------------------------------------------------

def handed_off(session: Session, call_id: uuid.UUID) -> bool:
    """True once the call's carrier leg was handed to a transfer: its agent leg ending
    does not end it; the carrier says when it ends."""
    return bool(session.scalar(select(exists().where(CallTransfer.call_id == call_id))))


def transfers_of(session: Session, agency_id: uuid.UUID, call_id: uuid.UUID) -> list[dict[str, Any]]:
    rows = session.scalars(select(CallTransfer).where(CallTransfer.agency_id == agency_id,
                                                      CallTransfer.call_id == call_id)
                           .order_by(CallTransfer.started_at, CallTransfer.id))
    return [transfer_data(row) for row in rows]
