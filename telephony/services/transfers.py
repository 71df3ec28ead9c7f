"""Live call control: the agent hands the caller to a person, and gets the caller back
when nobody takes the call.

1. The agent's `transferCall` tool (services/transfer_tool.py) posts here. `invoke`
   accepts nothing else: a token that is not the call's own is 401, a call whose
   Ultravox id does not match (another call, another agency's call) is 404, a call that
   is over is 409, and a destination that is not one of the agent's target names is
   refused (422) with nothing dialled: the model chooses a name, never a number.
2. The transfer is recorded (call_transfers) and committed before the carrier is asked,
   so the carrier's callbacks always find it; then the live carrier call is redirected
   to dial the target (carriers/transfers.py), or, for a warm transfer, the caller is put
   on hold while the person is dialled (warm_transfers.py), and the tool answers with a
   sentence the agent can speak.
3. The carrier reports the person's leg (`report`): answered, busy, no-answer, declined
   or failed. On anything but answered the caller is brought back to the agent
   (transfer_outcomes.py).
4. While a call has been handed off, the end of its first agent leg does not end it:
   the carrier's status callback does (ultravox_events / call_status ask `handed_off`).
"""
from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
from typing import Any, Mapping

from sqlalchemy import exists, select
from sqlalchemy.orm import Session

from .. import call_states
from ..carriers.base import WebhookRequest
from ..carriers.transfers import ANSWERED, FAILED, LegReport, TransferDial
from ..credentials import get_credentials
from ..errors import Conflict, DomainError, NotFound, Unauthorized
from ..metrics import TRANSFERS
from ..models import AgentMapping, Call, CallTransfer, utcnow
from . import transfer_tool
from .outbound import CarrierError, carrier_client, carrier_credentials
from .transfer_carriers import CARRIER_TIMEOUT, callback_url, target_settings, transferer, verified_transfer
from .transfer_outcomes import (
    DIALING,
    GOODBYE,
    IN_CONVERSATION,
    LIVE_STATUSES,
    RESUMED_FROM_KEY,
    announce,
    bring_back,
    mark_answered,
    put_caller_back,
    resume_join_url,
    settle,
    transfer_data,
)
from .transfer_targets import DEFAULT_RING_TIMEOUT, find_target
from .warm_transfers import CallerOnHoldReturned, hold_and_dial, telnyx_warm_event

log = logging.getLogger(__name__)

MAX_REASON = 500
# What the agent hears back from the tool. Cold transfers cut the agent's leg moments
# later, so these are short.
STARTED_RESULT = "Transferring the caller to {name} now. Say nothing more."
NOT_STARTED_RESULT = ("The transfer to {name} could not be started. Apologise, and offer to help another way "
                      "or to take a message.")


class TransferRefused(DomainError):
    status = 422
    code = "destination_not_allowed"


class CallOver(Conflict):
    code = "call_ended"


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
            hold_and_dial(session, transfer, root, target, credentials)
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
    if settle(session, transfer, LegReport(final=True, outcome=FAILED)):
        session.commit()
        announce(session, transfer.id)
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

def dial_instructions(session: Session, transfer_id: uuid.UUID, request: WebhookRequest) -> str:
    """Plivo asks what to dial once the call is transferred to our URL."""
    transfer = verified_transfer(session, transfer_id, request)
    caller_id = target_settings(session, transfer).get("caller_id")
    target_dial = TransferDial(destination=transfer.destination, caller_id=caller_id,
                               ring_timeout=transfer.ring_timeout_seconds, command_id=str(transfer.id),
                               callback_url=lambda kind: callback_url(transfer.id, kind))
    session.rollback()
    return transferer(transfer.carrier).dial_xml(target_dial)


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
        mark_answered(session, transfer.id, leg.leg_id)
        return ""
    if transfer.status == IN_CONVERSATION:  # they answered earlier: however it ends, they talked
        leg = LegReport(final=True, outcome=ANSWERED, leg_id=leg.leg_id, talk_seconds=leg.talk_seconds)
    elif call_control and leg.outcome == ANSWERED:  # ended "normally" but never answered
        leg = LegReport(final=True, outcome=FAILED, leg_id=leg.leg_id)
    transfer_id = transfer.id
    settled_now = settle(session, transfer, leg)
    session.commit()
    join_url: str | None = None
    if leg.outcome != ANSWERED:
        join_url = bring_back(session, transfer) if settled_now else resume_join_url(session, transfer)
        if call_control and settled_now:  # Telnyx is commanded, not answered with XML
            put_caller_back(session, transfer_id, join_url, on_hold=False)
    if settled_now:
        announce(session, transfer_id)
    return carrier.after_report(leg, join_url, GOODBYE)


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
