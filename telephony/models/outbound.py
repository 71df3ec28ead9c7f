"""Outbound calls and campaigns: campaigns, their contacts and dial attempts, the
do-not-call list, and the Idempotency-Key ledger of POST /api/v1/calls."""
from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import ForeignKey, Index, Integer, String, Text, UniqueConstraint, Uuid
from sqlalchemy.orm import Mapped, mapped_column

from .base import Base, JSONType, utcnow


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
    # Answering machines: what each call does when one answers (hangup, leave_message,
    # continue), the message to leave, and the voicemail retry rule (its own count and
    # delay, separate from busy / no-answer).
    on_machine: Mapped[str] = mapped_column(String(16), default="hangup", server_default="hangup")
    machine_message: Mapped[dict[str, Any] | None] = mapped_column(JSONType)
    voicemail_max_retries: Mapped[int] = mapped_column(Integer, default=2, server_default="2")
    voicemail_retry_delay_seconds: Mapped[int] = mapped_column(Integer, default=14400, server_default="14400")


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
    # Who answered its call (human, machine, fax, unknown): the call's answered_by.
    answered_by: Mapped[str | None] = mapped_column(String(16))


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
