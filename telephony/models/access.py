"""Keys that act for an agency (server API keys, public web-call keys) and the
fixed-window rate-limit counters (public keys and campaign pacing)."""
from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import BigInteger, ForeignKey, Integer, String, Uuid
from sqlalchemy.orm import Mapped, mapped_column

from .base import Base, JSONType, utcnow


class ApiKey(Base):
    """Server-side agency API key. Only a SHA-256 of the key is stored: keys are
    256-bit random strings, so a slow hash adds nothing and a fast one keeps the
    per-request lookup a single indexed query."""

    __tablename__ = "api_keys"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    agency_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("agencies.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(200))
    prefix: Mapped[str] = mapped_column(String(16))
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    scopes: Mapped[list[str]] = mapped_column(JSONType, default=list)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    last_used_at: Mapped[datetime | None] = mapped_column()
    revoked_at: Mapped[datetime | None] = mapped_column()


class PublicKey(Base):
    """A public web-call key (x-api-access-key) for embeddable widgets.

    Separate from server API keys: it can only start web calls, only for the
    listed agents, optionally only from listed browser origins, under a rate
    limit, and it can be revoked. Stored hashed like API keys."""

    __tablename__ = "public_keys"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    agency_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("agencies.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(200))
    prefix: Mapped[str] = mapped_column(String(16))
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    # Our agent_mappings ids (as strings) this key may start calls for.
    agent_ids: Mapped[list[str]] = mapped_column(JSONType, default=list)
    # Exact origins like "https://www.example.com"; empty means any origin.
    allowed_origins: Mapped[list[str]] = mapped_column(JSONType, default=list)
    rate_limit_per_minute: Mapped[int] = mapped_column(Integer, default=30)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    last_used_at: Mapped[datetime | None] = mapped_column()
    revoked_at: Mapped[datetime | None] = mapped_column()


class RateLimitWindow(Base):
    """Fixed-window counters shared by every web process (one upsert per hit)."""

    __tablename__ = "rate_limit_windows"

    bucket: Mapped[str] = mapped_column(String(128), primary_key=True)
    window_start: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    count: Mapped[int] = mapped_column(Integer, default=0)
