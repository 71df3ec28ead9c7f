"""Do-not-call list (/api/v1/do-not-call). A listed number is never dialled: campaigns
check it right before every dial, single calls before dialling.

  GET    /api/v1/do-not-call            list (campaigns:read)
  POST   /api/v1/do-not-call            {"phones": [...], "reason"?} (campaigns:write)
  DELETE /api/v1/do-not-call/<e164>     remove (campaigns:write)
"""
from __future__ import annotations

import uuid
from datetime import datetime

from flask import Blueprint
from pydantic import Field

from ..auth import current_principal, require_auth
from ..db import get_session
from ..services import do_not_call as dnc_service
from .schema import RequestModel, ResponseModel, document, parse_body, parse_query, render

bp = Blueprint("do_not_call", __name__, url_prefix="/api/v1")


class DncIn(RequestModel):
    phones: list[str] = Field(min_length=1, max_length=dnc_service.MAX_BATCH)
    reason: str | None = Field(default=None, max_length=200)


class DncAdded(ResponseModel):
    added: list[str]
    already_listed: list[str]


class DncEntryOut(ResponseModel):
    id: uuid.UUID
    phone: str
    reason: str | None
    created_at: datetime


class DncList(ResponseModel):
    entries: list[DncEntryOut]


class DncQuery(RequestModel):
    limit: int = Field(default=1000, ge=1, le=10_000)
    after: str | None = Field(default=None, max_length=32, description="Page after this number")


@bp.get("/do-not-call")
@require_auth(scope="campaigns:read")
@document(summary="List the do-not-call numbers", tags=["do-not-call"], query_model=DncQuery,
          responses={200: (DncList, "Entries")})
def list_dnc():
    query = parse_query(DncQuery)
    entries = dnc_service.list_entries(get_session(), current_principal().agency_id, limit=query.limit,
                                       after=query.after)
    return render(DncList, {"entries": entries})


@bp.post("/do-not-call")
@require_auth(scope="campaigns:write")
@document(summary="Add numbers to the do-not-call list", tags=["do-not-call"], request_model=DncIn,
          responses={200: (DncAdded, "Added"), 400: (None, "Invalid number")})
def add_dnc():
    body = parse_body(DncIn)
    session = get_session()
    added, existing = dnc_service.add_numbers(session, current_principal().agency_id, body.phones,
                                              reason=body.reason)
    session.commit()
    return render(DncAdded, {"added": added, "already_listed": existing})


@bp.delete("/do-not-call/<path:phone>")
@require_auth(scope="campaigns:write")
@document(summary="Remove a number from the do-not-call list", tags=["do-not-call"],
          responses={204: (None, "Removed"), 404: (None, "Not listed")})
def remove_dnc(phone: str):
    session = get_session()
    dnc_service.remove_number(session, current_principal().agency_id, phone)
    session.commit()
    return "", 204
