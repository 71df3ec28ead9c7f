"""Background work claimed from the database.

Jobs are rows in `jobs`. A worker claims due jobs with a lease: on PostgreSQL
the candidate rows are locked with FOR UPDATE SKIP LOCKED so many workers on
many machines never take the same job, and the claim itself is a conditional
UPDATE (checked by rowcount), which keeps SQLite correct too. A worker that
dies mid-job leaves a lease that expires; the job is then claimed again, so
handlers must be idempotent (they are written to be).
"""
from __future__ import annotations

import logging
import traceback
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Callable, Mapping

from sqlalchemy import and_, case, func, or_, select, update
from sqlalchemy.orm import Session

from .config import Config
from .credentials import CredentialStore
from .db import Database
from .logging import agency_id_var, request_id_var
from .models import Job, utcnow

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class JobContext:
    """What a job handler may use; handlers need no Flask app or app context."""

    db: Database
    config: Config
    credentials: CredentialStore


# A handler runs one job: handler(context, payload). It must be idempotent (see above).
Handler = Callable[[JobContext, dict[str, Any]], None]


class RetryLater(Exception):
    """Raised by a handler to be retried after `delay` seconds without it
    counting as a failure of the job's logic (e.g. an upstream 429)."""

    def __init__(self, delay: float, reason: str = ""):
        self.delay = delay
        super().__init__(reason or f"retry in {delay}s")


def enqueue(session: Session, kind: str, payload: dict[str, Any] | None = None, *, agency_id=None,
            run_at: datetime | None = None, max_attempts: int = 8) -> Job:
    job = Job(kind=kind, payload=payload or {}, agency_id=agency_id, run_at=run_at or utcnow(),
              max_attempts=max_attempts)
    session.add(job)
    session.flush()
    return job


def backoff_seconds(attempt: int, base: float = 5.0, cap: float = 3600.0) -> float:
    return min(cap, base * (2 ** max(0, attempt - 1)))


def _due(now: datetime):
    return or_(and_(Job.status == "queued", Job.run_at <= now),
               and_(Job.status == "running", Job.locked_until < now))


def claim_jobs(db: Database, *, limit: int = 10, lease_seconds: float = 300.0,
               kinds: list[str] | None = None, per_agency: int | None = None,
               running: Mapping[uuid.UUID | None, int] | None = None) -> list[Job]:
    """Claim up to `limit` due jobs in one atomic statement.

    UPDATE ... WHERE id IN (SELECT ... [FOR UPDATE SKIP LOCKED]) RETURNING:
    on PostgreSQL concurrent workers skip each other's rows instead of
    waiting; on SQLite the single statement takes the write lock at once, so a
    read lock is never upgraded (which SQLite answers with "database is locked").
    The UPDATE repeats the due condition, so a row another worker claimed
    meanwhile is never claimed twice.

    With `per_agency`, no agency (jobs without one are a group of their own)
    gets more than `per_agency` jobs minus what it already has `running` in
    the caller: the due jobs are numbered per agency, oldest first
    (row_number() OVER (PARTITION BY agency_id ORDER BY run_at, id)), and only
    those within their agency's allowance are candidates, so a queue full of
    one agency's jobs cannot hide another agency's job behind them.
    """
    if limit <= 0:
        return []
    now = utcnow()
    due = select(Job.id).where(_due(now))
    if kinds:
        due = due.where(Job.kind.in_(kinds))
    if per_agency is not None:
        ranked = select(Job.id, Job.agency_id, func.row_number().over(
            partition_by=Job.agency_id, order_by=(Job.run_at, Job.id)).label("agency_rank")).where(_due(now))
        if kinds:
            ranked = ranked.where(Job.kind.in_(kinds))
        ranked_rows = ranked.subquery("ranked")
        allowance: Any = per_agency
        busy = [(agency, max(0, per_agency - count)) for agency, count in (running or {}).items() if count > 0]
        if busy:
            allowance = case(*[(ranked_rows.c.agency_id.is_(None) if agency is None
                                else ranked_rows.c.agency_id == agency, left) for agency, left in busy],
                             else_=per_agency)
        due = due.where(Job.id.in_(select(ranked_rows.c.id).where(ranked_rows.c.agency_rank <= allowance)))
    due = due.order_by(Job.run_at, Job.id).limit(limit)
    if db.engine.dialect.name == "postgresql":
        # Locked rows are skipped before the LIMIT counts, so concurrent workers
        # take different jobs instead of waiting for (or colliding on) the same ones.
        # MATERIALIZED: the candidates are picked once; a subquery the planner
        # re-ran per row would skip the rows this UPDATE already took and hand
        # out more than `limit`.
        candidates = due.with_for_update(skip_locked=True).cte("claimable").prefix_with("MATERIALIZED")
        chosen = select(candidates.c.id).scalar_subquery()
    else:
        chosen = due.scalar_subquery()
    claim = (update(Job).where(Job.id.in_(chosen), _due(now))
             .values(status="running", locked_until=now + timedelta(seconds=lease_seconds),
                     attempts=Job.attempts + 1)
             .returning(Job.id))
    with db.session() as session:
        ids = list(session.scalars(claim))
        jobs = list(session.scalars(select(Job).where(Job.id.in_(ids)).order_by(Job.run_at, Job.id))) if ids else []
    return jobs


def run_job(context: JobContext, handlers: Mapping[str, Handler], job: Job) -> str:
    """Run one claimed job with its kind's handler and record the outcome: done, queued (retry) or failed."""
    handler = handlers.get(job.kind)
    agency_id_var.set(str(job.agency_id) if job.agency_id else None)
    request_id_var.set(f"job-{job.id}")
    outcome: dict[str, Any]
    try:
        if handler is None:
            raise LookupError(f"no handler for job kind {job.kind!r}")
        handler(context, dict(job.payload))
        outcome = {"status": "done", "finished_at": utcnow(), "locked_until": None, "last_error": None}
    except RetryLater as exc:
        outcome = {"status": "queued", "locked_until": None, "last_error": str(exc),
                   "run_at": utcnow() + timedelta(seconds=exc.delay), "attempts": Job.attempts - 1}
    except Exception as exc:  # a failing job must never stop the worker
        error = f"{exc.__class__.__name__}: {exc}"[:2000]
        if job.attempts >= job.max_attempts or isinstance(exc, LookupError):
            log.error("job %s (%s) failed for good: %s", job.id, job.kind, error)
            outcome = {"status": "failed", "finished_at": utcnow(), "locked_until": None, "last_error": error}
        else:
            delay = backoff_seconds(job.attempts)
            log.warning("job %s (%s) failed, retrying in %ss: %s", job.id, job.kind, delay, error)
            log.debug("%s", traceback.format_exc())
            outcome = {"status": "queued", "locked_until": None, "last_error": error,
                       "run_at": utcnow() + timedelta(seconds=delay)}
    with context.db.session() as session:
        session.execute(update(Job).where(Job.id == job.id).values(**outcome))
    return outcome["status"]
