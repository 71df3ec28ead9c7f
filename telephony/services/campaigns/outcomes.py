"""Outcomes: how an attempt ends, and the reaper for attempts that never report back.

An attempt ends when its call reaches a terminal status (carrier status callbacks and
Ultravox webhooks write `calls.status`; `settle_call` right after, `reconcile` on its
next pass for the rest); the retry policy then re-queues the contact (busy / no-answer
/ failed, after the delay, up to max_attempts; a machine hung up on, "voicemail", by the
campaign's own voicemail rule) or closes it. `reconcile` also reaps
attempts stuck in a state: "claimed" for CLAIM_TIMEOUT (the carrier was never asked:
re-queued), "dialing" without a carrier id for DIAL_TIMEOUT (the carrier may have
dialled: "unknown", never redialled), and a placed call that never reports back frees
its slot after LIVE_TIMEOUT (state "expired", contact "unknown": it may have been
answered). A carrier callback for an attempt given up as "unknown" still binds it
(`bind_attempt`) and records its outcome, without a retry. Campaigns with no contact
left to dial are completed (`complete_finished_campaigns`, event campaign.completed).
"""
from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from ... import answering_machine as amd
from ... import call_states
from ...db import end_read, rows_affected, transaction
from ...metrics import CAMPAIGN_OUTCOMES
from ...models import Agency, Call, Campaign, CampaignContact, DialAttempt, utcnow
from ..events import emit_event
from .attempts import (
    ATTEMPT_ABORTED,
    ATTEMPT_CLAIMED,
    ATTEMPT_DIALING,
    ATTEMPT_ENDED,
    ATTEMPT_EXPIRED,
    ATTEMPT_UNKNOWN,
    CONTACT_COMPLETED,
    CONTACT_DIALING,
    CONTACT_FAILED,
    CONTACT_QUEUED,
    CONTACT_UNKNOWN,
    IN_FLIGHT_ATTEMPT_STATES,
    SETTLEABLE_ATTEMPT_STATES,
    UNFINISHED_CONTACT_STATES,
    close_contact,
    mark_placed,
    requeue_contact,
    update_attempt,
)
from .manage import contact_counts

CLAIM_TIMEOUT = timedelta(seconds=120)     # claimed, carrier never asked: safe to re-queue
DIAL_TIMEOUT = timedelta(seconds=60)       # carrier asked, no answer recorded: unknown
LIVE_TIMEOUT = timedelta(hours=2)          # placed, never reported back: frees the slot


@dataclass
class DispatchSettings:
    claim_timeout: timedelta = CLAIM_TIMEOUT
    dial_timeout: timedelta = DIAL_TIMEOUT
    live_timeout: timedelta = LIVE_TIMEOUT


def settle_call(session: Session, call_id: uuid.UUID) -> bool:
    """If the call of a campaign attempt has reached a terminal status, end the attempt
    and apply the retry policy. Idempotent; True if it settled something now."""
    end_read(session)
    row = session.execute(select(DialAttempt.id, Call.status, Call.answered_by, Call.machine_action)
                          .join(Call, Call.id == DialAttempt.call_id)
                          .where(DialAttempt.call_id == call_id)).first()
    end_read(session)
    if row is None or not call_states.is_terminal(row.status):
        return False
    return finish_attempt(session, row.id, amd.attempt_outcome(row.status, row.answered_by, row.machine_action))


def finish_attempt(session: Session, attempt_id: uuid.UUID, outcome: str) -> bool:
    """End the attempt with `outcome` (its call's terminal status, or what an answering
    machine made of it: `answering_machine.attempt_outcome`), then apply the retry policy
    to its contact. True if this call ended it."""
    end_read(session)
    previous = session.scalar(select(DialAttempt.state).where(DialAttempt.id == attempt_id))
    end_read(session)  # SQLite: the write below opens its own transaction (no read-to-write upgrade)
    if previous not in SETTLEABLE_ATTEMPT_STATES or not update_attempt(
            session, attempt_id, (previous,), state=ATTEMPT_ENDED, outcome=outcome, ended_at=utcnow()):
        session.rollback()  # not in a state that ends, or moved by someone else meanwhile
        return False
    # An attempt we had given up on (GIVEN_UP_ATTEMPT_STATES) is recorded but never retried:
    # whether the callee was reached cannot be told for sure.
    _apply_retry_policy(session, attempt_id, outcome, may_retry=previous in IN_FLIGHT_ATTEMPT_STATES)
    session.commit()
    CAMPAIGN_OUTCOMES.labels(outcome).inc()
    return True


