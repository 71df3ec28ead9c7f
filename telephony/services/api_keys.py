"""Agency server API keys: created with scopes, shown once, revocable."""
from __future__ import annotations

import uuid
from typing import Iterable, TypeVar

from sqlalchemy import select
from sqlalchemy.orm import Session

from ..auth import ALL_SCOPES, new_api_key
from ..errors import InvalidInput, NotFound
from ..models import ApiKey, PublicKey, utcnow

K = TypeVar("K", ApiKey, PublicKey)


def create_api_key(session: Session, agency_id: uuid.UUID, *, name: str,
                   scopes: Iterable[str]) -> tuple[ApiKey, str]:
    """Returns the row and the plaintext key; only its hash is stored."""
    scopes = sorted(set(scopes))
    unknown = [s for s in scopes if s not in ALL_SCOPES]
    if unknown:
        raise InvalidInput(f"unknown scope {unknown[0]!r}; expected some of {', '.join(ALL_SCOPES)}", field="scopes")
    if not scopes:
        raise InvalidInput("at least one scope is required", field="scopes")
    plaintext, prefix, key_hash = new_api_key()
    row = ApiKey(agency_id=agency_id, name=name, prefix=prefix, key_hash=key_hash, scopes=scopes)
    session.add(row)
    session.flush()
    return row, plaintext


def list_api_keys(session: Session, agency_id: uuid.UUID) -> list[ApiKey]:
    return list(session.scalars(select(ApiKey).where(ApiKey.agency_id == agency_id)
                                .order_by(ApiKey.created_at, ApiKey.id)))


def revoke_api_key(session: Session, agency_id: uuid.UUID, key_id: uuid.UUID) -> ApiKey:
    return revoke(session, ApiKey, agency_id, key_id, "API key")


def revoke(session: Session, model: type[K], agency_id: uuid.UUID, key_id: uuid.UUID, label: str) -> K:
    """Revoke one of the agency's keys (API or public); revoking twice is harmless.
    Another agency's key is NotFound, like a missing one."""
    row = session.scalar(select(model).where(model.id == key_id, model.agency_id == agency_id))
    if row is None:
        raise NotFound(f"{label} not found", field="key_id")
    if row.revoked_at is None:
        row.revoked_at = utcnow()
        session.flush()
    return row
