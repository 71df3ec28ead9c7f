"""Dialling: `dial_attempt` carries out one claimed attempt; no transaction is held across HTTP.

  1. re-check the do-not-call list and the campaign status, right before dialling;
  2. create the Ultravox call (429/503: the campaign backs off by Retry-After, the
     contact goes back to the queue without using up an attempt; the agency out of
     credit: the campaign pauses until it has credit again);
  3. take a calls-per-second slot for the carrier account (`pacing.acquire_cps_slot`:
     one upsert on a per-window counter row shared by every dispatcher), and wait for it;
  4. commit state "dialing" (conditional on still being "claimed") just before the
     slot, THEN, at the slot, call the carrier (a dialer late for its slot all the
     same steps back to "claimed" and takes a later slot: nothing was sent);
  5. record "placed" + the carrier's call id.

The "dialing" commit does not wait for the disk (PostgreSQL synchronous_commit off: a
flushed commit took up to 600 ms on a busy disk and cost the campaign its slots); a
dialer dying cannot undo it, only a crash of the database server could, and step 5
(flushed, retried for 60 s while the database is unreachable, well inside
CLAIM_TIMEOUT) records the call before any reaper could re-queue it.

A crash before 4 leaves "claimed": after CLAIM_TIMEOUT the contact is re-queued (the
carrier was never asked). A crash between 4 and 5 leaves "dialing" without a carrier
id: after DIAL_TIMEOUT it becomes "unknown" and is NOT redialled; a carrier callback
(its URL names our call id) still reconciles it (see outcomes).
"""
from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

from sqlalchemy import or_, select, update
from sqlalchemy.exc import InterfaceError, OperationalError, SQLAlchemyError
from sqlalchemy.orm import Session

from ...db import commit_without_waiting_for_disk, end_read, transaction
from ...models import AgentMapping, Campaign, CampaignContact, DialAttempt, PhoneNumber, utcnow
from ...ultravox_errors import (
    UltravoxError,
    UltravoxRateLimited,
    UltravoxServerError,
    UltravoxTimeout,
    UltravoxUnavailable,
)
from ..calls import InsufficientCredits
from ..do_not_call import is_on_list
from ..outbound import (
    CarrierError,
    CarrierRateLimited,
    CarrierRejected,
    OutboundTarget,
    carrier_account_key,
    carrier_client,
    carrier_credentials,
    hang_up_quietly,
    place_carrier_call,
    record_call_failed,
    record_call_unknown,
    record_carrier_call,
    start_ultravox_call,
)
from .attempts import (
    ATTEMPT_ABORTED,
    ATTEMPT_CLAIMED,
    ATTEMPT_DIALING,
    ATTEMPT_FAILED,
    ATTEMPT_PLACED,
    ATTEMPT_UNKNOWN,
    CONTACT_CANCELLED,
    CONTACT_FAILED,
    CONTACT_SUPPRESSED,
    CONTACT_UNKNOWN,
    close_contact,
    mark_placed,
    requeue_contact,
    update_attempt,
)
from .outcomes import PAUSED_FOR_CREDIT, settle_call
from .pacing import acquire_cps_slot, pacing_plan

log = logging.getLogger(__name__)

DEFAULT_BACKOFF_SECONDS = 5.0
# What dial_attempt answers for an attempt that is no longer claimed (someone else has it).
GONE = "gone"
# How long a dialer keeps trying to record a call the carrier accepted while the
# database is unreachable: less than CLAIM_TIMEOUT, so that the record is in before a
# reaper could re-queue an attempt whose "dialing" mark a database crash undid.
PLACED_RECORD_RETRY_SECONDS = 60.0
PLACED_RECORD_RETRY_PAUSE = 1.0
# The "dialing" mark is committed this long before the slot, not after it: its commit (a
# database round trip, slow on a busy machine) used to eat the slot's tolerance, and a
# dialer it made late gave its slot up, so a slow day lost rate (17.4/s for 20/s). The
# carrier still hears of the call only at the slot, after the mark.
DIALING_LEAD_SECONDS = 0.05


