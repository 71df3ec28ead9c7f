"""Calls, and the ledger that makes webhook deliveries to us idempotent."""
from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import BigInteger, Boolean, ForeignKey, Index, Integer, String, Text, UniqueConstraint, Uuid
from sqlalchemy.orm import Mapped, mapped_column

from .base import Base, CallDirection, CallSource, JSONType, _enum, utcnow


class Call(Base):
    __tablename__ = "calls"
    __table_args__ = (
        UniqueConstraint("source", "carrier_call_id", name="uq_calls_source_carrier_call"),
        Index("ix_calls_agency_created", "agency_id", "created_at"),
        # The agency's live calls are counted by status (services/capacity.py).
        Index("ix_calls_agency_status", "agency_id", "status"),
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
    # Answering-machine detection of outbound calls (services/answering_machine.py).
    # Who picked up: human, machine, fax or unknown (set once, by the first verdict);
    # the carrier's own word beside it (e.g. Twilio's machine_end_beep).
    answered_by: Mapped[str | None] = mapped_column(String(16))
    answered_by_detail: Mapped[str | None] = mapped_column(String(64))
    # What to do if a machine answers (hangup, leave_message, continue), fixed at dial
    # time, and the message to leave ({"text": ...} or {"audio_url": ...}).
    on_machine: Mapped[str | None] = mapped_column(String(16))
    machine_message: Mapped[dict[str, Any] | None] = mapped_column(JSONType)
    # What we did about the verdict: hangup, wait_beep, message, continue.
    machine_action: Mapped[str | None] = mapped_column(String(16))


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
