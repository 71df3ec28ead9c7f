"""SQLAlchemy 2 typed models. Alembic (migrations/) owns the schema.

Every table holding agency data carries `agency_id`; services always filter on
it, so one agency can never read or change another's rows.
"""
from __future__ import annotations

import enum
import uuid
from datetime import datetime, timezone
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Enum,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
    Uuid,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


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


class Agency(Base):
    __tablename__ = "agencies"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    name: Mapped[str] = mapped_column(String(200))
    # Prepaid call time in seconds; call.billed deducts from it, and public web
    # calls are refused once it reaches zero.
    credit_balance: Mapped[int] = mapped_column(BigInteger, default=0)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class User(Base):
    __tablename__ = "users"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    # The Supabase JWT `sub` claim.
    auth_subject: Mapped[str] = mapped_column(String(255), unique=True)
    email: Mapped[str | None] = mapped_column(String(320))
    agency_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("agencies.id", ondelete="SET NULL"), index=True)
    role: Mapped[Role] = mapped_column(_enum(Role, "user_role"), default=Role.member)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class AgentMapping(Base):
    __tablename__ = "agent_mappings"
    __table_args__ = (UniqueConstraint("agency_id", "ultravox_agent_id", name="uq_agent_mappings_agency_agent"),)

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    agency_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("agencies.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(200))
    ultravox_agent_id: Mapped[str] = mapped_column(String(64))
    recording_enabled: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class PhoneNumber(Base):
    __tablename__ = "phone_numbers"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    agency_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("agencies.id", ondelete="CASCADE"), index=True)
    # E.164; unique across agencies because the carrier routes by it.
    e164: Mapped[str] = mapped_column(String(16), unique=True)
    carrier: Mapped[Carrier] = mapped_column(_enum(Carrier, "carrier"))
    agent_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("agent_mappings.id", ondelete="SET NULL"),
                                                       index=True)
    fallback_number: Mapped[str | None] = mapped_column(String(16))
    # None: follow the agent's setting.
    recording_enabled: Mapped[bool | None] = mapped_column(Boolean)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class AgencyCredential(Base):
    """One encrypted secret per row (e.g. name='twilio.auth_token').

    Only telephony.credentials reads or writes `ciphertext`.
    """

    __tablename__ = "agency_credentials"
    __table_args__ = (UniqueConstraint("agency_id", "name", name="uq_agency_credentials_agency_name"),)

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    agency_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("agencies.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(64))
    ciphertext: Mapped[str] = mapped_column(Text)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class Call(Base):
    __tablename__ = "calls"
    __table_args__ = (
        UniqueConstraint("source", "carrier_call_id", name="uq_calls_source_carrier_call"),
        Index("ix_calls_agency_created", "agency_id", "created_at"),
    )

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    agency_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("agencies.id", ondelete="CASCADE"))
    agent_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("agent_mappings.id", ondelete="SET NULL"))
    ultravox_call_id: Mapped[str | None] = mapped_column(String(64), unique=True)
    source: Mapped[CallSource] = mapped_column(_enum(CallSource, "call_source"))
    direction: Mapped[CallDirection] = mapped_column(_enum(CallDirection, "call_direction"))
    from_number: Mapped[str | None] = mapped_column(String(64))
    to_number: Mapped[str | None] = mapped_column(String(64))
    carrier_call_id: Mapped[str | None] = mapped_column(String(128))
    status: Mapped[str] = mapped_column(String(32), default="created")
    end_reason: Mapped[str | None] = mapped_column(String(64))
    has_recording: Mapped[bool] = mapped_column(Boolean, default=False)
    metadata_: Mapped[dict[str, Any]] = mapped_column("metadata", JSONType, default=dict)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)
    joined_at: Mapped[datetime | None] = mapped_column()
    ended_at: Mapped[datetime | None] = mapped_column()
    duration_seconds: Mapped[int | None] = mapped_column(Integer)
    billed_duration_seconds: Mapped[int | None] = mapped_column(Integer)
    summary: Mapped[str | None] = mapped_column(Text)
    # Kept only so a repeated carrier webhook gets the same answer; it is useless
    # once the call is joined or the join timeout has passed.
    join_url: Mapped[str | None] = mapped_column(Text)
    # Highest carrier callback sequence applied (Twilio SequenceNumber), so a
    # late or duplicated callback never moves the call backwards.
    carrier_status_seq: Mapped[int | None] = mapped_column(Integer)
    short_summary: Mapped[str | None] = mapped_column(Text)
    # Ultravox's message objects (every page of GET /messages), stored by the
    # enrichment job once the call has ended; None until then.
    transcript: Mapped[list[dict[str, Any]] | None] = mapped_column(JSONType)
    # When the enrichment job last stored transcript/summary/recording state.
    enriched_at: Mapped[datetime | None] = mapped_column()
    # Seconds deducted from the agency's credit_balance for this call. Set once,
    # by a conditional UPDATE (WHERE credits_charged_seconds IS NULL), so a
    # repeated call.billed can never charge twice.
    credits_charged_seconds: Mapped[int | None] = mapped_column(Integer)


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