@dataclass
class _Dial:
    """A claimed attempt that passed step 1: what to dial, and through which carrier."""

    attempt_id: uuid.UUID
    contact_id: uuid.UUID
    campaign_id: uuid.UUID
    agency_id: uuid.UUID
    target: OutboundTarget
    template_context: dict[str, Any]
    carrier: str
    credentials: Mapping[str, str]
    calls_per_second: int
    on_machine: str | None = None  # the campaign's answering-machine policy and message
    machine_message: dict[str, Any] | None = None


@dataclass
class _UltravoxCall:
    """The Ultravox call of step 2, recorded in `calls` and on the attempt."""

    call_id: uuid.UUID
    ultravox_call_id: str
    join_url: str


def dial_attempt(session: Session, attempt_id: uuid.UUID, *, cps_deadline_seconds: float = 60.0) -> str:
    """Carry out one claimed attempt, steps 1-5 of the module docstring. Returns what
    became of it here: "placed"; "unknown" (the carrier may have dialled); "failed"
    (the carrier rejected it, or the agent or caller number is gone); "aborted"
    (nothing was dialled); "suppressed" (do-not-call); "gone" (no longer claimed)."""
    attempt = session.get(DialAttempt, attempt_id)
    if attempt is None or attempt.state != ATTEMPT_CLAIMED:
        end_read(session)
        return GONE
    # 1. right before dialling: do-not-call, campaign status, agent, number, credentials
    dial = _check_before_dialling(session, attempt_id, attempt)
    if isinstance(dial, str):
        return dial
    # 2. the Ultravox call
    call = _create_ultravox_call(session, dial)
    if isinstance(call, str):
        return call
    # 3. a calls-per-second slot, and 4. the "dialing" mark committed, then the carrier request
    client = carrier_client(dial.carrier, dial.credentials)  # before the slot: only the request follows it
    if not _enter_dialing(session, attempt_id, carrier_account_key(dial.carrier, dial.credentials),
                          dial.calls_per_second, deadline=time.time() + cps_deadline_seconds):
        return _no_slot_in_time(session, dial, call)
    try:
        carrier_call_id = place_carrier_call(dial.carrier, dial.credentials, to=dial.target.to,
                                             from_number=dial.target.from_number, join_url=call.join_url,
                                             call_id=call.call_id, command_id=str(attempt_id), client=client)
    except CarrierError as exc:
        return _carrier_failed(session, dial, call, exc)
    # 5. "placed" and the carrier's call id
    _record_placed(session, attempt_id, dial.contact_id, call.call_id, carrier_call_id)
    # A callback may have finished the call before we recorded the carrier id.
    settle_call(session, call.call_id)
    return ATTEMPT_PLACED


# -- 1. right before dialling ------------------------------------------------------------


def _check_before_dialling(session: Session, attempt_id: uuid.UUID, attempt: DialAttempt) -> _Dial | str:
    """Step 1: the number is not on the do-not-call list, the campaign still runs, its
    agent, caller number and carrier credentials are there. Otherwise the attempt is
    ended here and its result returned."""
    contact = session.get(CampaignContact, attempt.contact_id)
    campaign = session.get(Campaign, attempt.campaign_id)
    assert contact is not None and campaign is not None
    agency_id = campaign.agency_id
    if is_on_list(session, agency_id, contact.phone):
        abort_attempt(session, attempt, reason="do-not-call", contact_state=CONTACT_SUPPRESSED)
        return CONTACT_SUPPRESSED
    if campaign.status != "running":
        if campaign.status == "cancelled":
            abort_attempt(session, attempt, reason="campaign cancelled", contact_state=CONTACT_CANCELLED)
        else:
            abort_attempt(session, attempt, reason=f"campaign {campaign.status}")
        return ATTEMPT_ABORTED
    agent = session.get(AgentMapping, campaign.agent_id)
    from_number = _pick_from_number(campaign, attempt)
    number = session.scalar(select(PhoneNumber).where(PhoneNumber.agency_id == agency_id,
                                                      PhoneNumber.e164 == from_number))
    if agent is None or number is None:
        abort_attempt(session, attempt, reason="agent or caller number no longer exists",
                      contact_state=CONTACT_FAILED)
        return CONTACT_FAILED
    carrier = number.carrier.value
    try:
        credentials = carrier_credentials(session, agency_id, carrier)
    except Exception as exc:
        _pause(session, campaign.id, str(exc))
        abort_attempt(session, attempt, reason=str(exc))
        return ATTEMPT_ABORTED
    target = OutboundTarget(agent=agent, from_number=from_number, carrier=carrier, to=contact.phone)
    template_context = {**(campaign.template_context or {}), **(contact.template_context or {})}
    return _Dial(attempt_id=attempt_id, contact_id=contact.id, campaign_id=campaign.id,
                 agency_id=agency_id, target=target, template_context=template_context, carrier=carrier,
                 credentials=credentials, calls_per_second=campaign.calls_per_second,
                 on_machine=campaign.on_machine, machine_message=campaign.machine_message)


