"""Public web-call keys (x-api-access-key) and the rate limit that guards them.

A public key sits in a web page, so it is built to be harmless when copied:
it can only start web calls, only for the agents listed on it, optionally only
from the listed browser origins, at most `rate_limit_per_minute` times a
minute, and it can be revoked. It is a different credential from the server
API keys (own table, own `pk_` prefix): a server key never works here and a
public key never works on the API. Only a SHA-256 of the key is stored, as for
API keys.
"""
from __future__ import annotations

import math
import re
import secrets
import time
import uuid
from datetime import timedelta
from typing import Iterable
from urllib.parse import urlsplit

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from ..auth import hash_api_key
from ..db import dialect_insert
from ..errors import DomainError, Forbidden, InvalidInput, NotFound, Unauthorized
from ..models import AgentMapping, PublicKey, RateLimitWindow, utcnow
from .api_keys import revoke

PUBLIC_KEY_PREFIX = "pk_"
MAX_KEY_LENGTH = 200
MAX_AGENTS = 50
MAX_ORIGINS = 20
MAX_ORIGIN_LENGTH = 255
MAX_RATE_LIMIT = 10_000
DEFAULT_RATE_LIMIT = 30
RATE_WINDOW_SECONDS = 60
# Unknown, malformed or revoked keys per client address and minute before further tries
# are answered 429 (guessing keys costs a database write per try until then, none after).
INVALID_KEY_ATTEMPTS_PER_MINUTE = 20
_DEFAULT_PORTS = {"http": 80, "https": 443}
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_HOST = re.compile(r"[a-z0-9.-]+|[0-9a-f:.]+")  # a DNS name or IPv4 address, or an IPv6 literal


class OriginNotAllowed(Forbidden):
    code = "origin_not_allowed"


class RateLimited(DomainError):
    status = 429
    code = "rate_limited"


def new_public_key() -> tuple[str, str, str]:
    """(plaintext key, display prefix, hash). The plaintext is shown once."""
    key = PUBLIC_KEY_PREFIX + secrets.token_urlsafe(32)
    return key, key[:11], hash_api_key(key)


def normalize_origin(value: str) -> str | None:
    """A browser origin in the form browsers send it ("https://shop.example",
    lowercase, no default port, no path), or None when `value` is not one."""
    try:
        parts = urlsplit(value.strip())
        port = parts.port
    except ValueError:
        return None
    host = parts.hostname
    if (parts.scheme not in _DEFAULT_PORTS or not host or not _HOST.fullmatch(host) or parts.path not in ("", "/")
            or parts.query or parts.fragment or parts.username is not None or parts.password is not None):
        return None
    host = f"[{host}]" if ":" in host else host  # IPv6 literal
    return f"{parts.scheme}://{host}" + (f":{port}" if port not in (None, _DEFAULT_PORTS[parts.scheme]) else "")


def origin_allowed(allowed_origins: list[str], origin: str | None) -> bool:
    """Empty list: any origin. Otherwise the request must name one of them."""
    if not allowed_origins:
        return True
    normalized = normalize_origin(origin) if origin else None
    return normalized is not None and normalized in allowed_origins


# -- management ----------------------------------------------------------------------

def create_public_key(session: Session, agency_id: uuid.UUID, *, name: str, agent_ids: Iterable[uuid.UUID],
                      allowed_origins: Iterable[str] = (),
                      rate_limit_per_minute: int = DEFAULT_RATE_LIMIT) -> tuple[PublicKey, str]:
    """Returns the row and the plaintext key; only its hash is stored."""
    name = name.strip()
    # No control characters: names are shown in lists, and PostgreSQL refuses NUL bytes.
    if not name or len(name) > 200 or _CONTROL.search(name):
        raise InvalidInput("name must be 1 to 200 characters without control characters", field="name")
    agents = list(dict.fromkeys(agent_ids))  # de-duplicated, order kept
    if not agents or len(agents) > MAX_AGENTS:
        raise InvalidInput(f"list 1 to {MAX_AGENTS} agents", field="agent_ids")
    found = set(session.scalars(select(AgentMapping.id).where(AgentMapping.agency_id == agency_id,
                                                              AgentMapping.id.in_(agents))))
    missing = [agent for agent in agents if agent not in found]
    if missing:
        # Another agency's agent is reported exactly like a missing one.
        raise NotFound(f"agent {missing[0]} not found", field="agent_ids")
    origins: list[str] = []
    for raw in allowed_origins:
        origin = normalize_origin(raw) if len(raw) <= MAX_ORIGIN_LENGTH else None
        if origin is None:
            raise InvalidInput(f"{raw[:80]!r} is not an origin like https://www.example.com", field="allowed_origins")
        if origin not in origins:
            origins.append(origin)
    if len(origins) > MAX_ORIGINS:
        raise InvalidInput(f"at most {MAX_ORIGINS} origins", field="allowed_origins")
    if not 1 <= rate_limit_per_minute <= MAX_RATE_LIMIT:
        raise InvalidInput(f"must be between 1 and {MAX_RATE_LIMIT}", field="rate_limit_per_minute")
    plaintext, prefix, key_hash = new_public_key()
    row = PublicKey(agency_id=agency_id, name=name, prefix=prefix, key_hash=key_hash,
                    agent_ids=[str(agent) for agent in agents], allowed_origins=origins,
                    rate_limit_per_minute=rate_limit_per_minute)
    session.add(row)
    session.flush()
    return row, plaintext


