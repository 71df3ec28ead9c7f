"""Ultravox webhooks in: POST /webhooks/ultravox[/<agency_id>].

Each agency registers one of these URLs in its own Ultravox account with its
own webhook secret (kept in the credential store as ultravox.webhook_secret).
The per-agency URL is preferred: the agency is then known without looking
into the body. The work is in services/ultravox_events; this only maps the
outcome to HTTP. 204 for anything applied, duplicated or ignored; 401 for
what cannot be verified (Ultravox retries 4xx, which is harmless).
"""
from __future__ import annotations

import uuid

from flask import Blueprint, request

from ..db import get_session
from ..services import ultravox_events
from .schema import document

bp = Blueprint("ultravox_webhooks", __name__)

# A call object carries the whole system prompt and tool definitions, which can
# exceed the app-wide body limit; a refused webhook would be retried forever.
MAX_WEBHOOK_BODY_BYTES = 1024 * 1024


@bp.before_request
def _allow_call_sized_bodies() -> None:
    request.max_content_length = MAX_WEBHOOK_BODY_BYTES


@document(summary="Ultravox call webhooks (call.started, call.joined, call.ended, call.billed)",
          tags=["webhooks"], security=[],
          parameters=[{"name": ultravox_events.SIGNATURE_HEADER, "in": "header", "required": True,
                       "schema": {"type": "string"},
                       "description": "Hex HMAC-SHA256 of body + timestamp; comma-separated during rotation"},
                      {"name": ultravox_events.TIMESTAMP_HEADER, "in": "header", "required": True,
                       "schema": {"type": "string"}, "description": "ISO-8601 send time"}],
          responses={204: (None, "Applied, duplicate or ignored"), 400: (None, "Not a call webhook body"),
                     401: (None, "Signature or timestamp not valid for the agency"),
                     404: (None, "agency_id in the path is not a UUID"),
                     503: (None, "Call not stored yet; retry (Retry-After)")})
def receive(agency_id: uuid.UUID | None = None):
    session = get_session()
    # CallNotStoredYet (503 with Retry-After) and the other domain errors propagate
    # to the app's error handler.
    ultravox_events.ingest(session, body=request.get_data(cache=False),
                           signature=request.headers.get(ultravox_events.SIGNATURE_HEADER),
                           timestamp=request.headers.get(ultravox_events.TIMESTAMP_HEADER),
                           path_agency_id=agency_id)
    session.commit()
    return "", 204


# Two rules, two endpoint names: the OpenAPI operationIds stay unique.
bp.add_url_rule("/webhooks/ultravox", "receive", receive, methods=["POST"])
bp.add_url_rule("/webhooks/ultravox/<uuid:agency_id>", "receive_for_agency", receive, methods=["POST"])