def _pick_from_number(campaign: Campaign, attempt: DialAttempt) -> str:
    """The caller number: the campaign's numbers in turn, per contact and attempt."""
    numbers = campaign.from_numbers or []
    return numbers[(attempt.attempt_number + attempt.contact_id.int) % len(numbers)]


# -- 2. the Ultravox call ----------------------------------------------------------------


def _create_ultravox_call(session: Session, dial: _Dial) -> _UltravoxCall | str:
    """Step 2: create the Ultravox call (recorded in `calls`) and note it on the attempt.
    If that fails, nothing was dialled: the attempt is aborted, "aborted" returned."""
    ids = {"campaign_id": str(dial.campaign_id), "contact_id": str(dial.contact_id)}
    try:
        started = start_ultravox_call(session, dial.agency_id, dial.target,
                                      template_context=dial.template_context or None, metadata=ids,
                                      stored_metadata={**ids, "attempt_id": str(dial.attempt_id)},
                                      on_machine=dial.on_machine, machine_message=dial.machine_message)
    except Exception as exc:
        return _ultravox_failed(session, dial, exc)
    if started.call_id is None:
        hang_up_quietly(session, dial.agency_id, started.ultravox_call_id)
        _abort_stored(session, dial.attempt_id, reason="call not recorded",
                      requeue_at=utcnow() + timedelta(seconds=30))
        return ATTEMPT_ABORTED
    end_read(session)
    with transaction(session):
        update_attempt(session, dial.attempt_id, (ATTEMPT_CLAIMED,), call_id=started.call_id, carrier=dial.carrier,
                       from_number=dial.target.from_number)
    return _UltravoxCall(call_id=started.call_id, ultravox_call_id=started.ultravox_call_id,
                         join_url=started.join_url)


def _ultravox_failed(session: Session, dial: _Dial, exc: Exception) -> str:
    """Step 2 failed, nothing was dialled: back off (Ultravox busy or unwell) or pause
    the campaign (refused), and abort the attempt."""
    session.rollback()  # whatever the failed start left open
    if isinstance(exc, (UltravoxRateLimited, UltravoxServerError, UltravoxTimeout, UltravoxUnavailable)):
        # Ultravox is saturated or unwell: slow the campaign down, lose nothing.
        delay = exc.retry_after if exc.retry_after else DEFAULT_BACKOFF_SECONDS
        with transaction(session):
            until = _backoff(session, dial.campaign_id, delay)
        _abort_stored(session, dial.attempt_id, reason=str(exc), requeue_at=until)
        log.warning("campaign %s: Ultravox %s; backing off %.1fs", dial.campaign_id, exc.status, delay)
    elif isinstance(exc, InsufficientCredits):
        # Resumes by itself once the agency has credit (outcomes.resume_campaigns_with_credit).
        _pause(session, dial.campaign_id, PAUSED_FOR_CREDIT)
        _abort_stored(session, dial.attempt_id, reason=str(exc))
    elif isinstance(exc, UltravoxError):  # 4xx: our request or key is wrong; a person must look
        _pause(session, dial.campaign_id, f"Ultravox refused the call: {exc.detail}"[:200])
        _abort_stored(session, dial.attempt_id, reason=str(exc))
    else:  # e.g. the agency's Ultravox key is missing
        _pause(session, dial.campaign_id, str(exc)[:200])
        _abort_stored(session, dial.attempt_id, reason=str(exc))
    return ATTEMPT_ABORTED


