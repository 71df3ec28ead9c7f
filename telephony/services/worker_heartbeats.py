"""Which worker processes are alive: each running worker refreshes a heartbeat row.

`flask worker run` records a row when it starts and refreshes it every
HEARTBEAT_INTERVAL seconds from its job loop (worker.Worker), so the row says "this
process is still claiming jobs"; a clean stop deletes it. A worker is alive while its
row is younger than ALIVE_WITHIN (four missed beats). /readyz reports the count,
/readyz/workers answers 503 when it is zero, and /metrics exports it
(telephony_workers_alive) for alerting. Rows of workers that died are deleted by the
next worker that starts once they are FORGET_AFTER old. Maintenance across all agencies: no agency
data is read or written.
"""
from __future__ import annotations

import os
import secrets
import socket
from datetime import datetime, timedelta

from sqlalchemy import delete, func, select, update
from sqlalchemy.orm import Session

from ..db import Database, rows_affected
from ..models import WorkerHeartbeat, utcnow

HEARTBEAT_INTERVAL = 15.0  # seconds between two beats of one worker
ALIVE_WITHIN = timedelta(seconds=60)
FORGET_AFTER = timedelta(days=1)


def new_worker_id() -> str:
    """A name for this worker process, unique across hosts and restarts."""
    return f"{socket.gethostname()[:100]}-{os.getpid()}-{secrets.token_hex(4)}"


def beat(db: Database, worker_id: str, *, now: datetime | None = None) -> None:
    """Record that the worker `worker_id` is alive now (its row is created on the first beat)."""
    now = now or utcnow()
    with db.session() as session:
        refreshed = session.execute(update(WorkerHeartbeat).where(WorkerHeartbeat.id == worker_id)
                                    .values(last_seen_at=now))
        if rows_affected(refreshed) == 0:
            session.add(WorkerHeartbeat(id=worker_id, hostname=socket.gethostname()[:255], pid=os.getpid(),
                                        started_at=now, last_seen_at=now))
            # A new worker also clears the rows of workers that died long ago.
            session.execute(delete(WorkerHeartbeat).where(WorkerHeartbeat.last_seen_at < now - FORGET_AFTER))


def forget(db: Database, worker_id: str) -> None:
    """The worker stops cleanly: it no longer counts as alive."""
    with db.session() as session:
        session.execute(delete(WorkerHeartbeat).where(WorkerHeartbeat.id == worker_id))


def count_alive(session: Session, *, hostname: str | None = None, now: datetime | None = None) -> int:
    """The worker processes (of `hostname`, if given) that beat within ALIVE_WITHIN."""
    now = now or utcnow()
    alive = select(func.count()).select_from(WorkerHeartbeat).where(WorkerHeartbeat.last_seen_at >= now - ALIVE_WITHIN)
    if hostname is not None:
        alive = alive.where(WorkerHeartbeat.hostname == hostname[:255])
    return session.scalar(alive) or 0
