"""The worker process: the job loop, maintenance, and the campaign dispatcher beside them.

`Worker` claims due jobs (telephony.jobs) and runs them on a bounded thread pool,
each agency within its share of the slots, each with the handler of its kind from
JOB_HANDLERS, handing it a JobContext built once from the app; every so
often it purges expired bookkeeping rows (services/retention.py). `main_loop` is
what `flask worker run` runs: the job loop, with the campaign dispatcher's
threads started beside it.
"""
from __future__ import annotations

import gc
import logging
import random
import signal
import threading
import time
import uuid
from collections import Counter
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import wait as futures_wait
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Iterator, Mapping

from flask import Flask
from sqlalchemy.orm import Session

from .config import DEFAULT_WORKER_CONCURRENCY
from .db import Database
from .jobs import Handler, JobContext, claim_jobs, run_job
from .metrics import count_job, export_worker_metrics, metrics_process_exited
from .models import Job
from .services import enrichment, events
from .services.campaigns import imports as contact_imports
from .services.campaigns.loop import Dispatcher
from .services.retention import run_purge
from .services.stale_calls import STALE_CHECK_INTERVAL, reconcile_stale_calls
from .services.worker_heartbeats import HEARTBEAT_INTERVAL, beat, forget, new_worker_id

log = logging.getLogger(__name__)

# Every kind of job there is, and the handler that runs it.
JOB_HANDLERS: dict[str, Handler] = {
    events.DELIVER_JOB: events.deliver,
    enrichment.ENRICH_JOB: enrichment.enrich_call,
    contact_imports.IMPORT_JOB: contact_imports.run_import,
}


def job_context(app: Flask) -> JobContext:
    """What the handlers get from the app: its database, config and credential store."""
    return JobContext(db=app.extensions["telephony.db"], config=app.extensions["telephony.config"],
                      credentials=app.extensions["telephony.credentials"])


# Every worker process purges expired bookkeeping rows (services/retention.py) this often,
# the first time a random moment within the first interval, so workers started together
# do not all purge at once.
MAINTENANCE_INTERVAL_SECONDS = 3600.0


class _OneTransactionAtATime(Database):
    """SQLite (development and tests): the worker's jobs take turns at the database.

    A SQLite transaction that began with a read cannot write once another connection
    wrote meanwhile ("database is locked" at once; see db.end_reads_before_writing),
    and the handlers read then write in one unit of work. So the worker's threads
    (claims, handlers, outcomes) open their units of work one at a time; what takes
    long, the HTTP requests, happens outside them and still runs concurrently.
    PostgreSQL needs none of this. Shares the engine and sessions of `db`."""

    def __init__(self, db: Database) -> None:  # no engine of its own: not Database.__init__
        self.url, self.engine, self.sessionmaker = db.url, db.engine, db.sessionmaker
        self._turn = threading.RLock()

    @contextmanager
    def session(self) -> Iterator[Session]:
        with self._turn, super().session() as session:
            yield session


# Jobs one worker process runs at once (WORKER_CONCURRENCY, read by main_loop). One
# agency gets at most a quarter of them (at least one; jobs without an agency are a
# group of their own), so one agency's slow jobs (endpoints that hang) cannot hold up
# everyone else's.
DEFAULT_CONCURRENCY = DEFAULT_WORKER_CONCURRENCY