class ProcessedWebhookEvent(Base):
    """Idempotency ledger: a (provider, event_key) pair is inserted once; a
    duplicate delivery hits the unique constraint and is skipped."""

    __tablename__ = "processed_webhook_events"
    __table_args__ = (UniqueConstraint("provider", "event_key", name="uq_processed_webhook_events_key"),)

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True,
                                    autoincrement=True)
    provider: Mapped[str] = mapped_column(String(32))
    event_key: Mapped[str] = mapped_column(String(255))
    agency_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("agencies.id", ondelete="CASCADE"), index=True)
    received_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)  # retention purges by age


class EventEndpoint(Base):
    """An agency's URL that receives our signed event webhooks (call.*, campaign.*).

    The signing secret is sealed by telephony.credentials (bound to the agency
    and this endpoint's id). After a rotation the previous secret keeps signing
    alongside the new one until `previous_secret_expires_at`, so a receiver can
    switch without dropping deliveries."""

    __tablename__ = "event_endpoints"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    agency_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("agencies.id", ondelete="CASCADE"), index=True)
    url: Mapped[str] = mapped_column(String(2048))
    events: Mapped[list[str]] = mapped_column(JSONType, default=list)
    enabled: Mapped[bool] = mapped_column(Boolean, default=True)
    # Why we disabled it ourselves (e.g. the receiver answered 410 Gone); None otherwise.
    disabled_reason: Mapped[str | None] = mapped_column(String(200))
    secret_ciphertext: Mapped[str] = mapped_column(Text)
    previous_secret_ciphertext: Mapped[str | None] = mapped_column(Text)
    previous_secret_expires_at: Mapped[datetime | None] = mapped_column()
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class EventDelivery(Base):
    """The outbox: one row per (event, endpoint), written in the same transaction
    as the state change that caused the event, and sent by the worker with
    retries. `payload` is the exact body sent on every attempt."""

    __tablename__ = "event_deliveries"
    __table_args__ = (Index("ix_event_deliveries_endpoint_created", "endpoint_id", "created_at"),)

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    agency_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("agencies.id", ondelete="CASCADE"), index=True)
    endpoint_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("event_endpoints.id", ondelete="CASCADE"))
    # The `webhook-id` header: the same for every attempt and every endpoint of one event.
    event_id: Mapped[uuid.UUID] = mapped_column(Uuid)
    event_type: Mapped[str] = mapped_column(String(64))
    payload: Mapped[str] = mapped_column(Text)
    status: Mapped[str] = mapped_column(String(16), default="pending")  # pending, delivered, failed
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime | None] = mapped_column()
    last_attempt_at: Mapped[datetime | None] = mapped_column()
    last_status_code: Mapped[int | None] = mapped_column(Integer)
    last_error: Mapped[str | None] = mapped_column(Text)
    delivered_at: Mapped[datetime | None] = mapped_column()
    created_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)  # retention purges by age


class Job(Base):
    """Durable background work, claimed by workers (FOR UPDATE SKIP LOCKED on PostgreSQL)."""

    __tablename__ = "jobs"
    __table_args__ = (Index("ix_jobs_due", "status", "run_at"),)

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True,
                                    autoincrement=True)
    kind: Mapped[str] = mapped_column(String(64))
    payload: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    agency_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("agencies.id", ondelete="CASCADE"), index=True)
    status: Mapped[str] = mapped_column(String(16), default="queued")  # queued, running, done, failed
    run_at: Mapped[datetime] = mapped_column(default=utcnow)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    max_attempts: Mapped[int] = mapped_column(Integer, default=8)
    locked_until: Mapped[datetime | None] = mapped_column()
    last_error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(index=True)  # retention purges by age


# -- outbound calls and campaigns -------------------------------------------------------


class Campaign(Base):
    """An outbound campaign: who calls (agent, caller numbers), whom (campaign_contacts),
    when (start_at, calling window in the callee's time zone), how fast (pacing) and how
    often (retry policy). `status`: running, paused, cancelled, completed."""

    __tablename__ = "campaigns"
    __table_args__ = (Index("ix_campaigns_agency_created", "agency_id", "created_at"),
                      Index("ix_campaigns_status", "status"))

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    agency_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("agencies.id", ondelete="CASCADE"))
    agent_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("agent_mappings.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(200))
    status: Mapped[str] = mapped_column(String(16), default="running")
    # E.164 caller numbers (the agency's own), used in turn.
    from_numbers: Mapped[list[str]] = mapped_column(JSONType, default=list)
    start_at: Mapped[datetime] = mapped_column(default=utcnow)
    # {"days": [...], "start": "09:00", "end": "20:00"} or None (any time).
    calling_window: Mapped[dict[str, Any] | None] = mapped_column(JSONType)
    default_timezone: Mapped[str] = mapped_column(String(64), default="UTC")
    calls_per_second: Mapped[int] = mapped_column(Integer, default=1)
    max_concurrent: Mapped[int] = mapped_column(Integer, default=10)
    max_concurrent_agency: Mapped[int | None] = mapped_column(Integer)
    retry_on: Mapped[list[str]] = mapped_column(JSONType, default=list)
    max_attempts: Mapped[int] = mapped_column(Integer, default=1)
    retry_delay_seconds: Mapped[int] = mapped_column(Integer, default=600)
    template_context: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    # Set after Ultravox answered 429/503: nothing is dialled before it.
    backoff_until: Mapped[datetime | None] = mapped_column()
    paused_reason: Mapped[str | None] = mapped_column(String(200))
    # Bumped by every dispatcher that claims contacts (the SQLite write lock; a cheap touch on PostgreSQL).
    dispatch_seq: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)
    completed_at: Mapped[datetime | None] = mapped_column()


