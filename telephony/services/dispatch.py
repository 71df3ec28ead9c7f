"""The campaign dispatcher: claims due contacts, paces and caps the dials, reconciles outcomes.

Any number of dispatchers (threads, processes, machines) cooperate through the
database only:

Claiming (`claim_batch`), one short transaction per campaign:
  * the agency row, then the campaign row, are locked (PostgreSQL: SELECT .. FOR
    UPDATE; SQLite: the first statement is an UPDATE, which takes the database write
    lock). Under that lock the live attempts of the campaign and of the agency are
    counted, so max_concurrent / max_concurrent_agency hold across all dispatchers;
  * due contacts are read (FOR UPDATE SKIP LOCKED on PostgreSQL), checked against
    their calling window in their own time zone (closed: next_attempt_at becomes
    next_open, not dialled) and the do-not-call list, and each claimed contact gets
    a `dial_attempts` row in state "claimed" (unique per contact and attempt number,
    so two dispatchers can never create the same attempt).

Dialling (`dial_attempt`), per attempt, no transaction held across HTTP:
  1. re-check the do-not-call list and the campaign status, right before dialling;
  2. create the Ultravox call (429/503: the campaign backs off by Retry-After, the
     contact goes back to the queue without using up an attempt);
  3. take a calls-per-second slot for the carrier account (`acquire_cps_slot`: one
     upsert on a per-window counter row shared by every dispatcher), and wait for it;
  4. commit state "dialing" (conditional on still being "claimed"), THEN call the
     carrier (if that commit made the dialer late for its slot, it steps back to
     "claimed" and takes a later slot: nothing was sent); 5. record "placed" + the
     carrier's call id. The "dialing" commit does not wait for the disk (PostgreSQL
     synchronous_commit off: a flushed commit took up to 600 ms on a busy disk and
     cost the campaign its slots); a dialer dying cannot undo it, only a crash of the
     database server could, and step 5 (flushed, retried for 60 s while the database
     is unreachable, well inside CLAIM_TIMEOUT) records the call before any reaper
     could re-queue it.
  A crash before 4 leaves "claimed": after CLAIM_TIMEOUT the contact is re-queued (the
  carrier was never asked). A crash between 4 and 5 leaves "dialing" without a carrier
  id: after DIAL_TIMEOUT it becomes "unknown" and is NOT redialled; a carrier callback
  (its URL names our call id) still reconciles it.

Outcomes (`reconcile`): an attempt ends when its call reaches a terminal status
(carrier status callbacks and Ultravox webhooks write `calls.status`); the retry
policy then re-queues the contact (busy / no-answer / failed, after the delay, up to
max_attempts) or closes it. A placed call that never reports back frees its slot after
LIVE_TIMEOUT (state "expired", contact "unknown": it may have been answered).
"""
from __future__ import annotations

import logging
import math
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from flask import Flask
from sqlalchemy import delete, func, or_, select, update
from sqlalchemy.exc import InterfaceError, OperationalError, SQLAlchemyError
from sqlalchemy.orm import Session

from .. import call_states
from .campaigns.windows import CallingWindow, is_open, next_open, timezone_for
from ..db import Database, commit_without_waiting_for_disk, dialect_insert
from ..models import (Agency, AgentMapping, Call, Campaign, CampaignContact, DialAttempt, PhoneNumber,
                      RateLimitWindow, utcnow)
from ..ultravox import UltravoxError, UltravoxRateLimited, UltravoxServerError, UltravoxTimeout, \
    UltravoxUnavailable
from .do_not_call import is_on_list, listed_among
from .outbound import (CarrierError, CarrierRateLimited, CarrierRejected, OutboundTarget, carrier_account_key,
                       carrier_client, carrier_credentials, hang_up_quietly, place_carrier_call, record_call_failed,
                       record_carrier_call, start_ultravox_call)

log = logging.getLogger(__name__)

LIVE_ATTEMPT_STATES = ("claimed", "dialing", "placed")
CLAIM_TIMEOUT = timedelta(seconds=120)     # claimed, carrier never asked: safe to re-queue
DIAL_TIMEOUT = timedelta(seconds=60)       # carrier asked, no answer recorded: unknown
LIVE_TIMEOUT = timedelta(hours=2)          # placed, never reported back: frees the slot
DEFAULT_BACKOFF_SECONDS = 5.0
RETRYABLE_OUTCOMES = ("busy", "no-answer", "failed")


