"""Calls a crash left behind are settled from Ultravox, not left unfinished for ever.

Normally Ultravox's webhooks (services/ultravox_events.py) and the carriers' callbacks
move every call to a terminal status. A call stays unfinished when those never come: the
agency has not registered the Ultravox webhook, a process died between creating the call
and recording it, or a carrier's answer was unclear ("unknown"). Every worker runs this
pass every STALE_CHECK_INTERVAL seconds (worker.py); it takes the oldest such calls:

- with an Ultravox call id: GET the call from Ultravox with the agency's own key. An ended
  call is applied exactly like its call.ended webhook (status, end reason, duration,
  summaries, the agency's call.ended / call.failed event, enrichment); one Ultravox no
  longer knows (404) becomes "failed" (end reason `not_found_in_ultravox`); one still
  running is left alone.
- without one (the Ultravox call was never created, or its id never stored): "failed",
  end reason `never_started`. Nobody can be on such a call: inbound callers were answered
  long ago, and an Ultravox call whose id we lost is repaired from its own webhooks.

Each call is settled in a transaction of its own with a conditional write (the status
must still be the one read), so concurrent workers and late webhooks cannot clash.
"""
from __future__ import annotations

import logging
import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import and_, or_, select, update
from sqlalchemy.orm import Session

from .. import call_states
from ..config import Config
from ..credentials import CredentialStore
from ..db import Database, rows_affected
from ..models import Call, utcnow
from ..ultravox import UltravoxClient
from ..ultravox_errors import UltravoxError, UltravoxNotFound
from .calls import InvalidUltravoxKey, MissingUltravoxKey, ultravox_client_for
from .events import emit_call_event
from .ultravox_events import apply_snapshot

log = logging.getLogger(__name__)

# A call not yet answered after this long is settled from Ultravox (a join timeout is
# at most minutes); an answered one only after STALE_LIVE_AFTER (calls can be long).
STALE_AFTER = timedelta(minutes=15)
STALE_LIVE_AFTER = timedelta(hours=4)
STALE_CHECK_INTERVAL = 300.0  # seconds, per worker
BATCH = 100
# A pass stops asking Ultravox after this long (it runs on the worker's loop thread; an
# unwell Ultravox must not keep the worker from claiming jobs); the rest waits.
PASS_BUDGET_SECONDS = 20.0
NOT_ANSWERED = (call_states.CREATED, call_states.UNKNOWN, call_states.QUEUED, call_states.RINGING)


@dataclass
class StaleCallReport:
    ended: int = 0  # settled from Ultravox's record of the call
    not_found: int = 0
    never_started: int = 0
    still_running: int = 0
    unreachable: int = 0  # Ultravox did not answer, or the agency has no usable key: next pass
    # Where the next pass goes on: (created_at, id) of the last call looked at, or None to
    # start again from the oldest. So calls that cannot be settled yet (no key, Ultravox
    # down, still running) never keep the pass from reaching the ones behind them.
    resume_after: tuple[datetime, uuid.UUID] | None = None


def reconcile_stale_calls(db: Database, credentials: CredentialStore, config: Config, *,
                          now: datetime | None = None,
                          after: tuple[datetime, uuid.UUID] | None = None) -> StaleCallReport:
    """One pass over at most BATCH stale calls, oldest first from `after` (a previous
    pass's `resume_after`), stopping after PASS_BUDGET_SECONDS."""
    now = now or utcnow()
    report = StaleCallReport()
    query = (select(Call.id, Call.agency_id, Call.ultravox_call_id, Call.status, Call.created_at)
             .where(or_(and_(Call.status.in_(NOT_ANSWERED), Call.created_at < now - STALE_AFTER),
                        and_(Call.status == call_states.IN_PROGRESS, Call.created_at < now - STALE_LIVE_AFTER)))
             .order_by(Call.created_at, Call.id).limit(BATCH))
    if after is not None:
        query = query.where(or_(Call.created_at > after[0], and_(Call.created_at == after[0], Call.id > after[1])))
    with db.session() as session:
        stale = session.execute(query).all()
    clients: dict[uuid.UUID, UltravoxClient | None] = {}
    give_up = time.monotonic() + PASS_BUDGET_SECONDS
    for row in stale:
        if time.monotonic() > give_up:
            break  # the rest waits for the next pass, which resumes here
        report.resume_after = (row.created_at, row.id)
        if not row.ultravox_call_id:
            report.never_started += _fail(db, row.id, row.status, "never_started", now)
            continue
        if row.agency_id not in clients:
            clients[row.agency_id] = _client(db, credentials, config, row.agency_id)
        client = clients[row.agency_id]
        if client is None:
            report.unreachable += 1
            continue
        _settle_from_ultravox(db, client, row, report, now)
    reached_the_end = not stale or (len(stale) < BATCH and report.resume_after == (stale[-1].created_at,
                                                                                   stale[-1].id))
    if reached_the_end:
        report.resume_after = None  # every stale call was looked at: start from the oldest again
    if stale:
        log.info("stale calls: %s", report)
    return report


def _client(db: Database, credentials: CredentialStore, config: Config,
            agency_id: uuid.UUID) -> UltravoxClient | None:
    with db.session() as session:
        try:
            return ultravox_client_for(session, agency_id, credentials=credentials, config=config)
        except (MissingUltravoxKey, InvalidUltravoxKey):
            return None


def _settle_from_ultravox(db: Database, client: UltravoxClient, row: Any, report: StaleCallReport,
                          now: datetime) -> None:
    try:
        snapshot = client.get_call(row.ultravox_call_id)
    except UltravoxNotFound:
        report.not_found += _fail(db, row.id, row.status, "not_found_in_ultravox", now)
        return
    except UltravoxError as exc:  # unreachable or unwell: a later pass tries again
        log.warning("stale call %s: Ultravox did not answer (%s)", row.id, type(exc).__name__)
        report.unreachable += 1
        return
    if not snapshot.get("ended"):
        report.still_running += 1
        return
    with db.session() as session:
        call = session.scalar(select(Call).where(Call.id == row.id, Call.status == row.status).with_for_update())
        if call is not None:  # else a webhook or callback settled it meanwhile
            apply_snapshot(session, call, snapshot)
            report.ended += 1


def _fail(db: Database, call_id: uuid.UUID, status: str, reason: str, now: datetime) -> bool:
    with db.session() as session:
        return _mark_failed(session, call_id, status, reason, now)


def _mark_failed(session: Session, call_id: uuid.UUID, status: str, reason: str, now: datetime) -> bool:
    result = session.execute(update(Call).where(Call.id == call_id, Call.status == status)
                             .values(status=call_states.FAILED, end_reason=reason, ended_at=now, join_url=None)
                             .execution_options(synchronize_session=False))
    if rows_affected(result) != 1:
        return False  # settled meanwhile
    call = session.get(Call, call_id, populate_existing=True)
    if call is not None:
        emit_call_event(session, call, "call.failed")
    return True
