"""Contact lists of real size: imported in the background, memory flat in the number of rows.

An upload too large to answer at once (or sent as a file, or with `Prefer: respond-async`)
goes this way:

1. `start_import` (the web request) copies the body into `contact_import_chunks` a
   megabyte at a time and queues one IMPORT_JOB. The file is kept in the database, not in
   a temporary file, because the worker that runs the job may be another process on
   another machine: the database is what web and worker processes share. The request
   holds one chunk at a time.
2. `run_import` (the worker) reads the chunks back as one text stream, twice. The first
   pass only checks the input as a whole (UTF-8, header, CSV quoting, JSON syntax, the
   campaign's contact cap): an input refused as a whole adds nothing, as the inline path
   promises. The second pass validates each row (contacts.py, the same rules as inline)
   and commits batches of BATCH_ROWS: contacts in one INSERT ... ON CONFLICT DO NOTHING
   (numbers already in the campaign, or earlier in the file, are duplicates), rejected
   rows with their row number and reason, and the import's counters, in one transaction.
   A worker that dies mid-import leaves `resume_after` at the last committed row, and the
   job, claimed again, carries on from there; the counters move only if `resume_after`
   is still what this run read, so two runs can never both apply a batch.
3. Finished, the chunks are deleted; the import and its rejected rows stay to be read.

Every function that reads an import takes the agency id: another agency's import is
NotFound, exactly like a missing one.
"""
from __future__ import annotations

import csv
import io
import logging
import queue
import re
import threading
import uuid
from collections.abc import Iterator
from typing import IO, Any, TypeVar

from sqlalchemy import delete, func, insert, select, update
from sqlalchemy.orm import Session

from ...db import Database, dialect_insert, rows_affected
from ...errors import Conflict, InvalidInput, NotFound
from ...jobs import JobContext, enqueue
from ...models import Campaign, CampaignContact, ContactImport, ContactImportChunk, ContactImportRejection, Job, utcnow
from ..do_not_call import listed_among
from .attempts import CONTACT_QUEUED
from .contact_streams import InputRefused, stream_contacts_csv, stream_contacts_json
from .contacts import ImportResult, LineError
from .manage import MAX_CONTACTS

log = logging.getLogger(__name__)
T = TypeVar("T")

IMPORT_JOB = "campaign_contacts.import"
FORMATS = ("csv", "json")
CHUNK_BYTES = 1024 * 1024      # one row of contact_import_chunks
BATCH_ROWS = 5_000             # rows validated and committed together
REJECTED_PAGE_ROWS = 1_000     # rejected rows read per query when writing them out
READ_AHEAD_BATCHES = 1         # batches validated ahead of the one being stored
# A bug (not bad input) fails the job; it is tried this often before the import shows as failed.
MAX_JOB_ATTEMPTS = 5

QUEUED, IMPORTING, DONE, FAILED = "queued", "importing", "done", "failed"
REJECTION_KINDS = ("error", "duplicate", "suppressed")
DUPLICATE_IN_BATCH = "duplicate: this number appears earlier in the file"
DUPLICATE_STORED = "duplicate: this number is already in the campaign (or earlier in the file)"
SUPPRESSED = "on the agency's do-not-call list"
STOPPED = "the import stopped on an internal error; nothing more will be added. Contacts already imported stay."


# -- the web request: spool the upload, queue the job -------------------------------------------------

def start_import(session: Session, campaign: Campaign, upload: IO[bytes], *, file_format: str,
                 filename: str | None = None) -> ContactImport:
    """Store the upload in chunks and queue its import; the caller commits. The size
    limit is the HTTP layer's (CONTACT_IMPORT_MAX_BYTES), checked before this reads."""
    if file_format not in FORMATS:
        raise InvalidInput(f"format must be one of {', '.join(FORMATS)}", field="format")
    if campaign.status == "cancelled":
        raise Conflict("campaign is cancelled; contacts can no longer be added")
    contact_import = ContactImport(agency_id=campaign.agency_id, campaign_id=campaign.id, format=file_format,
                                   filename=(filename or None) and filename[:255], status=QUEUED)
    session.add(contact_import)
    session.flush()
    size = 0
    for seq, chunk in enumerate(_pieces(upload, CHUNK_BYTES)):
        session.execute(insert(ContactImportChunk), {"import_id": contact_import.id, "seq": seq, "data": chunk})
        size += len(chunk)
    if size == 0:
        raise InvalidInput("the upload is empty", field="file")
    contact_import.size_bytes = size
    job = enqueue(session, IMPORT_JOB, {"import_id": str(contact_import.id)}, agency_id=campaign.agency_id,
                  max_attempts=MAX_JOB_ATTEMPTS)
    contact_import.job_id = job.id
    session.flush()
    return contact_import


