"""Event endpoints (/api/v1/event-endpoints): where we POST an agency's call.* and campaign.* events.

Admin only. The signing secret is shown once, at creation and on rotation.
Every endpoint and delivery is scoped to the caller's agency; another
agency's is a 404, the same as a missing one.
"""
from __future__ import annotations

import json
import uuid
from datetime import datetime
from typing import Any, Literal

from flask import Blueprint, jsonify
from pydantic import Field, field_validator

from ..auth import current_principal, require_auth
from ..db import get_session
from ..services import event_endpoints as endpoint_service
from ..services.events import EVENT_TYPES
from .schema import RequestModel, ResponseModel, document, parse_body, parse_query, render

bp = Blueprint("event_endpoints", __name__, url_prefix="/api/v1")

EventType = Literal["call.started", "call.answered", "call.ended", "call.failed", "campaign.completed",
                    "call.answered_by", "call.transferred"]
assert set(EventType.__args__) == set(EVENT_TYPES)  # type: ignore[attr-defined]
DeliveryStatus = Literal["pending", "delivered", "failed"]
Url = Field(min_length=1, max_length=2048,
            description="https:// to a host that resolves only to public addresses")
Events = Field(min_length=1, max_length=len(EVENT_TYPES))
NOT_FOUND = (None, "Not found, or another agency's.")


class EndpointIn(RequestModel):
    url: str = Url
    events: list[EventType] = Events
    enabled: bool = True


class EndpointPatch(RequestModel):
    url: str | None = Field(default=None, min_length=1, max_length=2048)
    events: list[EventType] | None = Field(default=None, min_length=1, max_length=len(EVENT_TYPES))
    enabled: bool | None = None


class EndpointOut(ResponseModel):
    id: uuid.UUID
    url: str
    events: list[str]
    enabled: bool
    disabled_reason: str | None
    previous_secret_expires_at: datetime | None = Field(
        description="While in the future, deliveries carry a signature with the previous secret too")
    created_at: datetime
    updated_at: datetime


class EndpointWithSecret(EndpointOut):
    secret: str = Field(description="whsec_... signing secret. Shown only in this response; store it now.")


class EndpointList(ResponseModel):
    event_endpoints: list[EndpointOut]


class DeliveryQuery(RequestModel):
    status: DeliveryStatus | None = None
    limit: int = Field(default=50, ge=1, le=100)


class DeliveryOut(ResponseModel):
    id: uuid.UUID
    event_id: uuid.UUID = Field(description="The webhook-id header")
    event_type: str
    status: DeliveryStatus
    attempts: int
    last_status_code: int | None
    last_error: str | None
    last_attempt_at: datetime | None
    next_attempt_at: datetime | None
    delivered_at: datetime | None
    created_at: datetime
    payload: dict[str, Any] = Field(description="The body sent")

    @field_validator("payload", mode="before")
    @classmethod
    def _parse_payload(cls, value: Any) -> Any:
        return json.loads(value) if isinstance(value, str) else value


class DeliveryList(ResponseModel):
    deliveries: list[DeliveryOut]


def _with_secret(endpoint, secret: str, status: int):
    return jsonify({**EndpointOut.model_validate(endpoint).model_dump(mode="json"), "secret": secret}), status


@bp.get("/event-endpoints")
@require_auth(scope="admin")
@document(summary="List event endpoints (never their secrets)", tags=["event endpoints"],
          responses={200: (EndpointList, "Endpoints")})
def list_endpoints():
    endpoints = endpoint_service.list_endpoints(get_session(), current_principal().agency_id)
    return render(EndpointList, {"event_endpoints": endpoints})


@bp.post("/event-endpoints")
@require_auth(scope="admin")
@document(summary="Register an event endpoint (the signing secret is shown once)", tags=["event endpoints"],
          request_model=EndpointIn, responses={201: (EndpointWithSecret, "Created")})
def create_endpoint():
    body = parse_body(EndpointIn)
    session = get_session()
    endpoint, secret = endpoint_service.create_endpoint(session, current_principal().agency_id,
                                                        **body.model_dump())
    session.commit()
    return _with_secret(endpoint, secret, 201)


@bp.get("/event-endpoints/<uuid:endpoint_id>")
@require_auth(scope="admin")
@document(summary="Get an event endpoint", tags=["event endpoints"],
          responses={200: (EndpointOut, "Endpoint"), 404: NOT_FOUND})
def get_endpoint(endpoint_id: uuid.UUID):
    return render(EndpointOut, endpoint_service.get_endpoint(get_session(), current_principal().agency_id,
                                                            endpoint_id))


@bp.patch("/event-endpoints/<uuid:endpoint_id>")
@require_auth(scope="admin")
@document(summary="Change an event endpoint's url, events or enabled flag", tags=["event endpoints"],
          request_model=EndpointPatch, responses={200: (EndpointOut, "Updated"), 404: NOT_FOUND})
def update_endpoint(endpoint_id: uuid.UUID):
    body = parse_body(EndpointPatch)
    session = get_session()
    endpoint = endpoint_service.update_endpoint(session, current_principal().agency_id, endpoint_id,
                                                **body.model_dump(exclude_unset=True, exclude_none=True))
    session.commit()
    return render(EndpointOut, endpoint)


@bp.delete("/event-endpoints/<uuid:endpoint_id>")
@require_auth(scope="admin")
@document(summary="Delete an event endpoint and its deliveries", tags=["event endpoints"],
          responses={204: (None, "Deleted"), 404: NOT_FOUND})
def delete_endpoint(endpoint_id: uuid.UUID):
    session = get_session()
    endpoint_service.delete_endpoint(session, current_principal().agency_id, endpoint_id)
    session.commit()
    return "", 204


@bp.post("/event-endpoints/<uuid:endpoint_id>/rotate-secret")
@require_auth(scope="admin")
@document(summary="Replace the signing secret (shown once); the old one also signs for 24 hours",
          tags=["event endpoints"], responses={200: (EndpointWithSecret, "Rotated"), 404: NOT_FOUND})
def rotate_secret(endpoint_id: uuid.UUID):
    session = get_session()
    endpoint, secret = endpoint_service.rotate_secret(session, current_principal().agency_id, endpoint_id)
    session.commit()
    return _with_secret(endpoint, secret, 200)


@bp.get("/event-endpoints/<uuid:endpoint_id>/deliveries")
@require_auth(scope="admin")
@document(summary="Recent deliveries to an endpoint, newest first, with their attempts", tags=["event endpoints"],
          query_model=DeliveryQuery, responses={200: (DeliveryList, "Deliveries"), 404: NOT_FOUND})
def list_deliveries(endpoint_id: uuid.UUID):
    query = parse_query(DeliveryQuery)
    deliveries = endpoint_service.list_deliveries(get_session(), current_principal().agency_id, endpoint_id,
                                                  limit=query.limit, status=query.status)
    return render(DeliveryList, {"deliveries": deliveries})
