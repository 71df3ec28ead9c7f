"""Call history (/api/v1/calls): the agency's calls, filtered and paged, and one call with its transcript.

Scope `calls:read`. Only `<uuid:call_id>` routes live here, so this blueprint
never matches a literal path such as /api/v1/calls/websocket.
"""
from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any, Literal

from flask import Blueprint, jsonify
from pydantic import Field, model_validator

from .. import call_states
from ..auth import current_principal, require_auth
from ..db import get_session
from ..models import Call, CallDirection, CallSource
from ..services import call_history
from ..services import transfers as transfer_service
from .schema import RequestModel, ResponseModel, document, parse_query

bp = Blueprint("calls", __name__, url_prefix="/api/v1")

CallStatus = Literal["created", "unknown", "queued", "ringing", "in-progress", "completed", "busy", "no-answer",
                     "failed", "canceled"]
assert set(CallStatus.__args__) == set(call_states.ALL)  # type: ignore[attr-defined]


class CallListQuery(RequestModel):
    agent_id: uuid.UUID | None = None
    direction: CallDirection | None = None
    source: CallSource | None = None
    status: CallStatus | None = None
    created_from: datetime | None = Field(default=None, description="Inclusive; ISO-8601 date or time, UTC if naive")
    created_to: datetime | None = Field(default=None, description="Exclusive; ISO-8601 date or time, UTC if naive")
    transferred: bool | None = Field(default=None, description="Only calls handed (or not) to a person")
    cursor: str | None = Field(default=None, max_length=512, description="next_cursor of the previous page")
    limit: int = Field(default=50, ge=1, le=100)


class CallOut(ResponseModel):
    id: uuid.UUID
    agent_id: uuid.UUID | None
    ultravox_call_id: str | None
    source: CallSource
    direction: CallDirection
    status: str
    from_number: str | None
    to_number: str | None
    end_reason: str | None
    created_at: datetime
    joined_at: datetime | None
    ended_at: datetime | None
    duration_seconds: int | None
    billed_duration_seconds: int | None
    has_recording: bool
    short_summary: str | None
    metadata: dict[str, Any]
    answered_by: str | None = Field(default=None, description="Outbound calls: human, machine, fax or unknown "
                                                              "(answering-machine detection); null until known")
    answered_by_detail: str | None = Field(default=None, description="The carrier's own word, e.g. machine_end_beep")
    machine_action: str | None = Field(default=None, description="What was done about a machine: hangup, "
                                                                 "wait_beep, message (left), continue")

    @model_validator(mode="before")
    @classmethod
    def _from_row(cls, value: Any) -> Any:
        # SQLAlchemy reserves `metadata` on models: the column's attribute is `metadata_`.
        if isinstance(value, Call):
            return {name: getattr(value, "metadata_" if name == "metadata" else name) for name in cls.model_fields
                    if name != "transfers"}  # not a column: the view adds them
        return value


class TransferOut(ResponseModel):
    id: uuid.UUID
    target: str
    destination: str
    mode: str
    reason: str | None
    status: str = Field(description="dialing, answered (in conversation) or ended")
    outcome: str | None = Field(description="answered, busy, no-answer, declined or failed; null while dialing")
    carrier: str
    carrier_leg_id: str | None = Field(description="The carrier's id of the person's leg")
    resumed_call_id: uuid.UUID | None = Field(description="The agent call that took the caller back, if any")
    started_at: datetime
    answered_at: datetime | None
    ended_at: datetime | None


class CallDetailOut(CallOut):
    summary: str | None
    transcript: list[dict[str, Any]] | None = Field(
        description="Ultravox message objects (role, text, medium, ...); null until the call is enriched")
    enriched_at: datetime | None
    transfers: list[TransferOut] = Field(default=[], description="Transfers to a person, oldest first")


class CallPageOut(ResponseModel):
    calls: list[CallOut]
    next_cursor: str | None = Field(description="Pass as `cursor` for the next page; null on the last page")


_QUERY_PARAMETERS = [
    {"name": name, "in": "query", "required": False, "schema": schema}
    for name, schema in (
        ("agent_id", {"type": "string", "format": "uuid"}),
        ("direction", {"type": "string", "enum": [d.value for d in CallDirection]}),
        ("source", {"type": "string", "enum": [s.value for s in CallSource]}),
        ("status", {"type": "string", "enum": list(CallStatus.__args__)}),  # type: ignore[attr-defined]
        ("created_from", {"type": "string", "format": "date-time"}),
        ("created_to", {"type": "string", "format": "date-time"}),
        ("transferred", {"type": "boolean"}),
        ("cursor", {"type": "string"}),
        ("limit", {"type": "integer", "minimum": 1, "maximum": 100, "default": 50}),
    )
]


@bp.get("/calls")
@require_auth(scope="calls:read")
@document(summary="List the agency's calls, newest first", tags=["calls"], parameters=_QUERY_PARAMETERS,
          responses={200: (CallPageOut, "A page of calls"), 400: (None, "Invalid filter or cursor")})
def list_calls():
    query = parse_query(CallListQuery)
    filters = call_history.CallFilters(agent_id=query.agent_id, direction=query.direction, source=query.source,
                                       status=query.status, created_from=query.created_from,
                                       created_to=query.created_to, transferred=query.transferred)
    page = call_history.list_calls(get_session(), current_principal().agency_id, filters, limit=query.limit,
                                   cursor=query.cursor)
    return jsonify(CallPageOut.model_validate(page).model_dump(mode="json"))


@bp.get("/calls/<uuid:call_id>")
@require_auth(scope="calls:read")
@document(summary="One call with its summary and transcript", tags=["calls"],
          responses={200: (CallDetailOut, "The call"), 404: (None, "Not found, or another agency's.")})
def get_call(call_id: uuid.UUID):
    session, agency_id = get_session(), current_principal().agency_id
    detail = CallDetailOut.model_validate(call_history.get_call(session, agency_id, call_id))
    transfers = transfer_service.transfers_of(session, agency_id, call_id)
    detail.transfers = [TransferOut.model_validate(transfer) for transfer in transfers]
    return jsonify(detail.model_dump(mode="json"))
