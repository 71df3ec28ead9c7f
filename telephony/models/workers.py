"""The worker processes that are alive: one heartbeat row per running `flask worker run`."""
from __future__ import annotations

from datetime import datetime

from sqlalchemy import Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from .base import Base, utcnow


class WorkerHeartbeat(Base):
    """A worker process, refreshed by it every few seconds (services/worker_heartbeats.py).

    A worker that stops cleanly deletes its row; one that died leaves a row that stops
    being refreshed, counts as dead once it is older than the liveness window, and is
    deleted by the next worker that starts a day later. Holds no agency data."""

    __tablename__ = "worker_heartbeats"

    id: Mapped[str] = mapped_column(String(128), primary_key=True)  # host, pid and a random part
    hostname: Mapped[str] = mapped_column(String(255))
    pid: Mapped[int] = mapped_column(Integer)
    started_at: Mapped[datetime] = mapped_column(default=utcnow)
    last_seen_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