def agency_share(concurrency: int) -> int:
    """The most jobs of one agency a worker with `concurrency` slots runs at once."""
    return max(1, concurrency // 4)


# A claimed job starts at once (a worker claims only as many as it has free slots), so
# its lease needs to outlast only the job itself: an event delivery takes at most
# events.TOTAL_TIMEOUT (+ a connect timeout), an enrichment a few upstream calls. A
# job whose worker died is claimed again when its lease runs out.
LEASE_SECONDS = 300.0
# How long a stopping worker waits for its running jobs. A job still running after
# that keeps its lease and is claimed again once the lease runs out (handlers are
# idempotent).
STOP_TIMEOUT_SECONDS = 30.0


@dataclass
class Worker:
    app: Flask
    poll_interval: float = 1.0
    concurrency: int = DEFAULT_CONCURRENCY
    lease_seconds: float = LEASE_SECONDS
    stop_timeout: float = STOP_TIMEOUT_SECONDS
    maintenance_interval: float = MAINTENANCE_INTERVAL_SECONDS
    stale_check_interval: float = STALE_CHECK_INTERVAL
    handlers: Mapping[str, Handler] = field(default_factory=lambda: JOB_HANDLERS)
    heartbeat_interval: float = HEARTBEAT_INTERVAL
    context: JobContext = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if self.concurrency < 1:
            raise ValueError("a worker needs at least one job slot")
        self._stop = threading.Event()
        self._wake = threading.Event()  # a job finished, or stop() was called
        self._lock = threading.Lock()
        self._running: dict[int, uuid.UUID | None] = {}  # job id -> its agency, for the fair claim
        self._futures: set[Future[str | None]] = set()
        self._pool = ThreadPoolExecutor(max_workers=self.concurrency, thread_name_prefix="job")
        self._next_maintenance = time.monotonic() + random.uniform(0, self.maintenance_interval)
        self._next_stale_check = time.monotonic() + random.uniform(0, self.stale_check_interval)
        self._stale_resume_after: tuple[datetime, uuid.UUID] | None = None
        # Purges and the stale-call pass run here, beside the job loop: they may take a
        # while (Ultravox requests) and must not keep free job slots from being claimed.
        self._chore_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="worker-chores")
        self._chore: Future[None] | None = None
        context = job_context(self.app)
        if context.db.engine.dialect.name == "sqlite":
            context = replace(context, db=_OneTransactionAtATime(context.db))
        self.context = context
        # Liveness (services/worker_heartbeats.py): beats from the job loop itself, so a
        # worker whose loop is stuck stops counting as alive, whatever its other threads do.
        self.worker_id = new_worker_id()
        self._next_heartbeat = 0.0

    @property
    def db(self) -> Database:
        return self.context.db

    @property
    def per_agency(self) -> int:
        return agency_share(self.concurrency)

    def stop(self, *_args) -> None:
        self._stop.set()
        self._wake.set()

    def running(self) -> int:
        with self._lock:
            return len(self._running)

    def run_once(self, wait: bool = True) -> int:
        """Claim as many due jobs as there are free slots, each agency within its
        share, and start them; the number claimed. With `wait`, return once these
        jobs have finished (the loop does not wait; tests and one-off runs do)."""
        if self._stop.is_set():
            return 0
        with self._lock:
            free = self.concurrency - len(self._running)
            by_agency = Counter(self._running.values())
        if free <= 0:
            return 0
        jobs = claim_jobs(self.db, limit=free, lease_seconds=self.lease_seconds, per_agency=self.per_agency,
                          running=by_agency)
        futures = [self._start(job) for job in jobs]
        if wait:
            futures_wait(futures)
        return len(jobs)

    def _start(self, job: Job) -> Future[str | None]:
        with self._lock:
            self._running[job.id] = job.agency_id
        try:
            future = self._pool.submit(self._run, job)
        except BaseException:
            self._finished(job.id)
            raise
        self._futures.add(future)
        future.add_done_callback(self._futures.discard)
        return future

    def _run(self, job: Job) -> str | None:
        started, status = time.perf_counter(), None
        try:
            status = run_job(self.context, self.handlers, job)
            return status
        except Exception:  # recording the outcome failed (database down): the lease brings it back
            log.exception("job %s (%s) could not be recorded; it runs again when its lease ends", job.id, job.kind)
            return None
        finally:
            count_job(job.kind, status, time.perf_counter() - started)
            self._finished(job.id)

    def _finished(self, job_id: int) -> None:
        with self._lock:
            self._running.pop(job_id, None)
        self._wake.set()

    def maintain_if_due(self, now: float | None = None) -> bool:
        """Purge expired bookkeeping rows if this worker's interval has passed. True if it ran."""
        now = time.monotonic() if now is None else now
        if now < self._next_maintenance:
            return False
        self._next_maintenance = now + self.maintenance_interval
        run_purge(self.db, self.context.config.retention_days)
        return True

    def settle_stale_calls_if_due(self, now: float | None = None) -> bool:
        """Settle calls a crash left unfinished (services/stale_calls.py) if this worker's
        interval has passed. True if it ran."""
        now = time.monotonic() if now is None else now
        if now < self._next_stale_check:
            return False
        self._next_stale_check = now + self.stale_check_interval
        report = reconcile_stale_calls(self.db, self.context.credentials, self.context.config,
                                       after=self._stale_resume_after)
        self._stale_resume_after = report.resume_after
        return True

    def heartbeat_if_due(self, now: float | None = None) -> bool:
        """Record this worker as alive if its heartbeat interval has passed. True if it did."""
        now = time.monotonic() if now is None else now
        if now < self._next_heartbeat:
            return False
        self._next_heartbeat = now + self.heartbeat_interval
        try:
            beat(self.db, self.worker_id)
        except Exception:  # the database is away: the loop goes on, the next beat tries again
            log.warning("worker heartbeat could not be recorded", exc_info=True)
            return False
        return True

    def _chores(self) -> None:
        try:
            self.maintain_if_due()
            self.settle_stale_calls_if_due()
        except Exception:  # logged, and tried again at the next interval
            log.exception("worker maintenance failed; continuing")

    def run_forever(self) -> None:
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, self.stop)
            signal.signal(signal.SIGINT, self.stop)
        log.info("worker started", extra={"handlers": sorted(self.handlers), "concurrency": self.concurrency})
        while not self._stop.is_set():
            self._wake.clear()
            self.heartbeat_if_due()
            try:
                claimed = self.run_once(wait=False)
                if self._chore is None or self._chore.done():
                    self._chore = self._chore_thread.submit(self._chores)
            except Exception:
                log.exception("worker loop error; continuing")
                claimed = 0
            if not claimed:  # nothing due, or no free slot: until a job finishes or the next poll
                self._wake.wait(self.poll_interval)
        self.shutdown()
        log.info("worker stopped")

    def shutdown(self, timeout: float | None = None) -> int:
        """Stop claiming and wait (at most `timeout`, default stop_timeout) for the
        running jobs; the number still running when it gave up."""
        self._stop.set()
        pending = list(self._futures)
        _done, not_done = futures_wait(pending, timeout=self.stop_timeout if timeout is None else timeout)
        self._pool.shutdown(wait=False, cancel_futures=True)
        self._chore_thread.shutdown(wait=False, cancel_futures=True)
        if not_done:
            log.warning("%d job(s) still running at stop; they run again when their leases end", len(not_done))
        try:
            forget(self.db, self.worker_id)
        except Exception:  # its row ages out instead
            log.warning("worker heartbeat could not be removed", exc_info=True)
        return len(not_done)


def main_loop(app: Flask, poll_interval: float = 1.0) -> None:

    # As in gunicorn.conf.py's post_worker_init: what the app loaded lives as long as the
    # process, and a full garbage collection walking it would stop the campaign dialers
    # (and their call-start slots) for ~200 ms.
    gc.freeze()
    started = time.monotonic()
    config = app.extensions["telephony.config"]
    export_worker_metrics(config.worker_metrics_port, config.worker_metrics_host)
    # The campaign dispatcher runs beside the job loop in every worker process
    # (DISPATCH_THREADS=0 turns it off); workers cooperate through the database.
    dispatcher = Dispatcher(app, threads=config.dispatch_threads) if config.dispatch_threads > 0 else None
    if dispatcher is not None:
        dispatcher.start()
    try:
        Worker(app, poll_interval=poll_interval, concurrency=config.worker_concurrency).run_forever()
    finally:
        if dispatcher is not None:
            dispatcher.stop()
        metrics_process_exited()
    log.info("worker ran for %.0fs", time.monotonic() - started)
