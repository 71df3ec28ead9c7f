"""Deleting the bookkeeping rows nobody needs any more, so tables that grow with every
webhook, job and delivery stay bounded.

What goes, and why it is safe:
- processed_webhook_events (do-once markers: carrier/Ultravox event ids, "event emitted",
  "enrichment queued") older than RETENTION_DAYS. Every delivery that could repeat one
  carries a signed timestamp we refuse after 5 minutes (Ultravox, Telnyx), and
  Twilio/Plivo status callbacks only ever move a call forward, so a marker that old
  guards nothing.
- event_deliveries that are finished (delivered or failed) and older than RETENTION_DAYS.
  Pending ones stay, however old.
- jobs that are finished (done or failed) longer than RETENTION_DAYS. Queued and running
  jobs stay.
- idempotency_keys past their 24 h replay period (services/idempotency_keys.TTL): a
  request with such a key is already treated as new.
- rate_limit_windows that ended over a day ago (each bucket drops its own old windows
  when it is next hit; this removes those of keys that are never hit again).

Calls, attempts, campaigns and everything an agency sees stay. This is maintenance across
all agencies (it reads nothing of any agency's data; rows are picked by age alone), run
by every worker process once an hour (worker.Worker) and on demand with
`flask maintenance purge`. Deletes go in batches of their own short transactions, so a
large backlog never holds locks for long; running it twice at once is harmless.
"""
from __future__ import annotations

import logging
import time
from datetime import datetime, timedelta
from typing import Any, cast

from sqlalchemy import Table, delete, select

from ..db import Database, rows_affected
from ..models import EventDelivery, IdempotencyKey, Job, ProcessedWebhookEvent, RateLimitWindow, utcnow
from . import idempotency_keys

log = logging.getLogger(__name__)

RATE_LIMIT_WINDOW_RETENTION = timedelta(days=1)
BATCH_SIZE = 1000


def purge_expired(db: Database, retention_days: int, *, now: datetime | None = None,
                  batch_size: int = BATCH_SIZE) -> dict[str, int]:
    """Delete what has expired (finished rows older than `retention_days`, Config
    RETENTION_DAYS); the number of rows deleted per table."""
    now = now or utcnow()
    cutoff = now - timedelta(days=retention_days)
    events, deliveries, jobs, keys = (ProcessedWebhookEvent.__table__, EventDelivery.__table__, Job.__table__,
                                      IdempotencyKey.__table__)
    deleted = {
        "processed_webhook_events": _delete_in_batches(db, events.c.id, events.c.received_at < cutoff, batch_size),
        "event_deliveries": _delete_in_batches(
            db, deliveries.c.id, deliveries.c.status.in_(("delivered", "failed")) & (deliveries.c.created_at < cutoff),
            batch_size),
        "jobs": _delete_in_batches(db, jobs.c.id, jobs.c.status.in_(("done", "failed")) & (jobs.c.finished_at < cutoff),
                                   batch_size),
        "idempotency_keys": _delete_in_batches(db, keys.c.id, keys.c.created_at < now - idempotency_keys.TTL,
                                               batch_size),
    }
    # A handful of rows (one per rate-limited key), keyed by (bucket, window_start): one statement.
    windows = cast(Table, RateLimitWindow.__table__)
    with db.session() as session:
        deleted["rate_limit_windows"] = rows_affected(session.execute(delete(windows).where(
            windows.c.window_start < (now - RATE_LIMIT_WINDOW_RETENTION).timestamp()))) or 0
    return deleted


def _delete_in_batches(db: Database, id_column: Any, condition: Any, batch_size: int) -> int:
    table = id_column.table
    total = 0
    while True:
        with db.session() as session:
            batch = select(id_column).where(condition).limit(batch_size).scalar_subquery()
            count = rows_affected(session.execute(delete(table).where(id_column.in_(batch)))) or 0
        total += count
        if count < batch_size:
            return total


def run_purge(db: Database, retention_days: int) -> dict[str, int]:
    """purge_expired, logged (counts and time), never raising: maintenance must not stop a worker."""
    started = time.monotonic()
    try:
        deleted = purge_expired(db, retention_days)
    except Exception:
        log.exception("purging expired bookkeeping rows failed; next attempt at the next interval")
        return {}
    log.info("purged expired bookkeeping rows in %.1f s", time.monotonic() - started, extra={"deleted": deleted})
    return deleted
