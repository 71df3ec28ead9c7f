"""Agencies and what they own: their users, agents, phone numbers and encrypted
carrier credentials."""
from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import BigInteger, Boolean, ForeignKey, Integer, String, Text, UniqueConstraint, Uuid
from sqlalchemy.orm import Mapped, mapped_column

from .base import Base, Carrier, JSONType, Role, _enum, utcnow


class Agency(Base):
    __tablename__ = "agencies"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    name: Mapped[str] = mapped_column(String(200))
    # Prepaid call time in seconds; call.billed deducts from it, and public web
    # calls are refused once it reaches zero.
    credit_balance: Mapped[int] = mapped_column(BigInteger, default=0)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    # Capacity (services/capacity.py). The concurrency limit of the agency's Ultravox plan
    # (live calls of every kind at once); None: unlimited, and nothing is counted.
    max_concurrent_calls: Mapped[int | None] = mapped_column(Integer)
    # Slots campaigns may never take, kept free for inbound callers.
    reserved_inbound: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    # How long an inbound caller who finds every slot taken waits on hold for one.
    inbound_wait_seconds: Mapped[int] = mapped_column(Integer, default=30, server_default="30")
    # Bumped by database triggers (migration 0011) on every change to the agency's phone
    # numbers, agents or credentials: a web process's cached inbound route is used only
    # while this is what it was read at (services/inbound_routes.py). Never set by hand.
    route_version: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")


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
    # Where the agent may hand a carrier call to a person (services/transfer_targets.py
    # validates them). A column of the agent, not a table: the inbound webhook reads the
    # agent in its one route query, and the targets ride along at no extra round trip.
    transfer_targets: Mapped[list[dict[str, Any]]] = mapped_column(JSONType, default=list)


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
