"""Operational endpoints: liveness, readiness (web and workers), metrics, the OpenAPI document.

Readiness of the web does not depend on the workers: a web process that can reach the
database serves webhooks and the API whether or not any worker runs, and an
orchestrator that took it out of rotation because the workers were down would turn a
delayed-jobs problem into an outage. So /readyz only reports the count of live
workers, and /readyz/workers is the check that fails (503) when none is alive, for a
monitor or the workers' own health check (docs/deploy.md).
"""
from __future__ import annotations

import os
import threading
import weakref
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as CheckTimedOut
from typing import Iterator

from flask import Blueprint, Response, current_app, jsonify
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, generate_latest, multiprocess
from prometheus_client.core import GaugeMetricFamily, Metric
from pydantic import BaseModel
from sqlalchemy import text
from sqlalchemy.exc import OperationalError, ProgrammingError

from ..db import Database, get_db
from ..services.queue_stats import KindStats, job_queue_stats
from ..services.worker_heartbeats import count_alive
from .openapi import build_openapi
from .schema import Body, ResponseModel, document

bp = Blueprint("ops", __name__)

# A readiness probe answers within this, whatever the database does: a database that
# accepts connections and never answers is "not ready", not a hung probe.
READY_CHECK_SECONDS = 1.5
# The checks run here, so a hung one is left behind (it ends at the engine's connect or
# pool timeout) while the probe answers. Two threads: probes are rare.
_ready_checks = ThreadPoolExecutor(max_workers=2, thread_name_prefix="readyz")
# The check in progress, per database: probes that come while one still waits on a hung
# database wait on that same check instead of queueing more behind it.
_checks_in_progress: "weakref.WeakKeyDictionary[Database, Future[int | None]]" = weakref.WeakKeyDictionary()
_checks_lock = threading.Lock()
# The queue figures of /metrics are read on a thread of their own, so a scrape that waits
# on a hung database never delays a readiness probe.
_metrics_queries = ThreadPoolExecutor(max_workers=1, thread_name_prefix="metrics-db")


def _readiness_check(db: Database) -> "Future[int | None]":
    with _checks_lock:
        check = _checks_in_progress.get(db)
        if check is None or check.done():
            check = _checks_in_progress[db] = _ready_checks.submit(_check_database, db)
        return check


def _check_database(db: Database) -> int | None:
    """The database answers; the number of live workers (None: the heartbeat table cannot
    be read, e.g. new code before its migration: the web is ready all the same)."""
    with db.session() as session:
        session.execute(text("SELECT 1"))
    try:
        with db.session() as session:
            return count_alive(session)
    except (ProgrammingError, OperationalError):
        return None


def _database_check() -> tuple[int | None, tuple[Response, int] | None]:
    """(live workers, None) when the database answered in time, else (None, the 503 to send)."""
    try:
        return _readiness_check(get_db()).result(timeout=READY_CHECK_SECONDS), None
    except CheckTimedOut:
        current_app.logger.warning("readiness check failed: no answer from the database in %.1f s",
                                   READY_CHECK_SECONDS)
        return None, (jsonify(status="unavailable", database="not answering"), 503)
    except Exception as exc:  # any driver error means "not ready"
        current_app.logger.warning("readiness check failed: %s", exc.__class__.__name__)
        return None, (jsonify(status="unavailable", database="unreachable"), 503)


class Health(ResponseModel):
    status: str


class Readiness(ResponseModel):
    status: str
    database: str


@bp.get("/healthz")
@document(summary="Liveness: the process is up (nothing else is checked)", tags=["operations"], security=[],
          responses={200: (Health, "Up")})
def healthz():
    """The process is up. No dependency is checked, so a database outage does
    not get healthy web processes restarted in a loop."""
    return jsonify(status="ok")


@bp.get("/readyz")
@document(summary="Readiness: the database answers", tags=["operations"], security=[],
          responses={200: (Readiness, "Ready"),
                     503: (Readiness, "The database is unreachable or does not answer within 1.5 s")})