class CampaignContact(Base):
    """One callee of a campaign. `state`: queued (waits for next_attempt_at), dialing (an
    attempt is live), completed, failed (retries exhausted or rejected), unknown (a dial
    may have happened but no outcome is known: never redialled automatically),
    suppressed (on the do-not-call list), cancelled."""

    __tablename__ = "campaign_contacts"
    __table_args__ = (UniqueConstraint("campaign_id", "phone", name="uq_campaign_contacts_campaign_phone"),
                      Index("ix_campaign_contacts_due", "campaign_id", "state", "next_attempt_at"))

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    campaign_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("campaigns.id", ondelete="CASCADE"))
    agency_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("agencies.id", ondelete="CASCADE"), index=True)
    phone: Mapped[str] = mapped_column(String(16))
    timezone: Mapped[str | None] = mapped_column(String(64))
    name: Mapped[str | None] = mapped_column(String(200))
    template_context: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    state: Mapped[str] = mapped_column(String(16), default="queued")
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime] = mapped_column(default=utcnow)
    last_outcome: Mapped[str | None] = mapped_column(String(32))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class DialAttempt(Base):
    """One try at one contact. Written (state "claimed") before anything is sent;
    "dialing" is committed BEFORE the carrier request, so after a crash an attempt in
    "dialing" without a carrier id means "the carrier may have placed it": it becomes
    "unknown" and is reconciled by callbacks, never redialled. Its id is the Telnyx
    command_id. States: claimed, dialing, placed, ended, failed, aborted, unknown, expired."""

    __tablename__ = "dial_attempts"
    __table_args__ = (UniqueConstraint("contact_id", "attempt_number", name="uq_dial_attempts_contact_number"),
                      Index("ix_dial_attempts_campaign_state", "campaign_id", "state"),
                      Index("ix_dial_attempts_agency_state", "agency_id", "state"),
                      Index("ix_dial_attempts_state_changed", "state", "state_changed_at"))

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    campaign_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("campaigns.id", ondelete="CASCADE"))
    contact_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("campaign_contacts.id", ondelete="CASCADE"))
    agency_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("agencies.id", ondelete="CASCADE"))
    attempt_number: Mapped[int] = mapped_column(Integer)
    state: Mapped[str] = mapped_column(String(16), default="claimed")
    call_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("calls.id", ondelete="SET NULL"), index=True)
    carrier: Mapped[str | None] = mapped_column(String(16))
    from_number: Mapped[str | None] = mapped_column(String(16))
    carrier_call_id: Mapped[str | None] = mapped_column(String(128))
    outcome: Mapped[str | None] = mapped_column(String(32))
    error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    state_changed_at: Mapped[datetime] = mapped_column(default=utcnow)
    dial_started_at: Mapped[datetime | None] = mapped_column()
    ended_at: Mapped[datetime | None] = mapped_column()


class DoNotCallEntry(Base):
    """A number an agency must never dial (checked right before every campaign dial)."""

    __tablename__ = "do_not_call_entries"
    __table_args__ = (UniqueConstraint("agency_id", "phone", name="uq_do_not_call_agency_phone"),)

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    agency_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("agencies.id", ondelete="CASCADE"))
    phone: Mapped[str] = mapped_column(String(16))
    reason: Mapped[str | None] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class IdempotencyKey(Base):
    """Idempotency-Key of POST /api/v1/calls: the first request's fingerprint and, once
    finished, its response (replayed for 24 h). `state`: in_flight, done."""

    __tablename__ = "idempotency_keys"
    __table_args__ = (UniqueConstraint("agency_id", "key", name="uq_idempotency_keys_agency_key"),)

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    agency_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("agencies.id", ondelete="CASCADE"))
    key: Mapped[str] = mapped_column(String(255))
    request_hash: Mapped[str] = mapped_column(String(64))
    state: Mapped[str] = mapped_column(String(16), default="in_flight")
    response_status: Mapped[int | None] = mapped_column(Integer)
    response_body: Mapped[dict[str, Any] | None] = mapped_column(JSONType)
    created_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)  # expired keys are purged by age