def _backoff(session: Session, campaign_id: uuid.UUID, seconds: float) -> datetime:
    """Nothing of the campaign is dialled for `seconds` (a later backoff is kept)."""
    until = utcnow() + timedelta(seconds=seconds)
    session.execute(update(Campaign).where(Campaign.id == campaign_id,
                                           or_(Campaign.backoff_until.is_(None), Campaign.backoff_until < until))
                    .values(backoff_until=until).execution_options(synchronize_session=False))
    return until


def _pause(session: Session, campaign_id: uuid.UUID, reason: str) -> None:
    """Pause a running campaign until a person resumes it; `paused_reason` says why."""
    end_read(session)
    with transaction(session):
        session.execute(update(Campaign).where(Campaign.id == campaign_id, Campaign.status == "running")
                        .values(status="paused", paused_reason=reason[:200])
                        .execution_options(synchronize_session=False))
    log.warning("campaign %s paused: %s", campaign_id, reason)


# -- 3. and 4. the slot, the "dialing" mark -----------------------------------------------


def _enter_dialing(session: Session, attempt_id: uuid.UUID, bucket: str, cps: int, *, deadline: float,
                   clock=time.time, sleep=time.sleep) -> bool:
    """Take a calls-per-second slot, commit "dialing" just before it (the point of no
    return, committed before the carrier hears of the call), and wait for the slot. True:
    send now. False: no slot in time, or the attempt is no longer ours (still
    uncommitted; the caller aborts)."""
    late_limit = pacing_plan(cps).late_limit
    while True:
        slot = acquire_cps_slot(session, bucket, cps, deadline=deadline, lead=DIALING_LEAD_SECONDS)
        if slot is None:
            return False
        # Not waiting for the disk here keeps the carrier request on its slot (on a busy
        # disk a flushed commit took 20-600 ms). A dialer dying leaves the mark in place;
        # only a database-server crash could undo it, and then `_record_placed` (flushed,
        # retried until the database is back) records the call before any reaper could
        # re-queue the contact.
        commit_without_waiting_for_disk(session)
        # dial_started_at is the slot: the moment the carrier request goes out.
        if not update_attempt(session, attempt_id, (ATTEMPT_CLAIMED,), state=ATTEMPT_DIALING,
                              dial_started_at=datetime.fromtimestamp(slot, timezone.utc)):
            return False
        session.commit()
        wait = slot - clock()
        if wait > 0:
            sleep(wait)
        if clock() <= slot + late_limit:
            return True
        # The commit or the wake-up made us late anyway (a very slow database or machine).
        # Nothing was sent yet, so stepping back to "claimed" is safe; take a later slot.
        stepped_back = update_attempt(session, attempt_id, (ATTEMPT_DIALING,), state=ATTEMPT_CLAIMED,
                                      dial_started_at=None)
        session.commit()
        log.info("attempt %s: late for its calls-per-second slot after the dialing commit; taking a later one",
                 attempt_id)
        if not stepped_back:
            return True  # cannot happen while we hold the attempt; sending is what "dialing" promised


def _no_slot_in_time(session: Session, dial: _Dial, call: _UltravoxCall) -> str:
    """Nothing was sent: the call is closed as not dialled, the attempt aborted."""
    session.rollback()  # the "dialing" mark that found the attempt no longer claimed, if any
    with transaction(session):
        record_call_failed(session, call.call_id, "not_dialled")
    attempt = session.get(DialAttempt, dial.attempt_id)
    if attempt is not None and attempt.state == ATTEMPT_CLAIMED:
        abort_attempt(session, attempt, reason="no calls-per-second slot in time")
    hang_up_quietly(session, dial.agency_id, call.ultravox_call_id)
    return ATTEMPT_ABORTED


