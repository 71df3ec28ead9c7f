"""Dial attempts and contacts: their states, and the guarded updates that move them.

The updates are conditional (WHERE state IN ...): whoever moves an attempt first
wins, and a dialer, a reaper and a carrier callback racing for the same attempt can
never both move it.
"""
from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import update
from sqlalchemy.orm import Session

from ...models import CampaignContact, DialAttempt, utcnow

LIVE_ATTEMPT_STATES = ("claimed", "dialing", "placed")


def update_attempt(session: Session, attempt_id: uuid.UUID, from_states: tuple[str, ...], **values: Any) -> bool:
    values.setdefault("state_changed_at", utcnow())
    result = session.execute(update(DialAttempt).where(DialAttempt.id == attempt_id,
                                                       DialAttempt.state.in_(from_states))
                             .values(**values).execution_options(synchronize_session=False))
    return result.rowcount == 1


def requeue_contact(session: Session, contact_id: uuid.UUID, at: datetime, *, uncount: bool) -> None:
    """Back to the queue; `uncount`: the attempt never reached the carrier."""
    values: dict[str, Any] = {"state": "queued", "next_attempt_at": at}
    if uncount:
        values["attempts"] = CampaignContact.attempts - 1
    session.execute(update(CampaignContact).where(CampaignContact.id == contact_id,
                                                  CampaignContact.state == "dialing")
                    .values(**values).execution_options(synchronize_session=False))


def close_contact(session: Session, contact_id: uuid.UUID, state: str, outcome: str | None) -> None:
    session.execute(update(CampaignContact).where(CampaignContact.id == contact_id,
                                                  CampaignContact.state == "dialing")
                    .values(state=state, last_outcome=outcome).execution_options(synchronize_session=False))
