"""Claiming: the due campaigns, and `claim_batch`, one short transaction per campaign.

Any number of dispatchers (threads, processes, machines) claim at once; they
cooperate through the database only:

  * the agency row, then the campaign row, are locked (PostgreSQL: SELECT .. FOR
    UPDATE; SQLite: the first statement is an UPDATE, which takes the database write
    lock). Under that lock the live attempts of the campaign and of the agency are
    counted, so max_concurrent / max_concurrent_agency hold across all dispatchers;
  * due contacts are read (FOR UPDATE SKIP LOCKED on PostgreSQL), checked against
    their calling window in their own time zone (closed: next_attempt_at becomes
    next_open, not dialled) and the do-not-call list, and each claimed contact gets
    a `dial_attempts` row in state "claimed" (unique per contact and attempt number,
    so two dispatchers can never create the same attempt).

Each claimed attempt is then dialled by `dial.dial_attempt`.
"""
from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import func, or_, select, update
from sqlalchemy.orm import Session

from ...db import end_read
from ...models import Agency, Campaign, CampaignContact, DialAttempt, utcnow
from ..capacity import campaign_slots
from ..do_not_call import listed_among
from .attempts import ATTEMPT_CLAIMED, CONTACT_DIALING, CONTACT_QUEUED, CONTACT_SUPPRESSED, LIVE_ATTEMPT_STATES
from .windows import CallingWindow, is_open, next_open, timezone_for


def due_campaign_ids(session: Session, now: datetime) -> list[uuid.UUID]:
    """Running campaigns with a contact due at `now`, oldest first."""
    ids = list(session.scalars(
        select(Campaign.id).where(Campaign.status == "running", Campaign.start_at <= now,
                                  or_(Campaign.backoff_until.is_(None), Campaign.backoff_until <= now),
                                  select(CampaignContact.id).where(CampaignContact.campaign_id == Campaign.id,
                                                                   CampaignContact.state == CONTACT_QUEUED,
                                                                   CampaignContact.next_attempt_at <= now)
                                  .exists())
        .order_by(Campaign.created_at)))
    end_read(session)
    return ids


def claim_batch(session: Session, campaign_id: uuid.UUID, limit: int, *,
                now: datetime | None = None) -> list[uuid.UUID]:
    """Claim up to `limit` due contacts of one campaign; returns the new attempt ids (committed)."""
    now = now or utcnow()
    pg = _is_pg(session)
    end_read(session)  # the claim is a transaction of its own, begun by its locks
    try:
        campaign = _lock_campaign(session, campaign_id, pg)
        if campaign is None or not _may_dial_now(campaign, now):
            session.rollback()  # nothing to claim: release the locks
            return []
        slots = _free_slots(session, campaign, limit)
        if slots <= 0:
            session.rollback()
            return []
        attempt_ids = _claim_due_contacts(session, campaign, slots, now, pg)
        session.commit()
        return attempt_ids
    except BaseException:
        session.rollback()
        raise


def _lock_campaign(session: Session, campaign_id: uuid.UUID, pg: bool) -> Campaign | None:
    """Lock the campaign for this claim (PostgreSQL: its agency's row first; SQLite: the
    database write lock). None: it is gone, or another dispatcher is claiming it."""
    if pg:
        agency_id = session.scalar(select(Campaign.agency_id).where(Campaign.id == campaign_id))
        if agency_id is None:
            return None
        # Lock order agency -> campaign everywhere: the agency cap covers all its campaigns.
        session.execute(select(Agency.id).where(Agency.id == agency_id).with_for_update())
        return session.scalar(select(Campaign).where(Campaign.id == campaign_id).with_for_update(skip_locked=True))
    # The UPDATE takes SQLite's write lock first, serialising claimers.
    session.execute(update(Campaign).where(Campaign.id == campaign_id)
                    .values(dispatch_seq=Campaign.dispatch_seq + 1)
                    .execution_options(synchronize_session=False))
    return session.scalar(select(Campaign).where(Campaign.id == campaign_id))


