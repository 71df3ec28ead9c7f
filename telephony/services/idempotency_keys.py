"""Idempotency-Key for POST /api/v1/calls (24 h, per agency).

`begin` inserts (agency, key, request fingerprint) with ON CONFLICT DO NOTHING and
commits at once, so of two concurrent requests with one key exactly one proceeds:
- same key, same body, finished    -> the stored first response is replayed;
- same key, same body, in flight   -> 409 (the first one has not finished yet);
- same key, different body         -> 422;
- older than 24 h                  -> the old record is dropped and the key is new.
A request that failed before anything was created (validation, Ultravox refused)
releases its key so the client can simply try again; once a call row exists, the
outcome (success or carrier failure) is stored and replayed: the carrier is never
asked twice for one key. A request that crashed mid-flight leaves the key "in_flight"
(409) until it expires: whether its dial happened is unknown, so nothing repeats it.
"""
from __future__ import annotations

import hashlib
import json
import uuid
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from sqlalchemy import delete, select, update
from sqlalchemy.orm import Session

from ..db import insert_if_absent
from ..errors import Conflict, DomainError, InvalidInput
from ..models import IdempotencyKey, utcnow

TTL = timedelta(hours=24)
MAX_KEY_LENGTH = 255


class KeyInFlight(Conflict):
    code = "idempotency_key_in_flight"

    def __init__(self) -> None:
        super().__init__("A request with this Idempotency-Key is still in progress")


class KeyReused(DomainError):
    status = 422
    code = "idempotency_key_reused"


@dataclass
class Replay:
    status: int
    body: dict[str, Any]


def fingerprint(body: Any) -> str:
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def begin(session: Session, agency_id: uuid.UUID, key: str, request_hash: str) -> Replay | None:
    """None: this request owns the key now (committed). A Replay: answer with it.
    Raises KeyInFlight (409), KeyReused (422, a different body) or InvalidInput (a bad key)."""
    if not key or len(key) > MAX_KEY_LENGTH or any(ord(c) < 32 or ord(c) > 126 for c in key):
        raise InvalidInput(f"Idempotency-Key must be 1 to {MAX_KEY_LENGTH} printable ASCII characters",
                           field="Idempotency-Key")
    for _ in range(2):
        session.rollback()  # SQLite cannot turn an open read transaction into a write
        inserted = insert_if_absent(session, IdempotencyKey,
                                    {"id": uuid.uuid4(), "agency_id": agency_id, "key": key,
                                     "request_hash": request_hash, "state": "in_flight", "created_at": utcnow()},
                                    ["agency_id", "key"])
        session.commit()
        if inserted:
            return None
        row = session.scalar(select(IdempotencyKey).where(IdempotencyKey.agency_id == agency_id,
                                                          IdempotencyKey.key == key))
        session.commit()
        if row is None:
            continue  # released or expired meanwhile: try to take it again
        if row.created_at < utcnow() - TTL:
            session.execute(delete(IdempotencyKey).where(IdempotencyKey.id == row.id))
            session.commit()
            continue
        if row.request_hash != request_hash:
            raise KeyReused("This Idempotency-Key was used with a different request body")
        if row.state != "done" or row.response_status is None:
            raise KeyInFlight()
        return Replay(status=row.response_status, body=row.response_body or {})
    raise KeyInFlight()


def finish(session: Session, agency_id: uuid.UUID, key: str, status: int, body: dict[str, Any]) -> None:
    session.rollback()
    session.execute(update(IdempotencyKey).where(IdempotencyKey.agency_id == agency_id, IdempotencyKey.key == key)
                    .values(state="done", response_status=status, response_body=body))
    session.commit()


def release(session: Session, agency_id: uuid.UUID, key: str) -> None:
    session.rollback()
    session.execute(delete(IdempotencyKey).where(IdempotencyKey.agency_id == agency_id, IdempotencyKey.key == key,
                                                 IdempotencyKey.state == "in_flight"))
    session.commit()