def readyz():
    """Ready when the database answers; `workers_alive` is for information only (see above)."""
    workers, failure = _database_check()
    if failure is not None:
        return failure
    return jsonify(status="ok", database="ok", workers_alive=workers)


class WorkersReadiness(BaseModel):
    status: str
    workers_alive: int | None = None
    database: str | None = None


@bp.get("/readyz/workers")
@document(summary="Whether at least one worker process is alive (503 when none is)", tags=["operations"],
          security=[], responses={200: (WorkersReadiness, "At least one worker beat within the last minute"),
                                  503: (WorkersReadiness, "No live worker, or the database does not answer")})
def readyz_workers():
    workers, failure = _database_check()
    if failure is not None:
        return failure
    if not workers:
        return jsonify(status="unavailable", workers_alive=workers), 503
    return jsonify(status="ok", workers_alive=workers)


@bp.get("/metrics")
@document(summary="Prometheus metrics (requests by route, upstream calls), aggregated across gunicorn workers",
          tags=["operations"], security=[],
          responses={200: (Body(CONTENT_TYPE_LATEST.split(";")[0]), "Prometheus text exposition format")})
def metrics():
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        # gunicorn runs several worker processes, and the `flask worker run` processes of
        # this host write to the same directory: aggregate all their samples.
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
    else:
        registry = REGISTRY
    database = CollectorRegistry(auto_describe=False)
    database.register(_DatabaseGauges(get_db()))
    return Response(generate_latest(registry) + generate_latest(database), mimetype=CONTENT_TYPE_LATEST)


def _queue_and_workers(db: Database) -> tuple[dict[str, KindStats], int]:
    with db.session() as session:
        return job_queue_stats(session), count_alive(session)


class _DatabaseGauges:
    """What the database knows, read once per scrape, within READY_CHECK_SECONDS: a
    scrape never hangs on a database that does not answer (telephony_database_up 0)."""

    def __init__(self, db: Database) -> None:
        self.db = db

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily("telephony_database_up", "1 when the database answered this scrape's queries.")
        try:
            queue, workers = _metrics_queries.submit(_queue_and_workers, self.db).result(timeout=READY_CHECK_SECONDS)
        except Exception as exc:  # timed out or failed: the scrape still answers
            current_app.logger.warning("metrics: queue figures unavailable: %s", exc.__class__.__name__)
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        yield GaugeMetricFamily("telephony_workers_alive", "Worker processes whose heartbeat is recent "
                                "(services/worker_heartbeats.py).", value=workers)
        families = {
            "due": GaugeMetricFamily("telephony_jobs_due", "Jobs that could run now (queued and due, or "
                                     "leased by a worker that stopped renewing it), by kind.", labels=["kind"]),
            "scheduled": GaugeMetricFamily("telephony_jobs_scheduled", "Jobs queued for later (retries "
                                           "waiting for their backoff), by kind.", labels=["kind"]),
            "running": GaugeMetricFamily("telephony_jobs_running", "Jobs a worker holds a valid lease on, "
                                         "by kind.", labels=["kind"]),
            "oldest_due_age_seconds": GaugeMetricFamily(
                "telephony_jobs_oldest_due_age_seconds", "How long the oldest job that could run now has "
                "waited, by kind (0: none waiting).", labels=["kind"]),
        }
        for kind, stats in sorted(queue.items()):
            for field, family in families.items():
                family.add_metric([kind], getattr(stats, field))
        yield from families.values()


@bp.get("/openapi.json")
@document(summary="This OpenAPI 3.1 document", tags=["operations"], security=[],
          responses={200: (Body("application/json", {"type": "object"}), "The document")})
def openapi():
    if "telephony.openapi" not in current_app.extensions:
        current_app.extensions["telephony.openapi"] = build_openapi(current_app)
    return jsonify(current_app.extensions["telephony.openapi"])