def list_public_keys(session: Session, agency_id: uuid.UUID) -> list[PublicKey]:
    return list(session.scalars(select(PublicKey).where(PublicKey.agency_id == agency_id)
                                .order_by(PublicKey.created_at, PublicKey.id)))


def revoke_public_key(session: Session, agency_id: uuid.UUID, key_id: uuid.UUID) -> PublicKey:
    return revoke(session, PublicKey, agency_id, key_id, "public key")


# -- use -------------------------------------------------------------------------------

def authenticate_public_key(session: Session, key: str, *, origin: str | None, client: str = "") -> PublicKey:
    """The live key row, or Unauthorized (unknown, malformed or revoked key) /
    OriginNotAllowed (the key lists origins and the request's Origin is not one).
    Invalid keys are rate-limited per `client` address: past
    INVALID_KEY_ATTEMPTS_PER_MINUTE a minute, RateLimited instead of Unauthorized.

    A key that lists origins also refuses requests without an Origin header:
    browsers always send one on a cross-origin POST, and the point of the list
    is that the key works only on those sites."""
    key = key.strip()
    row = None
    if key.startswith(PUBLIC_KEY_PREFIX) and len(key) <= MAX_KEY_LENGTH:
        row = session.scalar(select(PublicKey).where(PublicKey.key_hash == hash_api_key(key)))
    if row is None or row.revoked_at is not None:
        session.rollback()
        consume_rate_limit(session, f"public_key_invalid:{client}", limit=INVALID_KEY_ATTEMPTS_PER_MINUTE)
        raise Unauthorized("Invalid or revoked API key")
    if not origin_allowed(row.allowed_origins, origin):
        raise OriginNotAllowed("This key may not be used from this origin")
    now = utcnow()
    if row.last_used_at is None or now - row.last_used_at > timedelta(minutes=1):
        row.last_used_at = now  # coarse, to avoid a write on every request
        session.commit()
    return row


def consume_rate_limit(session: Session, bucket: str, *, limit: int, window_seconds: int = RATE_WINDOW_SECONDS,
                       now: float | None = None) -> None:
    """Count one hit in `bucket`'s current fixed window; raise RateLimited
    (with the seconds until the window ends) once more than `limit` hits
    were counted in it.

    A hit is counted by one atomic `INSERT .. ON CONFLICT DO UPDATE SET count =
    count + 1 WHERE count < limit RETURNING count`, committed at once, so every
    web process sees the same number and two concurrent hits can never read the
    same count. A refused hit writes nothing: the window is read first, and a
    full one is refused on that read alone (a flood of refused requests costs
    one indexed SELECT each); the conditional upsert refuses the few that raced
    past the read without writing either. The window stays full until it ends.
    A fixed window admits at most 2 x limit across a window boundary, which is
    an acceptable bound for abuse protection and needs one row per key."""
    now = time.time() if now is None else now
    window_start = int(now // window_seconds) * window_seconds
    retry_after = max(1, math.ceil(window_start + window_seconds - now))
    refused = RateLimited(f"Rate limit of {limit} requests per {window_seconds} s exceeded; retry in {retry_after} s",
                          retry_after=retry_after)
    table = RateLimitWindow.__table__
    counted = session.scalar(select(table.c.count).where(table.c.bucket == bucket,
                                                         table.c.window_start == window_start))
    session.rollback()  # a read only; SQLite: the write below opens its own transaction
    if counted is not None and counted >= limit:
        raise refused
    insert = dialect_insert(session)
    statement = (insert(table).values(bucket=bucket, window_start=window_start, count=1)
                 .on_conflict_do_update(index_elements=[table.c.bucket, table.c.window_start],
                                        set_={"count": table.c.count + 1}, where=table.c.count < limit)
                 .returning(table.c.count))
    count = session.execute(statement).scalar_one_or_none()
    if count == 1:
        # First hit of a new window: drop this bucket's old windows, so the
        # table holds at most one row per active key.
        session.execute(delete(RateLimitWindow).where(RateLimitWindow.bucket == bucket,
                                                      RateLimitWindow.window_start < window_start))
    session.commit()
    if count is None:  # the window filled up between the read and the upsert
        raise refused


def public_key_bucket(key: PublicKey) -> str:
    return f"public_key:{key.id}"
