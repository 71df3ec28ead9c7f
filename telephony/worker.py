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
import random
import signal
import threading
import time
import traceback
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Callable

from flask import Flask
from sqlalchemy import and_, or_, select, update
from sqlalchemy.orm import Session

from .db import Database
from .logging import agency_id_var, request_id_var
from .models import Job, utcnow
from .services.retention import run_purge

log = logging.getLogger(__name__)

Handler = Callable[[Flask, dict[str, Any]], None]
HANDLERS: dict[str, Handler] = {}


class RetryLater(Exception):
    """Raised by a handler to be retried after `delay` seconds without it
    counting as a failure of the job's logic (e.g. an upstream 429)."""

    def __init__(self, delay: float, reason: str = ""):
        self.delay = delay
        super().__init__(reason or f"retry in {delay}s")


def job_handler(kind: str) -> Callable[[Handler], Handler]:
    def register(handler: Handler) -> Handler:
        HANDLERS[kind] = handler
        return handler
    return register


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


def run_job(app: Flask, db: Database, job: Job) -> str:
    """Run one claimed job and record the outcome: done, queued (retry) or failed."""
    handler = HANDLERS.get(job.kind)
    agency_id_var.set(str(job.agency_id) if job.agency_id else None)
    request_id_var.set(f"job-{job.id}")
    outcome: dict[str, Any]
    try:
        if handler is None:
            raise LookupError(f"no handler for job kind {job.kind!r}")
        with app.app_context():
            handler(app, dict(job.payload))
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
    with db.session() as session:
        session.execute(update(Job).where(Job.id == job.id).values(**outcome))
    return outcome["status"]


# Every worker process purges expired bookkeeping rows (services/retention.py) this often,
# the first time a random moment within the first interval, so workers started together
# do not all purge at once.
MAINTENANCE_INTERVAL_SECONDS = 3600.0


@dataclass
class Worker:
    app: Flask
    poll_interval: float = 1.0
    batch_size: int = 10
    lease_seconds: float = 300.0
    maintenance_interval: float = MAINTENANCE_INTERVAL_SECONDS

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self._next_maintenance = time.monotonic() + random.uniform(0, self.maintenance_interval)

    @property
    def db(self) -> Database:
        return self.app.extensions["telephony.db"]

    def stop(self, *_args) -> None:
        self._stop.set()

    def run_once(self) -> int:
        jobs = claim_jobs(self.db, limit=self.batch_size, lease_seconds=self.lease_seconds)
        for job in jobs:
            if self._stop.is_set():
                break
            run_job(self.app, self.db, job)
        return len(jobs)

    def maintain_if_due(self, now: float | None = None) -> bool:
        """Purge expired bookkeeping rows if this worker's interval has passed. True if it ran."""
        now = time.monotonic() if now is None else now
        if now < self._next_maintenance:
            return False
        self._next_maintenance = now + self.maintenance_interval
        run_purge(self.db, self.app.extensions["telephony.config"].retention_days)
        return True

    def run_forever(self) -> None:
        signal.signal(signal.SIGTERM, self.stop)
        signal.signal(signal.SIGINT, self.stop)
        log.info("worker started", extra={"handlers": sorted(HANDLERS)})
        while not self._stop.is_set():
            try:
                done = self.run_once()
                self.maintain_if_due()
            except Exception:
                log.exception("worker loop error; continuing")
                done = 0
            if not done:
                self._stop.wait(self.poll_interval)
        log.info("worker stopped")


def main_loop(app: Flask, poll_interval: float = 1.0) -> None:
    import gc
    import os

    from .services.campaigns.loop import Dispatcher

    # As in gunicorn.conf.py's post_worker_init: what the app loaded lives as long as the
    # process, and a full garbage collection walking it would stop the campaign dialers
    # (and their call-start slots) for ~200 ms.
    gc.freeze()
    started = time.monotonic()
    # The campaign dispatcher runs beside the job loop in every worker process
    # (DISPATCH_THREADS=0 turns it off); workers cooperate through the database.
    threads = int(os.environ.get("DISPATCH_THREADS", "8") or 0)
    dispatcher = Dispatcher(app, threads=threads) if threads > 0 else None
    if dispatcher is not None:
        dispatcher.start()
    try:
        Worker(app, poll_interval=poll_interval).run_forever()
    finally:
        if dispatcher is not None:
            dispatcher.stop()
    log.info("worker ran for %.0fs", time.monotonic() - started)
