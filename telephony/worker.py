"""The worker process: the job loop, maintenance, and the campaign dispatcher beside them.

`Worker` claims due jobs (telephony.jobs) and runs each with the handler of its
kind from JOB_HANDLERS, handing it a JobContext built once from the app; every so
often it purges expired bookkeeping rows (services/retention.py). `main_loop` is
what `flask worker run` runs: the job loop, with the campaign dispatcher's
threads started beside it.
"""
from __future__ import annotations

import gc
import logging
import os
import random
import signal
import threading
import time
from dataclasses import dataclass, field
from typing import Mapping

from flask import Flask

from .db import Database
from .jobs import Handler, JobContext, claim_jobs, run_job
from .services import enrichment, events
from .services.campaigns.loop import Dispatcher
from .services.retention import run_purge

log = logging.getLogger(__name__)

# Every kind of job there is, and the handler that runs it.
JOB_HANDLERS: dict[str, Handler] = {
    events.DELIVER_JOB: events.deliver,
    enrichment.ENRICH_JOB: enrichment.enrich_call,
}


def job_context(app: Flask) -> JobContext:
    """What the handlers get from the app: its database, config and credential store."""
    return JobContext(db=app.extensions["telephony.db"], config=app.extensions["telephony.config"],
                      credentials=app.extensions["telephony.credentials"])


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
    handlers: Mapping[str, Handler] = field(default_factory=lambda: JOB_HANDLERS)
    context: JobContext = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self._next_maintenance = time.monotonic() + random.uniform(0, self.maintenance_interval)
        self.context = job_context(self.app)

    @property
    def db(self) -> Database:
        return self.context.db

    def stop(self, *_args) -> None:
        self._stop.set()

    def run_once(self) -> int:
        jobs = claim_jobs(self.db, limit=self.batch_size, lease_seconds=self.lease_seconds)
        for job in jobs:
            if self._stop.is_set():
                break
            run_job(self.context, self.handlers, job)
        return len(jobs)

    def maintain_if_due(self, now: float | None = None) -> bool:
        """Purge expired bookkeeping rows if this worker's interval has passed. True if it ran."""
        now = time.monotonic() if now is None else now
        if now < self._next_maintenance:
            return False
        self._next_maintenance = now + self.maintenance_interval
        run_purge(self.db, self.context.config.retention_days)
        return True

    def run_forever(self) -> None:
        signal.signal(signal.SIGTERM, self.stop)
        signal.signal(signal.SIGINT, self.stop)
        log.info("worker started", extra={"handlers": sorted(self.handlers)})
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
