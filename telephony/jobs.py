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
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Callable, Mapping

from sqlalchemy import and_, or_, select, update
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
               kinds: list[str] | None = None) -> list[Job]:
    """Claim up to `limit` due jobs in one atomic statement.

    UPDATE ... WHERE id IN (SELECT ... [FOR UPDATE SKIP LOCKED]) RETURNING:
    on PostgreSQL concurrent workers skip each other's rows instead of
    waiting; on SQLite the single statement takes the write lock at once, so a
    read lock is never upgraded (which SQLite answers with "database is locked").
    """
    now = utcnow()
    due = select(Job.id).where(_due(now)).order_by(Job.run_at, Job.id).limit(limit)
    if kinds:
        due = due.where(Job.kind.in_(kinds))
    if db.engine.dialect.name == "postgresql":
        due = due.with_for_update(skip_locked=True)
    claim = (update(Job).where(Job.id.in_(due.scalar_subquery()))
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
