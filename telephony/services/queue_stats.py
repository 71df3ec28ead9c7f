"""The job queue as the database sees it, for /metrics: what is waiting, and for how long.

Read at scrape time by the web (api/ops.py), not counted by the workers: the queue is
one table every process shares, so one query gives the true figures whatever the
number of workers, hosts or restarts. Only queued and running rows are read (the
`ix_jobs_due` index); finished jobs are not counted.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import and_, case, func, or_, select, type_coerce
from sqlalchemy.orm import Session

from ..models import Job, UTCDateTime, utcnow


@dataclass(frozen=True)
class KindStats:
    due: int  # queued and due now, or running with an expired lease (claimable now)
    scheduled: int  # queued for later (retries waiting for their backoff)
    running: int  # claimed, lease still valid
    oldest_due_age_seconds: float  # how long the oldest claimable job has waited; 0 when none


def job_queue_stats(session: Session, *, now: datetime | None = None) -> dict[str, KindStats]:
    """Per job kind; kinds with no queued or running job are absent."""
    now = now or utcnow()
    queued, running = Job.status == "queued", Job.status == "running"
    claimable = or_(and_(queued, Job.run_at <= now), and_(running, Job.locked_until < now))
    due_since = case((queued, Job.run_at), else_=Job.locked_until)
    rows = session.execute(
        select(Job.kind,
               func.sum(case((claimable, 1), else_=0)),
               func.sum(case((and_(queued, Job.run_at > now), 1), else_=0)),
               func.sum(case((and_(running, Job.locked_until >= now), 1), else_=0)),
               # type_coerce: min() over a CASE would lose the column's type (SQLite: text).
               type_coerce(func.min(case((claimable, due_since))), UTCDateTime()))
        .where(Job.status.in_(("queued", "running")))
        .group_by(Job.kind)).all()
    stats = {}
    for kind, due, scheduled, leased, oldest in rows:
        age = max(0.0, (now - oldest).total_seconds()) if oldest is not None else 0.0
        stats[kind] = KindStats(due=int(due or 0), scheduled=int(scheduled or 0), running=int(leased or 0),
                                oldest_due_age_seconds=age)
    return stats
