"""What every model shares: the declarative `Base`, UTC datetimes, the JSON column
type, and the enums stored as checked strings."""
from __future__ import annotations

import enum
from datetime import datetime, timezone
from typing import Any

from sqlalchemy import JSON, DateTime, Enum, TypeDecorator
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


class UTCDateTime(TypeDecorator):
    """Timezone-aware UTC datetimes on every backend (SQLite drops the offset)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given; use timezone-aware UTC datetimes")
        value = value.astimezone(timezone.utc)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value.astimezone(timezone.utc)


JSONType = JSON().with_variant(JSONB(), "postgresql")


class Base(DeclarativeBase):
    type_annotation_map = {datetime: UTCDateTime(), dict[str, Any]: JSONType, list[str]: JSONType}


class Role(str, enum.Enum):
    member = "member"
    admin = "admin"


class Carrier(str, enum.Enum):
    twilio = "twilio"
    telnyx = "telnyx"
    plivo = "plivo"


class CallSource(str, enum.Enum):
    webrtc = "webrtc"
    twilio = "twilio"
    telnyx = "telnyx"
    plivo = "plivo"
    websocket = "websocket"


class CallDirection(str, enum.Enum):
    inbound = "inbound"
    outbound = "outbound"


def _enum(enum_cls: type[enum.Enum], name: str) -> Enum:
    # Stored as plain strings with a CHECK constraint: portable, and adding a
    # value later is a small migration rather than an ALTER TYPE dance.
    return Enum(enum_cls, name=name, native_enum=False, length=16, validate_strings=True,
                create_constraint=True)