@dataclass
class DispatchSettings:
    claim_timeout: timedelta = CLAIM_TIMEOUT
    dial_timeout: timedelta = DIAL_TIMEOUT
    live_timeout: timedelta = LIVE_TIMEOUT


def _is_pg(session: Session) -> bool:
    return session.get_bind().dialect.name == "postgresql"


# -- claiming ----------------------------------------------------------------------------


def _window(campaign: Campaign) -> CallingWindow | None:
    return CallingWindow.from_dict(campaign.calling_window) if campaign.calling_window else None


def _contact_zone(contact: CampaignContact, campaign: Campaign) -> str:
    return contact.timezone or timezone_for(contact.phone, campaign.default_timezone) or campaign.default_timezone


def _live_count(session: Session, *conditions) -> int:
    return session.scalar(select(func.count()).select_from(DialAttempt)
                          .where(DialAttempt.state.in_(LIVE_ATTEMPT_STATES), *conditions)) or 0


def due_campaign_ids(session: Session, now: datetime) -> list[uuid.UUID]:
    ids = list(session.scalars(
        select(Campaign.id).where(Campaign.status == "running", Campaign.start_at <= now,
                                  or_(Campaign.backoff_until.is_(None), Campaign.backoff_until <= now),
                                  select(CampaignContact.id).where(CampaignContact.campaign_id == Campaign.id,
                                                                   CampaignContact.state == "queued",
                                                                   CampaignContact.next_attempt_at <= now)
                                  .exists())
        .order_by(Campaign.created_at)))
    session.rollback()
    return ids


