"""Contact imports run in the background: the import and its progress, the uploaded file
kept in the database until a worker has read it, and the rows it rejected.

The upload lives in the database (not a temporary file) because the worker that runs
the import may be another process on another machine: the database is the one thing
web and worker processes share. Its chunks are deleted once the import has finished.
"""
from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import BigInteger, ForeignKey, Index, Integer, LargeBinary, String, Text, Uuid
from sqlalchemy.orm import Mapped, mapped_column

from .base import Base, utcnow


class ContactImport(Base):
    """One uploaded contact list for one campaign. `status`: queued (waiting for a
    worker), importing, done, failed (the input was refused as a whole: `error`, nothing
    added). Counters move as batches commit; `resume_after` is the last row number whose
    batch is committed, so a worker that died mid-import resumes after it."""

    __tablename__ = "contact_imports"
    __table_args__ = (Index("ix_contact_imports_campaign_created", "campaign_id", "created_at"),)

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    agency_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("agencies.id", ondelete="CASCADE"), index=True)
    campaign_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("campaigns.id", ondelete="CASCADE"))
    # The job running it (no foreign key: finished jobs are purged after RETENTION_DAYS).
    job_id: Mapped[int | None] = mapped_column(BigInteger)
    format: Mapped[str] = mapped_column(String(8))  # csv, json
    filename: Mapped[str | None] = mapped_column(String(255))
    size_bytes: Mapped[int] = mapped_column(BigInteger, default=0)
    status: Mapped[str] = mapped_column(String(16), default="queued")
    rows: Mapped[int] = mapped_column(Integer, default=0)
    imported: Mapped[int] = mapped_column(Integer, default=0)
    rejected: Mapped[int] = mapped_column(Integer, default=0)   # errors + duplicates + suppressed
    errors: Mapped[int] = mapped_column(Integer, default=0)
    duplicates: Mapped[int] = mapped_column(Integer, default=0)
    suppressed: Mapped[int] = mapped_column(Integer, default=0)
    resume_after: Mapped[int] = mapped_column(Integer, default=-1)
    error: Mapped[str | None] = mapped_column(Text)
    error_line: Mapped[int | None] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column()
    finished_at: Mapped[datetime | None] = mapped_column()
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class ContactImportChunk(Base):
    """A piece of the uploaded file, in order (`seq` from 0)."""

    __tablename__ = "contact_import_chunks"

    import_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("contact_imports.id", ondelete="CASCADE"),
                                                 primary_key=True)
    seq: Mapped[int] = mapped_column(Integer, primary_key=True)
    data: Mapped[bytes] = mapped_column(LargeBinary)


class ContactImportRejection(Base):
    """A row the import did not add, and why. `kind`: error, duplicate, suppressed.
    `row`: the CSV line (header = 1) or JSON item index (from 0)."""

    __tablename__ = "contact_import_rejections"
    __table_args__ = (Index("ix_contact_import_rejections_import_row", "import_id", "row"),)

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True,
                                    autoincrement=True)
    import_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("contact_imports.id", ondelete="CASCADE"))
    row: Mapped[int] = mapped_column(Integer)
    kind: Mapped[str] = mapped_column(String(16))
    field: Mapped[str | None] = mapped_column(String(100))
    reason: Mapped[str] = mapped_column(Text)
    phone: Mapped[str | None] = mapped_column(String(64))  # as given (E.164 for duplicates / suppressed)
