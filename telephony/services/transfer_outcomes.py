"""What becomes of a transfer, cold or warm: the person answering, the outcome settled
once and announced (call.transferred, the metric), and, when nobody took the call, the
caller brought back to the agent.

Bringing the caller back is a new Ultravox call for the same agent, continuing the
conversation (`priorCallId`), told that the transfer failed. It is a call row of its own
(so its billing and lifecycle are the ordinary ones), marked with the call it resumes.
"""
from __future__ import annotations

import logging
import uuid
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from ..carriers.registry import get_carriers
from ..carriers.transfers import ANSWERED, LegReport
from ..db import rollback_quietly, rows_affected
from ..errors import DomainError
from ..metrics import TRANSFERS
from ..models import AgentMapping, Call, CallTransfer, utcnow
from ..ultravox_errors import UltravoxError
from .calls import NewCall, start_call
from .events import emit_event
from .outbound import carrier_client, carrier_credentials
from .transfer_carriers import CARRIER_TIMEOUT, callback_url, transferer

log = logging.getLogger(__name__)

# A transfer's statuses: the person's phone rings, they talk, it is over (with an outcome).
DIALING, IN_CONVERSATION, ENDED = "dialing", "answered", "ended"
LIVE_STATUSES = (DIALING, IN_CONVERSATION)
# The agent call that brought a caller back names the call it resumed (its metadata).
RESUMED_FROM_KEY = "resumed_from_call_id"
GOODBYE = "We are sorry, nobody could take your call right now. Please call again later. Goodbye."
FAILED_PROMPT = ("You tried to transfer the caller to {name}, but the transfer did not go through ({outcome}). "
                 "Tell the caller briefly that nobody could take the call right now, and offer to help another "
                 "way or to take a message.")


def mark_answered(session: Session, transfer_id: uuid.UUID, leg_id: str | None = None) -> None:
    """The person took the call (still ringing until now: a repeat changes nothing); committed."""
    values: dict[str, Any] = {"status": IN_CONVERSATION, "answered_at": utcnow()}
    if leg_id:
        values["carrier_leg_id"] = leg_id
    session.execute(update(CallTransfer).where(CallTransfer.id == transfer_id, CallTransfer.status == DIALING)
                    .values(**values).execution_options(synchronize_session=False))
    session.commit()


def settle(session: Session, transfer: CallTransfer, leg: LegReport) -> bool:
    """Record the outcome once (a repeated callback changes nothing); True if now.
    Not committed; `announce` tells the agency once it is."""
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


def announce(session: Session, transfer_id: uuid.UUID) -> None:
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


# -- back to the agent ------------------------------------------------------------------

def bring_back(session: Session, transfer: CallTransfer) -> str | None:
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


def resume_join_url(session: Session, transfer: CallTransfer) -> str | None:
    """A repeated callback after the caller was brought back: the same agent call."""
    if transfer.resumed_call_id is None:
        return None
    return session.scalar(select(Call.join_url).where(Call.id == transfer.resumed_call_id))


def put_caller_back(session: Session, transfer_id: uuid.UUID, join_url: str | None, *, on_hold: bool) -> None:
    """Command the caller's carrier leg onto the agent call at ``join_url``: out of the
    hold of a warm transfer, or (Telnyx, cold) back from the failed dial. Failures are
    logged: the carrier's webhook is answered regardless."""
    transfer = session.get(CallTransfer, transfer_id)
    root = session.get(Call, transfer.call_id) if transfer else None
    if transfer is None or root is None or root.carrier_call_id is None:
        return
    if not join_url:
        log.error("call %s: nobody took the call and the agent could not be reached", root.id)
        return
    carrier = transferer(transfer.carrier)
    try:
        credentials = carrier_credentials(session, transfer.agency_id, transfer.carrier)
        session.rollback()
        client = carrier_client(transfer.carrier, credentials, timeout=CARRIER_TIMEOUT)
        if on_hold:
            carrier.resume_live(client, root.carrier_call_id, join_url, command_id=str(transfer_id),
                                resume_url=callback_url(transfer_id, "resume"))
        else:
            carrier.resume(client, root.carrier_call_id, join_url, command_id=str(transfer_id))
    except Exception as exc:  # noqa: BLE001 - logged; the carrier's webhook is answered regardless
        log.error("call %s: could not put the caller back with the agent: %s", root.id, type(exc).__name__)
