"""An agency's call history: filtered lists with keyset pagination, and one call in full.

Pages are ordered newest first on (created_at, id) and continue after the
last row of the previous page, so paging stays exact while new calls arrive
and costs one index range scan however deep it goes. The cursor is opaque to
clients: base64url of that position plus a fingerprint of the filters, with
a checksum so a damaged or edited cursor is a clear 400. It is not a security
boundary - every query is scoped to the caller's agency regardless.
"""
from __future__ import annotations

import base64
import binascii
import hashlib
import json
import uuid
from dataclasses import asdict, dataclass
from datetime import datetime, timezone

from sqlalchemy import and_, exists, or_, select
from sqlalchemy.orm import Session, defer

from ..errors import InvalidInput, NotFound
from ..models import Call, CallDirection, CallSource, CallTransfer

_CHECKSUM_BYTES = 8


@dataclass(frozen=True)
class CallFilters:
    agent_id: uuid.UUID | None = None
    direction: CallDirection | None = None
    source: CallSource | None = None
    status: str | None = None
    created_from: datetime | None = None  # inclusive
    created_to: datetime | None = None    # exclusive
    transferred: bool | None = None       # handed (or not) to a person at least once

    def fingerprint(self) -> str:
        canonical = json.dumps({k: str(v) if v is not None else None for k, v in asdict(self).items()},
                               sort_keys=True)
        return hashlib.sha256(canonical.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class CallPage:
    calls: list[Call]
    next_cursor: str | None


def list_calls(session: Session, agency_id: uuid.UUID, filters: CallFilters, *, limit: int = 50,
               cursor: str | None = None) -> CallPage:
    query = select(Call).where(Call.agency_id == agency_id).options(defer(Call.transcript))
    if filters.agent_id is not None:
        query = query.where(Call.agent_id == filters.agent_id)
    if filters.direction is not None:
        query = query.where(Call.direction == filters.direction)
    if filters.source is not None:
        query = query.where(Call.source == filters.source)
    if filters.status is not None:
        query = query.where(Call.status == filters.status)
    if filters.created_from is not None:
        query = query.where(Call.created_at >= _utc(filters.created_from, "created_from"))
    if filters.created_to is not None:
        query = query.where(Call.created_at < _utc(filters.created_to, "created_to"))
    if filters.transferred is not None:
        handed = exists().where(CallTransfer.call_id == Call.id)
        query = query.where(handed if filters.transferred else ~handed)
    if cursor:
        created_at, call_id = decode_cursor(cursor, filters)
        query = query.where(or_(Call.created_at < created_at,
                                and_(Call.created_at == created_at, Call.id < call_id)))
    rows = list(session.scalars(query.order_by(Call.created_at.desc(), Call.id.desc()).limit(limit + 1)))
    more = len(rows) > limit
    calls = rows[:limit]
    return CallPage(calls=calls, next_cursor=encode_cursor(calls[-1], filters) if more else None)


def get_call(session: Session, agency_id: uuid.UUID, call_id: uuid.UUID) -> Call:
    """Another agency's call is reported exactly like a missing one."""
    call = session.scalar(select(Call).where(Call.id == call_id, Call.agency_id == agency_id))
    if call is None:
        raise NotFound("Call not found", field="call_id")
    return call


def encode_cursor(last: Call, filters: CallFilters) -> str:
    raw = json.dumps([last.created_at.isoformat(), str(last.id), filters.fingerprint()],
                     separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(_checksum(raw) + raw).rstrip(b"=").decode()


def decode_cursor(cursor: str, filters: CallFilters) -> tuple[datetime, uuid.UUID]:
    invalid = InvalidInput("cursor is not valid; start again without it", field="cursor")
    try:
        blob = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
    except (binascii.Error, ValueError):
        raise invalid from None
    check, raw = blob[:_CHECKSUM_BYTES], blob[_CHECKSUM_BYTES:]
    if len(check) != _CHECKSUM_BYTES or check != _checksum(raw):
        raise invalid
    try:
        created_at, call_id, fingerprint = json.loads(raw)
        position = (_utc(datetime.fromisoformat(created_at), "cursor"), uuid.UUID(call_id))
    except (ValueError, TypeError):  # InvalidInput (from _utc) is neither
        raise invalid from None
    if fingerprint != filters.fingerprint():
        raise InvalidInput("cursor belongs to a listing with other filters", field="cursor")
    return position


def _checksum(raw: bytes) -> bytes:
    return hashlib.sha256(b"call-history-cursor:" + raw).digest()[:_CHECKSUM_BYTES]


def _utc(value: datetime, field: str) -> datetime:
    """In UTC (naive is taken as UTC); an offset that crosses the datetime limits
    (year 1 or 9999) is an InvalidInput naming ``field``."""
    try:
        return value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value.astimezone(timezone.utc)
    except OverflowError:
        raise InvalidInput(f"{field} is outside the supported date range", field=field) from None