def claim_batch(session: Session, campaign_id: uuid.UUID, limit: int, *, now: datetime | None = None) -> list[uuid.UUID]:
    """Claim up to `limit` due contacts of one campaign; returns the new attempt ids (committed)."""
    now = now or utcnow()
    pg = _is_pg(session)
    session.rollback()
    try:
        if pg:
            agency_id = session.scalar(select(Campaign.agency_id).where(Campaign.id == campaign_id))
            if agency_id is None:
                return []
            # Lock order agency -> campaign everywhere: the agency cap covers all its campaigns.
            session.execute(select(Agency.id).where(Agency.id == agency_id).with_for_update())
            campaign = session.scalar(select(Campaign).where(Campaign.id == campaign_id)
                                      .with_for_update(skip_locked=True))
        else:
            # The UPDATE takes SQLite's write lock first, serialising claimers.
            session.execute(update(Campaign).where(Campaign.id == campaign_id)
                            .values(dispatch_seq=Campaign.dispatch_seq + 1)
                            .execution_options(synchronize_session=False))
            campaign = session.scalar(select(Campaign).where(Campaign.id == campaign_id))
        if campaign is None or campaign.status != "running" or campaign.start_at > now \
                or (campaign.backoff_until is not None and campaign.backoff_until > now):
            session.rollback()
            return []
        slots = min(limit, campaign.max_concurrent - _live_count(session, DialAttempt.campaign_id == campaign.id))
        if campaign.max_concurrent_agency:
            slots = min(slots, campaign.max_concurrent_agency
                        - _live_count(session, DialAttempt.agency_id == campaign.agency_id))
        if slots <= 0:
            session.rollback()
            return []
        window = _window(campaign)
        fetch = max(2 * slots, 50) if window else slots
        query = (select(CampaignContact)
                 .where(CampaignContact.campaign_id == campaign.id, CampaignContact.state == "queued",
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
                contact.state, contact.last_outcome = "suppressed", "do-not-call"
                continue
            if window is not None:
                zone = _contact_zone(contact, campaign)
                if not is_open(window, zone, now):
                    contact.next_attempt_at = next_open(window, zone, now)
                    continue
            if len(attempt_ids) >= slots:
                continue
            contact.state = "dialing"
            contact.attempts += 1
            attempt = DialAttempt(id=uuid.uuid4(), campaign_id=campaign.id, contact_id=contact.id,
                                  agency_id=campaign.agency_id, attempt_number=(numbers.get(contact.id) or 0) + 1,
                                  state="claimed",
                                  created_at=now, state_changed_at=now)
            session.add(attempt)
            attempt_ids.append(attempt.id)
        session.commit()
        return attempt_ids
    except BaseException:
        session.rollback()
        raise


# -- pacing: calls per second per carrier account -------------------------------------


# Slots are spaced this much wider than 1/limit: the slack that lets a call reach the
# carrier a little after its slot (thread wake-up, the "dialing" commit, the SDK request)
# without ever putting more than `limit` starts into any sliding second at the carrier.
# 4 %: at 20 calls/s, 19.2 starts/s and up to 41.7 ms of lateness.
CPS_RATE_MARGIN = 0.04
# Of that lateness, the share the carrier request itself may take after the "dialing"
# commit; a dialer that is already later than the rest when it is about to send takes
# a later slot instead (nothing was sent yet, so that is safe).
CPS_SEND_SHARE = 0.6
_MIN_SLOTS_PER_WINDOW = 100


@dataclass(frozen=True)
class Pacing:
    """The calls-per-second plan of one carrier account: `slots` starts per `window`
    seconds, slot i of the window starting at W at W + i * spacing."""

    limit: int
    window: int
    slots: int

    @property
    def spacing(self) -> float:
        return self.window / self.slots

    @property
    def tolerance(self) -> float:
        """How late (s) any start may reach the carrier with no sliding second over the
        limit: any limit + 1 consecutive slots span limit * spacing >= 1 + tolerance."""
        return self.limit * self.spacing - 1

    @property
    def late_limit(self) -> float:
        """How late a dialer may be, just before it sends, and still use its slot."""
        return self.tolerance * (1 - CPS_SEND_SHARE)


def pacing_plan(limit: int, margin: float = CPS_RATE_MARGIN) -> Pacing:
    """Evenly spaced slots, (1 + margin) / limit apart on average. The last slot of a
    window is one spacing before the next window's first, so starts are evenly spaced
    across windows too. The window holds at least ~100 slots so that rounding the slot
    count keeps the rate close to limit / (1 + margin) (1 call/s: 96 starts in 100 s)."""
    limit = max(1, int(limit))
    window = max(1, math.ceil(_MIN_SLOTS_PER_WINDOW / limit))
    return Pacing(limit=limit, window=window, slots=max(1, math.floor(window * limit / (1 + margin))))


def acquire_cps_slot(session: Session, bucket: str, limit: int, *, clock=time.time, sleep=time.sleep,
                     deadline: float | None = None) -> float | None:
    """Take the next call start of `bucket` (a carrier account), shared by every
    dispatcher through one atomic upsert on a per-window counter, and sleep until the
    slot's moment. Returns the slot time, or None when the slot would be after
    `deadline` (or it passed)."""
    pacing = pacing_plan(limit)
    window, slots, spacing = pacing.window, pacing.slots, pacing.spacing
    while True:
        now = clock()
        if deadline is not None and now > deadline:
            return None
        start = math.floor(now / window) * window
        # Slots of this window that are already in the past are skipped, not handed
        # out at once (that would bunch starts up): the count jumps to at least the
        # first slot not before `now`.
        first_count = math.ceil((now - start) / spacing) + 1
        while True:
            count = _count_slot(session, bucket, start, first_count, window)
            if count <= slots:
                break
            # This window is fully booked: book the next one now, not once it has begun
            # (by then its first slot would be in the past and go unused).
            start, first_count = start + window, 1
        slot = start + (count - 1) * spacing
        if deadline is not None and slot > deadline:
            return None
        wait = slot - clock()
        if wait > 0:
            sleep(wait)
        if clock() <= slot + pacing.late_limit:
            return slot
        # Woke up too late (a busy machine): starting now could crowd the next second.
        # Take a later slot.
        log.info("calls-per-second slot of %s missed (woke %.1f ms late); taking a later one", bucket,
                 (clock() - slot) * 1000)


def _count_slot(session: Session, bucket: str, window_start: int, first_count: int, window: int) -> int:
    """Book one slot of the window: its 1-based number (at least `first_count`), committed."""
    table = RateLimitWindow.__table__
    greatest = func.greatest if session.get_bind().dialect.name == "postgresql" else func.max
    statement = (dialect_insert(session)(table).values(bucket=bucket, window_start=window_start, count=first_count)
                 .on_conflict_do_update(index_elements=[table.c.bucket, table.c.window_start],
                                        set_={"count": greatest(table.c.count + 1, first_count)})
                 .returning(table.c.count))
    session.rollback()
    count = session.execute(statement).scalar_one()
    if count == first_count:  # the window's first booking: drop counters long past
        session.execute(delete(RateLimitWindow).where(RateLimitWindow.bucket == bucket,
                                                      RateLimitWindow.window_start < window_start - 5 * window))
    session.commit()
    return count


# -- dialling ----------------------------------------------------------------------------


def _set_attempt(session: Session, attempt_id: uuid.UUID, from_states: tuple[str, ...], **values: Any) -> bool:
    values.setdefault("state_changed_at", utcnow())
    result = session.execute(update(DialAttempt).where(DialAttempt.id == attempt_id,
                                                       DialAttempt.state.in_(from_states))
                             .values(**values).execution_options(synchronize_session=False))
    return result.rowcount == 1


def _requeue(session: Session, contact_id: uuid.UUID, at: datetime, *, uncount: bool) -> None:
    """Back to the queue; `uncount`: the attempt never reached the carrier."""
    values: dict[str, Any] = {"state": "queued", "next_attempt_at": at}
    if uncount:
        values["attempts"] = CampaignContact.attempts - 1
    session.execute(update(CampaignContact).where(CampaignContact.id == contact_id,
                                                  CampaignContact.state == "dialing")
                    .values(**values).execution_options(synchronize_session=False))


def _close_contact(session: Session, contact_id: uuid.UUID, state: str, outcome: str | None) -> None:
    session.execute(update(CampaignContact).where(CampaignContact.id == contact_id,
                                                  CampaignContact.state == "dialing")
                    .values(state=state, last_outcome=outcome).execution_options(synchronize_session=False))


def abort_attempt(session: Session, attempt: DialAttempt, *, state: str = "aborted", reason: str,
                  contact_state: str | None = None, requeue_at: datetime | None = None) -> None:
    """End an attempt that never reached the carrier: re-queue (not counted) or close the contact."""
    attempt_id, contact_id = attempt.id, attempt.contact_id
    session.rollback()
    if not _set_attempt(session, attempt_id, ("claimed",), state=state, error=reason[:2000], ended_at=utcnow()):
        session.rollback()
        return
    if contact_state is None:
        _requeue(session, contact_id, requeue_at or utcnow(), uncount=True)
    else:
        _close_contact(session, contact_id, contact_state, reason[:32])
    session.commit()


def _backoff(session: Session, campaign_id: uuid.UUID, seconds: float) -> datetime:
    until = utcnow() + timedelta(seconds=seconds)
    session.execute(update(Campaign).where(Campaign.id == campaign_id,
                                           or_(Campaign.backoff_until.is_(None), Campaign.backoff_until < until))
                    .values(backoff_until=until).execution_options(synchronize_session=False))
    return until


def _pick_from_number(campaign: Campaign, attempt: DialAttempt) -> str:
    numbers = campaign.from_numbers or []
    return numbers[(attempt.attempt_number + attempt.contact_id.int) % len(numbers)]


def dial_attempt(session: Session, attempt_id: uuid.UUID, *, cps_deadline_seconds: float = 60.0) -> str:
    """Carry out one claimed attempt (see the module docstring). Returns its final state here."""
    attempt = session.get(DialAttempt, attempt_id)
    if attempt is None or attempt.state != "claimed":
        session.rollback()
        return "gone"
    contact = session.get(CampaignContact, attempt.contact_id)
    campaign = session.get(Campaign, attempt.campaign_id)
    assert contact is not None and campaign is not None
    agency_id = campaign.agency_id
    if is_on_list(session, agency_id, contact.phone):
        abort_attempt(session, attempt, reason="do-not-call", contact_state="suppressed")
        return "suppressed"
    if campaign.status != "running":
        if campaign.status == "cancelled":
            abort_attempt(session, attempt, reason="campaign cancelled", contact_state="cancelled")
        else:
            abort_attempt(session, attempt, reason=f"campaign {campaign.status}")
        return "aborted"
    agent = session.get(AgentMapping, campaign.agent_id)
    from_number = _pick_from_number(campaign, attempt)
    number = session.scalar(select(PhoneNumber).where(PhoneNumber.agency_id == agency_id,
                                                      PhoneNumber.e164 == from_number))
    if agent is None or number is None:
        abort_attempt(session, attempt, reason="agent or caller number no longer exists", contact_state="failed")
        return "failed"
    carrier = number.carrier.value
    try:
        credentials = carrier_credentials(session, agency_id, carrier)
    except Exception as exc:
        _pause(session, campaign.id, str(exc))
        abort_attempt(session, attempt, reason=str(exc))
        return "aborted"
    target = OutboundTarget(agent=agent, from_number=from_number, carrier=carrier, to=contact.phone)
    context = {**(campaign.template_context or {}), **(contact.template_context or {})}
    contact_id, campaign_id = contact.id, campaign.id
    cps = campaign.calls_per_second
    try:
        started = start_ultravox_call(session, agency_id, target, template_context=context or None,
                                      metadata={"campaign_id": str(campaign_id), "contact_id": str(contact_id)},
                                      stored_metadata={"campaign_id": str(campaign_id),
                                                       "contact_id": str(contact_id),
                                                       "attempt_id": str(attempt_id)})
    except (UltravoxRateLimited, UltravoxServerError, UltravoxTimeout, UltravoxUnavailable) as exc:
        # Ultravox is saturated or unwell: slow the campaign down, lose nothing.
        delay = exc.retry_after if exc.retry_after else DEFAULT_BACKOFF_SECONDS
        session.rollback()
        until = _backoff(session, campaign_id, delay)
        session.commit()
        attempt = session.get(DialAttempt, attempt_id)
        abort_attempt(session, attempt, reason=str(exc), requeue_at=until)
        log.warning("campaign %s: Ultravox %s; backing off %.1fs", campaign_id, exc.status, delay)
        return "aborted"
    except UltravoxError as exc:  # 4xx: our request or key is wrong; a person must look
        session.rollback()
        _pause(session, campaign_id, f"Ultravox refused the call: {exc.detail}"[:200])
        attempt = session.get(DialAttempt, attempt_id)
        abort_attempt(session, attempt, reason=str(exc))
        return "aborted"
    except Exception as exc:  # e.g. the agency's Ultravox key is missing
        session.rollback()
        _pause(session, campaign_id, str(exc)[:200])
        attempt = session.get(DialAttempt, attempt_id)
        abort_attempt(session, attempt, reason=str(exc))
        return "aborted"
    if started.call_id is None:
        hang_up_quietly(session, agency_id, started.ultravox_call_id)
        attempt = session.get(DialAttempt, attempt_id)
        abort_attempt(session, attempt, reason="call not recorded", requeue_at=utcnow() + timedelta(seconds=30))
        return "aborted"
    call_id = started.call_id
    session.rollback()
    _set_attempt(session, attempt_id, ("claimed",), call_id=call_id, carrier=carrier, from_number=from_number)
    session.commit()

    client = carrier_client(carrier, credentials)  # before the slot: only the request follows it
    if not _enter_dialing(session, attempt_id, carrier_account_key(carrier, credentials), cps,
                          deadline=time.time() + cps_deadline_seconds):
        session.rollback()
        record_call_failed(session, call_id, "not_dialled")
        session.commit()
        attempt = session.get(DialAttempt, attempt_id)
        if attempt is not None and attempt.state == "claimed":
            abort_attempt(session, attempt, reason="no calls-per-second slot in time")
        hang_up_quietly(session, agency_id, started.ultravox_call_id)
        return "aborted"
    try:
        carrier_call_id = place_carrier_call(carrier, credentials, to=contact.phone, from_number=from_number,
                                             join_url=started.join_url, call_id=call_id, command_id=str(attempt_id),
                                             client=client)
    except CarrierError as exc:
        return _carrier_failed(session, attempt_id, contact_id, agency_id, call_id, started.ultravox_call_id, exc)
    _record_placed(session, attempt_id, contact_id, call_id, carrier_call_id)
    # A callback may have finished the call before we recorded the carrier id.
    settle_call(session, call_id)
    return "placed"


# How long a dialer keeps trying to record a call the carrier accepted while the
# database is unreachable: less than CLAIM_TIMEOUT, so that the record is in before a
# reaper could re-queue an attempt whose "dialing" mark a database crash undid.
PLACED_RECORD_RETRY_SECONDS = 60.0
PLACED_RECORD_RETRY_PAUSE = 1.0


def _record_placed(session: Session, attempt_id: uuid.UUID, contact_id: uuid.UUID, call_id: uuid.UUID,
                   carrier_call_id: str) -> None:
    """The carrier accepted the call: record "placed" and its call id (a flushed commit),
    retrying while the database is unreachable."""
    give_up = time.monotonic() + PLACED_RECORD_RETRY_SECONDS
    while True:
        try:
            session.rollback()
            # "unknown": a reaper gave up on us while the carrier was slow. "claimed": a
            # database crash undid the unflushed "dialing" mark (see _enter_dialing).
            _set_attempt(session, attempt_id, ("dialing", "unknown", "claimed"), state="placed",
                         carrier_call_id=carrier_call_id)
            session.execute(update(CampaignContact).where(CampaignContact.id == contact_id,
                                                          CampaignContact.state == "unknown")
                            .values(state="dialing").execution_options(synchronize_session=False))
            record_carrier_call(session, call_id, carrier_call_id)
            session.commit()
            return
        except (OperationalError, InterfaceError):
            if time.monotonic() >= give_up:
                raise
            log.warning("attempt %s: carrier call %s placed but not recorded yet (database unreachable); retrying",
                        attempt_id, carrier_call_id, exc_info=True)
            try:
                session.rollback()
            except SQLAlchemyError:
                pass
            time.sleep(PLACED_RECORD_RETRY_PAUSE)


def _enter_dialing(session: Session, attempt_id: uuid.UUID, bucket: str, cps: int, *, deadline: float,
                   clock=time.time) -> bool:
    """Wait for a calls-per-second slot, then commit "dialing": the point of no return,
    committed before the carrier hears of the call. True: send now. False: no slot in
    time, or the attempt is no longer ours (still uncommitted; the caller aborts)."""
    late_limit = pacing_plan(cps).late_limit
    while True:
        slot = acquire_cps_slot(session, bucket, cps, deadline=deadline)
        if slot is None:
            return False
        # Not waiting for the disk here keeps the carrier request on its slot (on a busy
        # disk a flushed commit took 20-600 ms). A dialer dying leaves the mark in place;
        # only a database-server crash could undo it, and then `_record_placed` (flushed,
        # retried until the database is back) records the call before any reaper could
        # re-queue the contact.
        commit_without_waiting_for_disk(session)
        if not _set_attempt(session, attempt_id, ("claimed",), state="dialing", dial_started_at=utcnow()):
            return False
        session.commit()
        if clock() <= slot + late_limit:
            return True
        # The commit itself made us late (a slow database or a busy machine). Nothing was
        # sent yet, so stepping back to "claimed" is safe; take a later slot.
        stepped_back = _set_attempt(session, attempt_id, ("dialing",), state="claimed", dial_started_at=None)
        session.commit()
        log.info("attempt %s: late for its calls-per-second slot after the dialing commit; taking a later one",
                 attempt_id)
        if not stepped_back:
            return True  # cannot happen while we hold the attempt; sending is what "dialing" promised


def _carrier_failed(session: Session, attempt_id: uuid.UUID, contact_id: uuid.UUID, agency_id: uuid.UUID,
                    call_id: uuid.UUID, ultravox_call_id: str, exc: CarrierError) -> str:
    session.rollback()
    if isinstance(exc, CarrierRateLimited):
        # 429 is never processed by the carrier: safe to dial again later.
        _set_attempt(session, attempt_id, ("dialing",), state="aborted", error=str(exc)[:2000], ended_at=utcnow())
        _requeue(session, contact_id, utcnow() + timedelta(seconds=5), uncount=True)
        record_call_failed(session, call_id, "carrier_rate_limited")
        session.commit()
        hang_up_quietly(session, agency_id, ultravox_call_id)
        return "aborted"
    if isinstance(exc, CarrierRejected):
        _set_attempt(session, attempt_id, ("dialing", "unknown"), state="failed", outcome="rejected",
                     error=str(exc)[:2000], ended_at=utcnow())
        _close_contact(session, contact_id, "failed", "rejected")
        record_call_failed(session, call_id, "carrier_rejected")
        session.commit()
        hang_up_quietly(session, agency_id, ultravox_call_id)
        return "failed"
    # 5xx / timeout: the call may exist. Never redial blindly; callbacks may still tell.
    _set_attempt(session, attempt_id, ("dialing",), state="unknown", error=str(exc)[:2000])
    _close_contact(session, contact_id, "unknown", "carrier_error")
    session.commit()
    return "unknown"


def _pause(session: Session, campaign_id: uuid.UUID, reason: str) -> None:
    session.rollback()
    session.execute(update(Campaign).where(Campaign.id == campaign_id, Campaign.status == "running")
                    .values(status="paused", paused_reason=reason[:200]).execution_options(synchronize_session=False))
    session.commit()
    log.warning("campaign %s paused: %s", campaign_id, reason)


# -- outcomes ----------------------------------------------------------------------------


def settle_call(session: Session, call_id: uuid.UUID) -> bool:
    """If the call of a campaign attempt has reached a terminal status, end the attempt
    and apply the retry policy. Idempotent; True if it settled something now."""
    session.rollback()
    row = session.execute(select(DialAttempt.id, Call.status).join(Call, Call.id == DialAttempt.call_id)
                          .where(DialAttempt.call_id == call_id)).first()
    session.rollback()
    if row is None or not call_states.is_terminal(row.status):
        return False
    return finish_attempt(session, row.id, row.status)


def finish_attempt(session: Session, attempt_id: uuid.UUID, outcome: str) -> bool:
    session.rollback()
    previous = session.scalar(select(DialAttempt.state).where(DialAttempt.id == attempt_id))
    session.rollback()  # SQLite: a write opens its own transaction (no read-to-write upgrade)
    if previous not in ("dialing", "placed", "unknown", "expired") or not _set_attempt(
            session, attempt_id, (previous,), state="ended", outcome=outcome, ended_at=utcnow()):
        session.rollback()
        return False
    # An attempt we had given up on ("unknown"/"expired") is recorded but never retried:
    # whether the callee was reached cannot be told for sure.
    may_retry = previous in ("dialing", "placed")
    attempt = session.get(DialAttempt, attempt_id)
    contact = session.get(CampaignContact, attempt.contact_id)
    campaign = session.get(Campaign, attempt.campaign_id)
    if contact is None or campaign is None or contact.state not in ("dialing", "unknown"):
        session.commit()
        return True
    contact.last_outcome = outcome
    if outcome == call_states.COMPLETED:
        contact.state = "completed"
    elif (may_retry and outcome in (campaign.retry_on or []) and contact.attempts < campaign.max_attempts
          and campaign.status != "cancelled"):
        contact.state = "queued"
        contact.next_attempt_at = utcnow() + timedelta(seconds=campaign.retry_delay_seconds)
    else:
        contact.state = "failed"
    session.commit()
    return True


def reconcile(session: Session, settings: DispatchSettings | None = None, *, now: datetime | None = None) -> dict:
    """Settle finished calls, expire stuck attempts, complete finished campaigns."""
    settings = settings or DispatchSettings()
    now = now or utcnow()
    stats = {"settled": 0, "requeued": 0, "unknown": 0, "expired": 0, "completed_campaigns": 0}
    session.rollback()
    finished = session.execute(
        select(DialAttempt.id, Call.status).join(Call, Call.id == DialAttempt.call_id)
        .where(DialAttempt.state.in_(("dialing", "placed", "unknown", "expired")),
               Call.status.in_(sorted(call_states.TERMINAL))).limit(1000)).all()
    session.rollback()
    for attempt_id, status in finished:
        stats["settled"] += finish_attempt(session, attempt_id, status)
    # claimed too long: the carrier was never asked (the dialer died or hangs): re-queue.
    stale = session.execute(select(DialAttempt.id, DialAttempt.contact_id).where(
        DialAttempt.state == "claimed", DialAttempt.state_changed_at < now - settings.claim_timeout)).all()
    session.rollback()
    for attempt_id, contact_id in stale:
        if _set_attempt(session, attempt_id, ("claimed",), state="aborted", error="claim timed out",
                        ended_at=now):
            _requeue(session, contact_id, now, uncount=True)
            stats["requeued"] += 1
        session.commit()
    # dialing too long without a carrier id: the carrier MAY have dialled. Never redial.
    stuck = session.execute(select(DialAttempt.id, DialAttempt.contact_id).where(
        DialAttempt.state == "dialing", DialAttempt.carrier_call_id.is_(None),
        DialAttempt.state_changed_at < now - settings.dial_timeout)).all()
    session.rollback()
    for attempt_id, contact_id in stuck:
        if _set_attempt(session, attempt_id, ("dialing",), state="unknown",
                        error="no answer from the carrier request (worker died or carrier hung)"):
            _close_contact(session, contact_id, "unknown", "unknown")
            stats["unknown"] += 1
        session.commit()
    # placed but silent for too long: free the slot; the outcome stays unknown.
    silent = session.execute(select(DialAttempt.id, DialAttempt.contact_id).where(
        DialAttempt.state.in_(("placed", "dialing")),
        DialAttempt.state_changed_at < now - settings.live_timeout)).all()
    session.rollback()
    for attempt_id, contact_id in silent:
        if _set_attempt(session, attempt_id, ("placed", "dialing"), state="expired",
                        error="no terminal status reported in time"):
            _close_contact(session, contact_id, "unknown", "no-report")
            stats["expired"] += 1
        session.commit()
    stats["completed_campaigns"] = complete_finished_campaigns(session)
    return stats


def complete_finished_campaigns(session: Session) -> int:
    from .events import emit_event

    session.rollback()
    candidates = list(session.scalars(select(Campaign.id).where(
        Campaign.status == "running",
        ~select(CampaignContact.id).where(CampaignContact.campaign_id == Campaign.id,
                                          CampaignContact.state.in_(("queued", "dialing"))).exists(),
        select(CampaignContact.id).where(CampaignContact.campaign_id == Campaign.id).exists())))
    session.rollback()
    done = 0
    for campaign_id in candidates:
        result = session.execute(update(Campaign).where(
            Campaign.id == campaign_id, Campaign.status == "running",
            ~select(CampaignContact.id).where(CampaignContact.campaign_id == campaign_id,
                                              CampaignContact.state.in_(("queued", "dialing"))).exists())
            .values(status="completed", completed_at=utcnow()).execution_options(synchronize_session=False))
        if result.rowcount == 1:
            campaign = session.get(Campaign, campaign_id)
            from .campaigns.manage import contact_counts
            emit_event(session, campaign.agency_id, "campaign.completed",
                       {"campaign_id": str(campaign_id), "name": campaign.name,
                        "contacts": contact_counts(session, campaign_id)})
            done += 1
        session.commit()
    return done


# -- the loop ----------------------------------------------------------------------------


@dataclass
class Dispatcher:
    """Claims and dials in a pool of threads; run one per worker process (or several)."""

    app: Flask
    threads: int = 8
    poll_interval: float = 0.2
    reconcile_interval: float = 1.0
    settings: DispatchSettings = field(default_factory=DispatchSettings)

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self._pool = ThreadPoolExecutor(max_workers=self.threads, thread_name_prefix="dialer")
        self._inflight = 0
        self._lock = threading.Lock()
        self._last_reconcile = 0.0

    @property
    def db(self) -> Database:
        return self.app.extensions["telephony.db"]

    def stop(self, *_args) -> None:
        self._stop.set()

    def _done(self, _future) -> None:
        with self._lock:
            self._inflight -= 1

    def _dial(self, attempt_id: uuid.UUID) -> None:
        try:
            with self.app.app_context(), self.db.session() as session:
                dial_attempt(session, attempt_id)
        except Exception:
            log.exception("dial of attempt %s failed; the reconciler will settle it", attempt_id)

    def run_once(self) -> int:
        """One pass: reconcile (at most once per reconcile_interval), then claim for free threads."""
        claimed = 0
        with self.app.app_context():
            if time.monotonic() - self._last_reconcile >= self.reconcile_interval:
                self._last_reconcile = time.monotonic()
                with self.db.session() as session:
                    reconcile(session, self.settings)
            with self._lock:
                free = self.threads * 2 - self._inflight
            if free <= 0:
                return 0
            with self.db.session() as session:
                for campaign_id in due_campaign_ids(session, utcnow()):
                    if free <= 0 or self._stop.is_set():
                        break
                    for attempt_id in claim_batch(session, campaign_id, free):
                        with self._lock:
                            self._inflight += 1
                        self._pool.submit(self._dial, attempt_id).add_done_callback(self._done)
                        free -= 1
                        claimed += 1
        return claimed

    def run_forever(self) -> None:
        log.info("campaign dispatcher started (%d dialer threads)", self.threads)
        while not self._stop.is_set():
            try:
                claimed = self.run_once()
            except Exception:
                log.exception("dispatcher loop error; continuing")
                claimed = 0
            if not claimed:
                self._stop.wait(self.poll_interval)
        self._pool.shutdown(wait=True)
        log.info("campaign dispatcher stopped")

    def start(self) -> threading.Thread:
        thread = threading.Thread(target=self.run_forever, name="campaign-dispatcher", daemon=True)
        thread.start()
        return thread
