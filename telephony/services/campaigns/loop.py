"""The dispatcher loop: claims and dials in a pool of threads, reconciles now and then."""
from __future__ import annotations

import logging
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from flask import Flask

from ...db import Database
from ...metrics import CAMPAIGN_DIALS, count_campaign_reaped
from ...models import utcnow
from .claim import claim_batch, due_campaign_ids
from .dial import dial_attempt
from .outcomes import DispatchSettings, reconcile

log = logging.getLogger(__name__)


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
                CAMPAIGN_DIALS.labels(dial_attempt(session, attempt_id)).inc()
        except Exception:
            log.exception("dial of attempt %s failed; the reconciler will settle it", attempt_id)

    def run_once(self) -> int:
        """One pass: reconcile (at most once per reconcile_interval), then claim for free threads."""
        claimed = 0
        with self.app.app_context():
            if time.monotonic() - self._last_reconcile >= self.reconcile_interval:
                self._last_reconcile = time.monotonic()
                with self.db.session() as session:
                    count_campaign_reaped(reconcile(session, self.settings))
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