def _carrier_failed(session: Session, dial: _Dial, call: _UltravoxCall, exc: CarrierError) -> str:
    """Step 4's carrier request failed: what the error says decides whether the carrier
    may have dialled."""
    end_read(session)
    if isinstance(exc, CarrierRateLimited):
        # 429 is never processed by the carrier: safe to dial again later.
        with transaction(session):
            update_attempt(session, dial.attempt_id, (ATTEMPT_DIALING,), state=ATTEMPT_ABORTED,
                           error=str(exc)[:2000], ended_at=utcnow())
            requeue_contact(session, dial.contact_id, utcnow() + timedelta(seconds=5), uncount=True)
            record_call_failed(session, call.call_id, "carrier_rate_limited")
        hang_up_quietly(session, dial.agency_id, call.ultravox_call_id)
        return ATTEMPT_ABORTED
    if isinstance(exc, CarrierRejected):
        with transaction(session):
            update_attempt(session, dial.attempt_id, (ATTEMPT_DIALING, ATTEMPT_UNKNOWN), state=ATTEMPT_FAILED,
                           outcome="rejected", error=str(exc)[:2000], ended_at=utcnow())
            close_contact(session, dial.contact_id, CONTACT_FAILED, "rejected")
            record_call_failed(session, call.call_id, "carrier_rejected")
        hang_up_quietly(session, dial.agency_id, call.ultravox_call_id)
        return ATTEMPT_FAILED
    # 5xx / timeout: the call may exist. Never redial blindly; callbacks may still tell.
    with transaction(session):
        update_attempt(session, dial.attempt_id, (ATTEMPT_DIALING,), state=ATTEMPT_UNKNOWN, error=str(exc)[:2000])
        close_contact(session, dial.contact_id, CONTACT_UNKNOWN, "carrier_error")
        record_call_unknown(session, call.call_id, "carrier_error")
    return ATTEMPT_UNKNOWN


# -- 5. "placed" ---------------------------------------------------------------------------


def _record_placed(session: Session, attempt_id: uuid.UUID, contact_id: uuid.UUID, call_id: uuid.UUID,
                   carrier_call_id: str) -> None:
    """The carrier accepted the call: record "placed" and its call id (a flushed commit),
    retrying while the database is unreachable."""
    give_up = time.monotonic() + PLACED_RECORD_RETRY_SECONDS
    while True:
        try:
            session.rollback()  # each try in a transaction of its own
            # "unknown": a reaper gave up on us while the carrier was slow. "claimed": a
            # database crash undid the unflushed "dialing" mark (see _enter_dialing).
            mark_placed(session, attempt_id, contact_id, carrier_call_id,
                        (ATTEMPT_DIALING, ATTEMPT_UNKNOWN, ATTEMPT_CLAIMED))
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


# -- ending an attempt that never reached the carrier ---------------------------------------


def abort_attempt(session: Session, attempt: DialAttempt, *, reason: str, contact_state: str | None = None,
                  requeue_at: datetime | None = None) -> None:
    """End a claimed attempt that never reached the carrier ("aborted"): its contact goes
    back to the queue (the attempt is not counted), or with `contact_state` is closed."""
    attempt_id, contact_id = attempt.id, attempt.contact_id
    end_read(session)
    if not update_attempt(session, attempt_id, (ATTEMPT_CLAIMED,), state=ATTEMPT_ABORTED, error=reason[:2000],
                          ended_at=utcnow()):
        session.rollback()  # no longer claimed: not ours to end
        return
    if contact_state is None:
        requeue_contact(session, contact_id, requeue_at or utcnow(), uncount=True)
    else:
        close_contact(session, contact_id, contact_state, reason[:32])
    session.commit()


def _abort_stored(session: Session, attempt_id: uuid.UUID, *, reason: str,
                  requeue_at: datetime | None = None) -> None:
    """abort_attempt on the attempt as stored now (the session was rolled back since it was read)."""
    attempt = session.get(DialAttempt, attempt_id)
    assert attempt is not None  # attempts are deleted only with their campaign
    abort_attempt(session, attempt, reason=reason, requeue_at=requeue_at)
