"""Operational endpoints: liveness, readiness, metrics, the OpenAPI document."""
from __future__ import annotations

import os
import threading
import weakref
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as CheckTimedOut

from flask import Blueprint, Response, current_app, jsonify
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, generate_latest, multiprocess
from sqlalchemy import text

from ..db import Database, get_db
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
_checks_in_progress: "weakref.WeakKeyDictionary[Database, Future[None]]" = weakref.WeakKeyDictionary()
_checks_lock = threading.Lock()


def _readiness_check(db: Database) -> "Future[None]":
    with _checks_lock:
        check = _checks_in_progress.get(db)
        if check is None or check.done():
            check = _checks_in_progress[db] = _ready_checks.submit(_select_one, db)
        return check


def _select_one(db: Database) -> None:
    with db.engine.connect() as connection:
        connection.execute(text("SELECT 1"))


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
    try:
        _readiness_check(get_db()).result(timeout=READY_CHECK_SECONDS)
    except CheckTimedOut:
        current_app.logger.warning("readiness check failed: no answer from the database in %.1f s",
                                   READY_CHECK_SECONDS)
        return jsonify(status="unavailable", database="not answering"), 503
    except Exception as exc:  # any driver error means "not ready"
        current_app.logger.warning("readiness check failed: %s", exc.__class__.__name__)
        return jsonify(status="unavailable", database="unreachable"), 503
    return jsonify(status="ok", database="ok")


@bp.get("/metrics")
@document(summary="Prometheus metrics (requests by route, upstream calls), aggregated across gunicorn workers",
          tags=["operations"], security=[],
          responses={200: (Body(CONTENT_TYPE_LATEST.split(";")[0]), "Prometheus text exposition format")})
def metrics():
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        # gunicorn runs several worker processes; aggregate their samples.
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
    else:
        registry = REGISTRY
    return Response(generate_latest(registry), mimetype=CONTENT_TYPE_LATEST)


@bp.get("/openapi.json")
@document(summary="This OpenAPI 3.1 document", tags=["operations"], security=[],
          responses={200: (Body("application/json", {"type": "object"}), "The document")})
def openapi():
    if "telephony.openapi" not in current_app.extensions:
        current_app.extensions["telephony.openapi"] = build_openapi(current_app)
    return jsonify(current_app.extensions["telephony.openapi"])