def _apply_retry_policy(session: Session, attempt_id: uuid.UUID, outcome: str, *, may_retry: bool) -> None:
    """The contact of an attempt that just ended: completed, queued again for a retry
    (busy / no-answer / failed, after the delay, up to max_attempts), or failed."""
    attempt = session.get(DialAttempt, attempt_id)
    assert attempt is not None  # its update has just matched
    contact = session.get(CampaignContact, attempt.contact_id)
    campaign = session.get(Campaign, attempt.campaign_id)
    if contact is None or campaign is None or contact.state not in (CONTACT_DIALING, CONTACT_UNKNOWN):
        return
    contact.last_outcome = outcome
    # Each retry rule counts its own attempts: voicemails have theirs (count and delay),
    # busy / no-answer / failed the others.
    voicemails = session.scalar(select(func.count()).select_from(DialAttempt).where(
        DialAttempt.contact_id == contact.id, DialAttempt.outcome == amd.VOICEMAIL)) or 0
    may_retry = may_retry and campaign.status != "cancelled"
    if outcome in (call_states.COMPLETED, amd.VOICEMAIL_LEFT):
        contact.state = CONTACT_COMPLETED
    elif outcome == amd.VOICEMAIL and may_retry and voicemails <= campaign.voicemail_max_retries:
        contact.state = CONTACT_QUEUED
        contact.next_attempt_at = utcnow() + timedelta(seconds=campaign.voicemail_retry_delay_seconds)
    elif (may_retry and outcome in (campaign.retry_on or [])
          and contact.attempts - voicemails < campaign.max_attempts):
        contact.state = CONTACT_QUEUED
        contact.next_attempt_at = utcnow() + timedelta(seconds=campaign.retry_delay_seconds)
    else:
        contact.state = CONTACT_FAILED


def reconcile(session: Session, settings: DispatchSettings | None = None, *, now: datetime | None = None) -> dict:
    """Settle finished calls, reap stuck attempts, complete finished campaigns. Each
    read ends before its writes; each attempt is moved in a transaction of its own."""
    settings = settings or DispatchSettings()
    now = now or utcnow()
    stats = {"settled": 0, "requeued": 0, "unknown": 0, "expired": 0, "completed_campaigns": 0,
             "resumed_campaigns": 0}
    end_read(session)
    finished = session.execute(
        select(DialAttempt.id, Call.status, Call.answered_by, Call.machine_action)
        .join(Call, Call.id == DialAttempt.call_id)
        .where(DialAttempt.state.in_(SETTLEABLE_ATTEMPT_STATES),
               Call.status.in_(sorted(call_states.TERMINAL))).limit(1000)).all()
    end_read(session)
    for attempt_id, status, answered_by, machine_action in finished:
        stats["settled"] += finish_attempt(session, attempt_id,
                                           amd.attempt_outcome(status, answered_by, machine_action))
    # claimed too long: the carrier was never asked (the dialer died or hangs): re-queue.
    stale = session.execute(select(DialAttempt.id, DialAttempt.contact_id).where(
        DialAttempt.state == ATTEMPT_CLAIMED, DialAttempt.state_changed_at < now - settings.claim_timeout)).all()
    end_read(session)
    for attempt_id, contact_id in stale:
        with transaction(session):
            if update_attempt(session, attempt_id, (ATTEMPT_CLAIMED,), state=ATTEMPT_ABORTED,
                              error="claim timed out", ended_at=now):
                requeue_contact(session, contact_id, now, uncount=True)
                stats["requeued"] += 1
    # dialing too long without a carrier id: the carrier MAY have dialled. Never redial.
    stuck = session.execute(select(DialAttempt.id, DialAttempt.contact_id).where(
        DialAttempt.state == ATTEMPT_DIALING, DialAttempt.carrier_call_id.is_(None),
        DialAttempt.state_changed_at < now - settings.dial_timeout)).all()
    end_read(session)
    for attempt_id, contact_id in stuck:
        with transaction(session):
            if update_attempt(session, attempt_id, (ATTEMPT_DIALING,), state=ATTEMPT_UNKNOWN,
                              error="no answer from the carrier request (worker died or carrier hung)"):
                close_contact(session, contact_id, CONTACT_UNKNOWN, "unknown")
                stats["unknown"] += 1
    # placed but silent for too long: free the slot; the outcome stays unknown.
    silent = session.execute(select(DialAttempt.id, DialAttempt.contact_id).where(
        DialAttempt.state.in_(IN_FLIGHT_ATTEMPT_STATES),
        DialAttempt.state_changed_at < now - settings.live_timeout)).all()
    end_read(session)
    for attempt_id, contact_id in silent:
        with transaction(session):
            if update_attempt(session, attempt_id, IN_FLIGHT_ATTEMPT_STATES, state=ATTEMPT_EXPIRED,
                              error="no terminal status reported in time"):
                close_contact(session, contact_id, CONTACT_UNKNOWN, "no-report")
                stats["expired"] += 1
    stats["completed_campaigns"] = complete_finished_campaigns(session)
    stats["resumed_campaigns"] = resume_campaigns_with_credit(session)
    return stats


