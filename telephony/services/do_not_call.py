"""Per-agency do-not-call list. Checked at contact upload (an early filter) and again
right before every dial (the check that counts), so a number added after upload is
never dialled."""
from __future__ import annotations

import uuid
from typing import Iterable

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from ..db import insert_if_absent, rows_affected
from ..errors import InvalidInput, NotFound
from ..models import DoNotCallEntry
from .phone_numbers import normalize_e164

MAX_BATCH = 10_000


def add_numbers(session: Session, agency_id: uuid.UUID, phones: Iterable[str], *,
                reason: str | None = None) -> tuple[list[str], list[str]]:
    """(added, already listed), as E.164. Invalid numbers raise InvalidInput naming the index."""
    normalized: list[str] = []
    for index, phone in enumerate(phones):
        normalized.append(normalize_e164(phone, field=f"phones.{index}"))
    if len(normalized) > MAX_BATCH:
        raise InvalidInput(f"at most {MAX_BATCH} numbers per request", field="phones")
    added, existing = [], []
    for phone in dict.fromkeys(normalized):
        if insert_if_absent(session, DoNotCallEntry, {"id": uuid.uuid4(), "agency_id": agency_id, "phone": phone,
                                                      "reason": reason}, ["agency_id", "phone"]):
            added.append(phone)
        else:
            existing.append(phone)
    return added, existing


def list_entries(session: Session, agency_id: uuid.UUID, *, limit: int = 1000,
                 after: str | None = None) -> list[DoNotCallEntry]:
    query = select(DoNotCallEntry).where(DoNotCallEntry.agency_id == agency_id)
    if after:
        query = query.where(DoNotCallEntry.phone > after)
    return list(session.scalars(query.order_by(DoNotCallEntry.phone).limit(limit)))


def remove_number(session: Session, agency_id: uuid.UUID, phone: str) -> None:
    e164 = normalize_e164(phone, field="phone")
    result = session.execute(delete(DoNotCallEntry).where(DoNotCallEntry.agency_id == agency_id,
                                                          DoNotCallEntry.phone == e164))
    if rows_affected(result) == 0:
        raise NotFound(f"{e164} is not on the do-not-call list", field="phone")


def is_on_list(session: Session, agency_id: uuid.UUID, phone: str) -> bool:
    return session.scalar(select(DoNotCallEntry.id).where(DoNotCallEntry.agency_id == agency_id,
                                                          DoNotCallEntry.phone == phone)) is not None


def listed_among(session: Session, agency_id: uuid.UUID, phones: Iterable[str]) -> set[str]:
    phones = list(phones)
    found: set[str] = set()
    for start in range(0, len(phones), 1000):
        found.update(session.scalars(select(DoNotCallEntry.phone).where(
            DoNotCallEntry.agency_id == agency_id, DoNotCallEntry.phone.in_(phones[start:start + 1000]))))
    return found