def _pieces(upload: IO[bytes], size: int) -> Iterator[bytes]:
    """The upload in pieces of `size` bytes (the last one shorter): a stream's read may
    return less than asked."""
    piece = bytearray()
    while True:
        data = upload.read(size - len(piece))
        if not data:
            break
        piece += data
        if len(piece) >= size:
            yield bytes(piece)
            piece.clear()
    if piece:
        yield bytes(piece)


# -- reading imports (API) ----------------------------------------------------------------------------

def get_import(session: Session, agency_id: uuid.UUID, campaign_id: uuid.UUID,
               import_id: uuid.UUID) -> ContactImport:
    found = session.scalar(select(ContactImport).where(ContactImport.id == import_id,
                                                       ContactImport.campaign_id == campaign_id,
                                                       ContactImport.agency_id == agency_id))
    if found is None:
        raise NotFound("contact import not found")
    return found


def list_imports(session: Session, agency_id: uuid.UUID, campaign_id: uuid.UUID,
                 limit: int = 100) -> list[ContactImport]:
    return list(session.scalars(select(ContactImport).where(ContactImport.campaign_id == campaign_id,
                                                            ContactImport.agency_id == agency_id)
                                .order_by(ContactImport.created_at.desc(), ContactImport.id).limit(limit)))


def describe(session: Session, contact_import: ContactImport) -> dict[str, Any]:
    """The import as the API shows it. An import whose job failed for good (a bug or a
    database that stayed away, not bad input) shows as failed."""
    status, error, error_line = contact_import.status, contact_import.error, contact_import.error_line
    if status in (QUEUED, IMPORTING) and contact_import.job_id is not None:
        job_status = session.scalar(select(Job.status).where(Job.id == contact_import.job_id))
        if job_status == "failed":
            status, error, error_line = FAILED, STOPPED, None
    return {
        "id": contact_import.id, "campaign_id": contact_import.campaign_id, "status": status,
        "format": contact_import.format, "filename": contact_import.filename,
        "size_bytes": contact_import.size_bytes, "rows": contact_import.rows,
        "imported": contact_import.imported, "rejected": contact_import.rejected,
        "rejected_by_kind": {"error": contact_import.errors, "duplicate": contact_import.duplicates,
                             "suppressed": contact_import.suppressed},
        "error": {"line": error_line, "message": error} if error else None,
        "created_at": contact_import.created_at, "started_at": contact_import.started_at,
        "finished_at": contact_import.finished_at,
    }


REJECTED_COLUMNS = ("row", "kind", "field", "reason", "phone")
# A spreadsheet runs a cell that starts with one of these as a formula. A phone number
# (+, digits, spaces, dots, dashes, parentheses) is left as it is.
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
_PHONE_LIKE = re.compile(r"^[+\-]?[\d\s().\-]*$")


