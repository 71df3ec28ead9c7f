"""Dial attempts and campaign contacts: their states, and the guarded updates that move them.

The states are stored as these strings (`dial_attempts.state`, `campaign_contacts.state`);
the values never change.

A dial attempt (one try at one contact) moves claimed → dialing → placed → ended:

  claimed   created by claim_batch; the carrier has not been asked (safe to re-queue)
  dialing   committed right before the carrier request: the carrier may have dialled
  placed    the carrier accepted the call (its call id is recorded)
  ended     the call reached a terminal status (`outcome`)
  aborted   never reached the carrier; the contact was re-queued (the attempt not
            counted) or closed
  failed    the carrier rejected the request
  unknown   "dialing" for too long, or a carrier error: the carrier may have dialled,
            so it is never dialled again; a callback may still settle it
  expired   placed (or dialing) with no terminal status for too long: frees the slot

A contact is queued until claimed, dialing while an attempt is live, and then queued
again for a retry, or closed: completed, failed, unknown (whether the callee was
reached cannot be told), suppressed (do-not-call) or cancelled (with its campaign).

The updates below are conditional (WHERE state IN ...): a dialer, a reaper and a
carrier callback racing for the same attempt can never both move it.
"""
from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import update
from sqlalchemy.orm import Session

from ...db import rows_affected
from ...models import CampaignContact, DialAttempt, utcnow

ATTEMPT_CLAIMED = "claimed"
ATTEMPT_DIALING = "dialing"
ATTEMPT_PLACED = "placed"
ATTEMPT_ENDED = "ended"
ATTEMPT_ABORTED = "aborted"
ATTEMPT_FAILED = "failed"
ATTEMPT_UNKNOWN = "unknown"
ATTEMPT_EXPIRED = "expired"

# Hold a slot of max_concurrent / max_concurrent_agency.
LIVE_ATTEMPT_STATES = (ATTEMPT_CLAIMED, ATTEMPT_DIALING, ATTEMPT_PLACED)
# The carrier was asked and we still wait for the call's outcome.
IN_FLIGHT_ATTEMPT_STATES = (ATTEMPT_DIALING, ATTEMPT_PLACED)
# Given up on (the carrier may have dialled): still settled by a late outcome, never retried.
GIVEN_UP_ATTEMPT_STATES = (ATTEMPT_UNKNOWN, ATTEMPT_EXPIRED)
# A terminal status of the attempt's call ends it.
SETTLEABLE_ATTEMPT_STATES = IN_FLIGHT_ATTEMPT_STATES + GIVEN_UP_ATTEMPT_STATES

CONTACT_QUEUED = "queued"
CONTACT_DIALING = "dialing"
CONTACT_COMPLETED = "completed"
CONTACT_FAILED = "failed"
CONTACT_UNKNOWN = "unknown"
CONTACT_SUPPRESSED = "suppressed"
CONTACT_CANCELLED = "cancelled"

# Every contact state, in the order progress reports them.
CONTACT_STATES = (CONTACT_QUEUED, CONTACT_DIALING, CONTACT_COMPLETED, CONTACT_FAILED, CONTACT_UNKNOWN,
                  CONTACT_SUPPRESSED, CONTACT_CANCELLED)
# Still to be dialled, or being dialled: the campaign is not finished.
UNFINISHED_CONTACT_STATES = (CONTACT_QUEUED, CONTACT_DIALING)


def update_attempt(session: Session, attempt_id: uuid.UUID, from_states: tuple[str, ...], **values: Any) -> bool:
    """UPDATE the attempt with `values` if it is still in one of `from_states`; True if it was."""
    values.setdefault("state_changed_at", utcnow())
    result = session.execute(update(DialAttempt).where(DialAttempt.id == attempt_id,
                                                       DialAttempt.state.in_(from_states))
                             .values(**values).execution_options(synchronize_session=False))
    return rows_affected(result) == 1


def requeue_contact(session: Session, contact_id: uuid.UUID, at: datetime, *, uncount: bool) -> None:
    """Back to the queue; `uncount`: the attempt never reached the carrier."""
    values: dict[str, Any] = {"state": CONTACT_QUEUED, "next_attempt_at": at}
    if uncount:
        values["attempts"] = CampaignContact.attempts - 1
    session.execute(update(CampaignContact).where(CampaignContact.id == contact_id,
                                                  CampaignContact.state == CONTACT_DIALING)
                    .values(**values).execution_options(synchronize_session=False))


def close_contact(session: Session, contact_id: uuid.UUID, state: str, outcome: str | None) -> None:
    """A contact being dialled gets its final `state` and last outcome."""
    session.execute(update(CampaignContact).where(CampaignContact.id == contact_id,
                                                  CampaignContact.state == CONTACT_DIALING)
                    .values(state=state, last_outcome=outcome).execution_options(synchronize_session=False))


def mark_placed(session: Session, attempt_id: uuid.UUID, contact_id: uuid.UUID, carrier_call_id: str,
                from_states: tuple[str, ...]) -> bool:
    """The carrier placed the attempt's call: "placed" with its call id, if the attempt is
    still in one of `from_states`; a contact closed as unknown meanwhile is dialling
    again. True if it moved (the caller commits)."""
    if not update_attempt(session, attempt_id, from_states, state=ATTEMPT_PLACED, carrier_call_id=carrier_call_id):
        return False
    reopen_contact(session, contact_id)
    return True


def reopen_contact(session: Session, contact_id: uuid.UUID) -> None:
    """A contact closed as unknown is being dialled after all: its attempt proved placed."""
    session.execute(update(CampaignContact).where(CampaignContact.id == contact_id,
                                                  CampaignContact.state == CONTACT_UNKNOWN)
                    .values(state=CONTACT_DIALING).execution_options(synchronize_session=False))