def _may_dial_now(campaign: Campaign, now: datetime) -> bool:
    return campaign.status == "running" and campaign.start_at <= now \
        and (campaign.backoff_until is None or campaign.backoff_until <= now)


def _free_slots(session: Session, campaign: Campaign, limit: int) -> int:
    """At most `limit`, within max_concurrent and max_concurrent_agency (live attempts
    counted under the claim's lock)."""
    slots = min(limit, campaign.max_concurrent - _live_count(session, DialAttempt.campaign_id == campaign.id))
    if campaign.max_concurrent_agency:
        slots = min(slots, campaign.max_concurrent_agency
                    - _live_count(session, DialAttempt.agency_id == campaign.agency_id))
    # The agency's Ultravox limit, less the slots reserved for inbound callers: live calls
    # of every kind count (services/capacity.py).
    agency_slots = campaign_slots(session, campaign.agency_id) if slots > 0 else None
    if agency_slots is not None:
        slots = min(slots, agency_slots)
    return slots


def _live_count(session: Session, *conditions) -> int:
    return session.scalar(select(func.count()).select_from(DialAttempt)
                          .where(DialAttempt.state.in_(LIVE_ATTEMPT_STATES), *conditions)) or 0


def _claim_due_contacts(session: Session, campaign: Campaign, slots: int, now: datetime,
                        pg: bool) -> list[uuid.UUID]:
    """Up to `slots` due contacts become "dialing" with a "claimed" attempt each (not
    committed). On the way, listed numbers are suppressed and contacts outside their
    calling window are put off until it opens."""
    window = _window(campaign)
    fetch = max(2 * slots, 50) if window else slots
    query = (select(CampaignContact)
             .where(CampaignContact.campaign_id == campaign.id, CampaignContact.state == CONTACT_QUEUED,
                    CampaignContact.next_attempt_at <= now)
             .order_by(CampaignContact.next_attempt_at, CampaignContact.id).limit(fetch))
    if pg:
        query = query.with_for_update(skip_locked=True)
    contacts = list(session.scalars(query))
    dnc = listed_among(session, campaign.agency_id, [c.phone for c in contacts])
    # Attempt numbers never repeat (aborted attempts keep theirs; `attempts` counts real dials).
    numbers = dict(session.execute(select(DialAttempt.contact_id, func.max(DialAttempt.attempt_number))
                                   .where(DialAttempt.contact_id.in_([c.id for c in contacts]))
                                   .group_by(DialAttempt.contact_id)).all()) if contacts else {}
    attempt_ids: list[uuid.UUID] = []
    for contact in contacts:
        if contact.phone in dnc:
            contact.state, contact.last_outcome = CONTACT_SUPPRESSED, "do-not-call"
            continue
        if window is not None:
            zone = _contact_zone(contact, campaign)
            if not is_open(window, zone, now):
                contact.next_attempt_at = next_open(window, zone, now)
                continue
        if len(attempt_ids) >= slots:
            continue
        contact.state = CONTACT_DIALING
        contact.attempts += 1
        attempt = DialAttempt(id=uuid.uuid4(), campaign_id=campaign.id, contact_id=contact.id,
                              agency_id=campaign.agency_id, attempt_number=(numbers.get(contact.id) or 0) + 1,
                              state=ATTEMPT_CLAIMED, created_at=now, state_changed_at=now)
        session.add(attempt)
        attempt_ids.append(attempt.id)
    return attempt_ids


def _window(campaign: Campaign) -> CallingWindow | None:
    return CallingWindow.from_dict(campaign.calling_window) if campaign.calling_window else None


def _contact_zone(contact: CampaignContact, campaign: Campaign) -> str:
    """The contact's own zone, else the zone its number belongs to, else the campaign's default."""
    return contact.timezone or timezone_for(contact.phone, campaign.default_timezone) or campaign.default_timezone


def _is_pg(session: Session) -> bool:
    return session.get_bind().dialect.name == "postgresql"