def rejected_rows_csv(db: Database, import_id: uuid.UUID) -> Iterator[str]:
    """The import's rejected rows as CSV text, a page of rows per query, in row order.
    The caller has checked that the import is the agency's."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(REJECTED_COLUMNS)
    after: tuple[int, int] = (-1, 0)
    while True:
        with db.session() as session:
            page = session.execute(
                select(ContactImportRejection.row, ContactImportRejection.id, ContactImportRejection.kind,
                       ContactImportRejection.field, ContactImportRejection.reason, ContactImportRejection.phone)
                .where(ContactImportRejection.import_id == import_id,
                       (ContactImportRejection.row > after[0])
                       | ((ContactImportRejection.row == after[0]) & (ContactImportRejection.id > after[1])))
                .order_by(ContactImportRejection.row, ContactImportRejection.id).limit(REJECTED_PAGE_ROWS)).all()
        for row, _id, kind, field_name, reason, phone in page:
            writer.writerow([row, kind, _cell(field_name), _cell(reason), _cell(phone)])
        if page:
            after = (page[-1][0], page[-1][1])
        yield out.getvalue()
        out.seek(0)
        out.truncate()
        if len(page) < REJECTED_PAGE_ROWS:
            return


def _cell(value: str | None) -> str:
    if not value:
        return ""
    if value.startswith(_FORMULA_START) and not _PHONE_LIKE.match(value):
        return "'" + value
    return value


# -- the worker: the job --------------------------------------------------------------------------------

def run_import(context: JobContext, payload: dict[str, Any]) -> None:
    """The IMPORT_JOB handler (idempotent: a finished import is left alone, a started
    one resumes after its last committed batch)."""
    db = context.db
    import_id = uuid.UUID(payload["import_id"])
    with db.session() as session:
        contact_import = session.get(ContactImport, import_id)
        if contact_import is None or contact_import.status in (DONE, FAILED):
            return
        campaign = session.get(Campaign, contact_import.campaign_id)
        if campaign is None or campaign.status == "cancelled":
            _fail(session, contact_import, LineError(0, None, "the campaign was cancelled before the import ran"))
            return
        file_format, resume_after = contact_import.format, contact_import.resume_after
        contact_import.status = IMPORTING
        contact_import.started_at = contact_import.started_at or utcnow()
        room = MAX_CONTACTS - (session.scalar(select(func.count()).select_from(CampaignContact)
                                              .where(CampaignContact.campaign_id == campaign.id)) or 0)
        agency_id, campaign_id = campaign.agency_id, campaign.id
    # Pass 1: the input as a whole. On a resumed import, the contacts it already added
    # count against the cap: the cap is then checked on the file's own length only.
    max_rows = MAX_CONTACTS if resume_after >= 0 else max(room, 1)
    refused = _check(db, import_id, file_format, max_rows)
    if refused is not None:
        with db.session() as session:
            _fail(session, session.get_one(ContactImport, import_id), refused)
        return
    # Pass 2: row by row, a batch per transaction; the next batch is validated (CPU)
    # while this one is stored (mostly waiting for the database).
    for last_line, batch in _read_ahead(_batches(db, import_id, file_format, skip_through=resume_after)):
        with db.session() as session:
            if session.scalar(select(Campaign.status).where(Campaign.id == campaign_id)) == "cancelled":
                _fail(session, session.get_one(ContactImport, import_id),
                      LineError(last_line, None, "the campaign was cancelled during the import; the contacts "
                                                 "imported before stay (cancelled), the rest were not added"))
                return
            if not _apply_batch(session, import_id, agency_id, campaign_id, batch, resume_after, last_line):
                log.warning("contact import %s moved on in another run; this run stops", import_id)
                return
        resume_after = last_line
    with db.session() as session:
        finished = rows_affected(session.execute(
            update(ContactImport).where(ContactImport.id == import_id, ContactImport.status == IMPORTING,
                                        ContactImport.resume_after == resume_after)
            .values(status=DONE, finished_at=utcnow())))
        if finished:
            session.execute(delete(ContactImportChunk).where(ContactImportChunk.import_id == import_id))
    log.info("contact import %s done", import_id)


def _fail(session: Session, contact_import: ContactImport, error: LineError) -> None:
    """Refused as a whole: nothing of it is added (pass 1 runs before anything is)."""
    contact_import.status, contact_import.finished_at = FAILED, utcnow()
    contact_import.error, contact_import.error_line = error.message, error.line
    session.execute(delete(ContactImportChunk).where(ContactImportChunk.import_id == contact_import.id))


def _check(db: Database, import_id: uuid.UUID, file_format: str, max_rows: int) -> LineError | None:
    """The first pass: the problem with the input as a whole, or None."""
    try:
        for _batch in _batches(db, import_id, file_format, max_rows=max_rows, check_only=True):
            pass
    except InputRefused as refused:
        return refused.error
    except UnicodeDecodeError as exc:
        return LineError(0, None, f"the file must be UTF-8 text (byte {exc.start} of a piece is not)")
    return None


def _read_ahead(items: Iterator[T], depth: int = READ_AHEAD_BATCHES) -> Iterator[T]:
    """What `items` yields, produced by a thread of its own at most `depth` items ahead
    (memory stays bounded). Its exception is raised here; leaving the loop early stops it."""
    ready: queue.Queue[tuple[str, Any]] = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(kind: str, value: Any) -> None:
        while not stop.is_set():
            try:
                ready.put((kind, value), timeout=0.1)
                return
            except queue.Full:
                continue

    def produce() -> None:
        try:
            for item in items:
                put("item", item)
                if stop.is_set():
                    return
            put("end", None)
        except BaseException as exc:  # handed to the consumer, which raises it
            put("error", exc)

    reader = threading.Thread(target=produce, name="contact-import-reader", daemon=True)
    reader.start()
    try:
        while True:
            kind, value = ready.get()
            if kind == "end":
                return
            if kind == "error":
                raise value
            yield value
    finally:
        stop.set()
        reader.join()


def _batches(db: Database, import_id: uuid.UUID, file_format: str, *, max_rows: int = MAX_CONTACTS,
             skip_through: int = -1, check_only: bool = False) -> Iterator[tuple[int, ImportResult]]:
    with _open_upload(db, import_id) as text:
        parse = stream_contacts_csv if file_format == "csv" else stream_contacts_json
        yield from parse(text, batch_rows=BATCH_ROWS, max_rows=max_rows, skip_through=skip_through,
                         check_only=check_only)


def _open_upload(db: Database, import_id: uuid.UUID) -> io.TextIOWrapper:
    """The stored upload as one text stream (a UTF-8 BOM dropped; line ends kept for the
    csv module), reading one chunk at a time from the database."""
    raw = io.BufferedReader(_ChunkReader(db, import_id), buffer_size=64 * 1024)
    return io.TextIOWrapper(raw, encoding="utf-8-sig", newline="")


class _ChunkReader(io.RawIOBase):
    """contact_import_chunks of one import, in order, as a readable byte stream. Each
    chunk is read in a short transaction of its own, so no connection is held between."""

    def __init__(self, db: Database, import_id: uuid.UUID):
        self.db, self.import_id = db, import_id
        self.seq = 0
        self.chunk = b""
        self.at = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        if self.at >= len(self.chunk):
            with self.db.session() as session:
                data = session.scalar(select(ContactImportChunk.data).where(
                    ContactImportChunk.import_id == self.import_id, ContactImportChunk.seq == self.seq))
            if data is None:
                return 0
            self.chunk, self.at, self.seq = bytes(data), 0, self.seq + 1
        size = min(len(buffer), len(self.chunk) - self.at)
        buffer[:size] = self.chunk[self.at:self.at + size]
        self.at += size
        return size


def _apply_batch(session: Session, import_id: uuid.UUID, agency_id: uuid.UUID, campaign_id: uuid.UUID,
                 batch: ImportResult, resume_after: int, last_line: int) -> bool:
    """Store one batch: its contacts, its rejected rows and the import's counters, in the
    caller's transaction. False (nothing stored) if another run got here first."""
    rejections: list[dict[str, Any]] = [
        {"import_id": import_id, "row": e.line, "kind": "error", "field": e.field and e.field[:100],
         "reason": e.message, "phone": None} for e in batch.errors]
    rejections += [{"import_id": import_id, "row": line, "kind": "duplicate", "field": "phone",
                    "reason": DUPLICATE_IN_BATCH, "phone": phone} for line, phone in batch.duplicates]
    do_not_call = listed_among(session, agency_id, [c.phone for c in batch.contacts])
    now = utcnow()
    rows: list[dict[str, Any]] = []
    lines: dict[str, int] = {}
    for line, contact in zip(batch.contact_lines, batch.contacts):
        if contact.phone in do_not_call:
            rejections.append({"import_id": import_id, "row": line, "kind": "suppressed", "field": "phone",
                               "reason": SUPPRESSED, "phone": contact.phone})
            continue
        lines[contact.phone] = line
        rows.append({"id": uuid.uuid4(), "campaign_id": campaign_id, "agency_id": agency_id,
                     "phone": contact.phone, "timezone": contact.timezone, "name": contact.name,
                     "template_context": dict(contact.template_context), "state": CONTACT_QUEUED,
                     "attempts": 0, "next_attempt_at": now, "created_at": now, "updated_at": now})
    inserted: set[str] = set()
    if rows:
        statement = (dialect_insert(session)(CampaignContact.__table__)
                     .on_conflict_do_nothing(index_elements=["campaign_id", "phone"])
                     .returning(CampaignContact.__table__.c.phone))
        inserted = set(session.scalars(statement, rows))
    rejections += [{"import_id": import_id, "row": line, "kind": "duplicate", "field": "phone",
                    "reason": DUPLICATE_STORED, "phone": phone}
                   for phone, line in lines.items() if phone not in inserted]
    if rejections:
        session.execute(insert(ContactImportRejection), rejections)
    counts = {kind: sum(1 for r in rejections if r["kind"] == kind) for kind in REJECTION_KINDS}
    moved = rows_affected(session.execute(
        update(ContactImport).where(ContactImport.id == import_id, ContactImport.status == IMPORTING,
                                    ContactImport.resume_after == resume_after)
        .values(resume_after=last_line, rows=ContactImport.rows + batch.rows,
                imported=ContactImport.imported + len(inserted),
                rejected=ContactImport.rejected + len(rejections),
                errors=ContactImport.errors + counts["error"],
                duplicates=ContactImport.duplicates + counts["duplicate"],
                suppressed=ContactImport.suppressed + counts["suppressed"], updated_at=now)))
    if not moved:
        session.rollback()
        return False
    if inserted:
        # As the inline path: new contacts bring a completed campaign back to running.
        session.execute(update(Campaign).where(Campaign.id == campaign_id, Campaign.status == "completed")
                        .values(status="running"))
    return True
