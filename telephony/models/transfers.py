"""Transfers of live carrier calls to people: one row per attempt on a call."""
from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import ForeignKey, Integer, String, Text, Uuid
from sqlalchemy.orm import Mapped, mapped_column

from .base import Base, utcnow


class CallTransfer(Base):
    """The agent asked to hand the caller to a target (services/transfers.py).

    ``status`` moves dialing -> answered -> a final outcome; ``outcome`` is set once,
    when the carrier reports how the person's leg ended: answered (they took the call),
    busy, no-answer, declined (warm: they did not accept) or failed. ``call_id`` is the
    call whose agent asked; ``resumed_call_id`` the call that brought the caller back to
    the agent after a failed transfer."""

    __tablename__ = "call_transfers"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    agency_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("agencies.id", ondelete="CASCADE"), index=True)
    call_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("calls.id", ondelete="CASCADE"), index=True)
    carrier: Mapped[str] = mapped_column(String(16))
    target_name: Mapped[str] = mapped_column(String(64))
    destination: Mapped[str] = mapped_column(String(255))
    mode: Mapped[str] = mapped_column(String(8))  # cold | warm
    reason: Mapped[str | None] = mapped_column(Text)
    status: Mapped[str] = mapped_column(String(16), default="dialing")
    outcome: Mapped[str | None] = mapped_column(String(16))
    ring_timeout_seconds: Mapped[int] = mapped_column(Integer)
    # The carrier's id of the person's leg, once known (Telnyx/Plivo/Twilio call ids).
    carrier_leg_id: Mapped[str | None] = mapped_column(String(128))
    ultravox_call_id: Mapped[str | None] = mapped_column(String(64))  # the agent leg that asked
    resumed_call_id: Mapped[uuid.UUID | None] = mapped_column(Uuid)
    started_at: Mapped[datetime] = mapped_column(default=utcnow)
    answered_at: Mapped[datetime | None] = mapped_column()
    ended_at: Mapped[datetime | None] = mapped_column()
