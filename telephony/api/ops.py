"""Operational endpoints: liveness, readiness, metrics, the OpenAPI document."""
from __future__ import annotations

import os

from flask import Blueprint, Response, current_app, jsonify
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, generate_latest
from prometheus_client import multiprocess
from sqlalchemy import text

from ..db import get_session
from .openapi import build_openapi

bp = Blueprint("ops", __name__)


@bp.get("/healthz")
def healthz():
    """The process is up. No dependency is checked, so a database outage does
    not get healthy web processes restarted in a loop."""
    return jsonify(status="ok")


@bp.get("/readyz")
def readyz():
    try:
        get_session().execute(text("SELECT 1"))
    except Exception as exc:  # any driver error means "not ready"
        current_app.logger.warning("readiness check failed: %s", exc.__class__.__name__)
        return jsonify(status="unavailable", database="unreachable"), 503
    return jsonify(status="ok", database="ok")


@bp.get("/metrics")
def metrics():
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        # gunicorn runs several worker processes; aggregate their samples.
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
    else:
        registry = REGISTRY
    return Response(generate_latest(registry), mimetype=CONTENT_TYPE_LATEST)


@bp.get("/openapi.json")
def openapi():
    if "telephony.openapi" not in current_app.extensions:
        current_app.extensions["telephony.openapi"] = build_openapi(current_app)
    return jsonify(current_app.extensions["telephony.openapi"])