# `paused_reason` of a campaign paused because its agency ran out of credit: it resumes
# by itself once the agency has credit again (no person needs to look).
PAUSED_FOR_CREDIT = "insufficient_credits"


def resume_campaigns_with_credit(session: Session) -> int:
    """Campaigns paused for lack of credit whose agency has credit again run again.
    Read first: this runs every reconcile pass, and nearly always there is nothing to
    resume (no write, no write lock). Returns how many."""
    paused_with_credit = (Campaign.status == "paused", Campaign.paused_reason == PAUSED_FOR_CREDIT,
                          select(Agency.id).where(Agency.id == Campaign.agency_id, Agency.credit_balance > 0).exists())
    end_read(session)
    candidates = list(session.scalars(select(Campaign.id).where(*paused_with_credit)))
    end_read(session)
    if not candidates:
        return 0
    with transaction(session):
        result = session.execute(update(Campaign).where(Campaign.id.in_(candidates), *paused_with_credit)
                                 .values(status="running", paused_reason=None)
                                 .execution_options(synchronize_session=False))
    return rows_affected(result)


def complete_finished_campaigns(session: Session) -> int:
    """Running campaigns with contacts, none of them queued or dialing, become completed
    (event campaign.completed). Returns how many."""
    end_read(session)
    candidates = list(session.scalars(select(Campaign.id).where(
        Campaign.status == "running",
        ~select(CampaignContact.id).where(CampaignContact.campaign_id == Campaign.id,
                                          CampaignContact.state.in_(UNFINISHED_CONTACT_STATES)).exists(),
        select(CampaignContact.id).where(CampaignContact.campaign_id == Campaign.id).exists())))
    end_read(session)
    done = 0
    for campaign_id in candidates:
        with transaction(session):  # the event is written with the status change, or not at all
            result = session.execute(update(Campaign).where(
                Campaign.id == campaign_id, Campaign.status == "running",
                ~select(CampaignContact.id).where(CampaignContact.campaign_id == campaign_id,
                                                  CampaignContact.state.in_(UNFINISHED_CONTACT_STATES)).exists())
                .values(status="completed", completed_at=utcnow()).execution_options(synchronize_session=False))
            if rows_affected(result) == 1:
                campaign = session.get(Campaign, campaign_id)
                assert campaign is not None  # its update has just matched
                emit_event(session, campaign.agency_id, "campaign.completed",
                           {"campaign_id": str(campaign_id), "name": campaign.name,
                            "contacts": contact_counts(session, campaign_id)})
                done += 1
    return done


def bind_attempt(session: Session, call_id: uuid.UUID, carrier_call_id: str | None) -> None:
    """A callback proves the carrier placed the call: an attempt stuck in "dialing" or
    given up as "unknown" (its worker died mid-dial) becomes "placed"."""
    if not carrier_call_id:
        return
    end_read(session)
    attempt = session.execute(select(DialAttempt.id, DialAttempt.contact_id)
                              .where(DialAttempt.call_id == call_id)).first()
    end_read(session)  # SQLite: the write below opens its own transaction
    if attempt is None:
        return
    with transaction(session):  # conditional: an attempt ended meanwhile stays ended
        mark_placed(session, attempt.id, attempt.contact_id, carrier_call_id, (ATTEMPT_DIALING, ATTEMPT_UNKNOWN))
