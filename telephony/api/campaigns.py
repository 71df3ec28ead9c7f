"""Outbound campaigns (/api/v1/campaigns).

  POST /campaigns                      create (campaigns:write), contacts optional in the body
  GET  /campaigns                      list (campaigns:read)
  GET  /campaigns/<id>                 settings + progress (counts per state, attempts, ETA)
  POST /campaigns/<id>/contacts        add contacts: Content-Type text/csv (a CSV file as the raw
                                       body) or application/json {"contacts": [...]}; per-line report.
                                       Larger bodies (up to CONTACT_IMPORT_MAX_BYTES), a multipart file
                                       upload, or `Prefer: respond-async`: 202, a background import
  GET  /campaigns/<id>/imports[/<import_id>]       background imports and their progress
  GET  /campaigns/<id>/imports/<import_id>/rejected  its rejected rows as CSV (row, kind, field, reason)
  GET  /campaigns/<id>/contacts        list contacts (?state=&limit=&offset=)
  POST /campaigns/<id>/pause|resume|cancel
"""
from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any, Literal

from flask import Blueprint, Response, request, stream_with_context, url_for
from pydantic import Field

from ..auth import current_principal, require_auth
from ..config import get_config
from ..db import get_db, get_session
from ..errors import ApiError
from ..services.campaigns import imports as import_service
from ..services.campaigns import manage as campaign_service
from ..services.campaigns.attempts import CONTACT_STATES
from .outbound import MachineMessageIn, OnMachine
from .schema import Body, RequestModel, ResponseModel, document, parse_body, parse_query, render

bp = Blueprint("campaigns", __name__, url_prefix="/api/v1")

Outcome = Literal["busy", "no-answer", "failed"]


class WindowIn(RequestModel):
    days: list[str | int] = Field(min_length=1, max_length=7)
    start: str = Field(description="Local time HH:MM")
    end: str = Field(description="Local time HH:MM (00:00 or 24:00: midnight)")


class PacingIn(RequestModel):
    calls_per_second: int = Field(default=1, ge=1, le=100,
                                  description="Call starts per second per carrier account (all dispatchers)")
    max_concurrent: int = Field(default=10, ge=1, le=10_000, description="Live calls of this campaign")
    max_concurrent_agency: int | None = Field(default=None, ge=1, le=100_000,
                                              description="Live campaign calls of the whole agency")


def _default_retry_outcomes() -> list[Outcome]:
    return ["busy", "no-answer"]


class RetryIn(RequestModel):
    on: list[Outcome] = Field(default_factory=_default_retry_outcomes)
    max_attempts: int = Field(default=3, ge=1, le=20)
    delay_seconds: int = Field(default=600, ge=0, le=7 * 86400)


class VoicemailRetryIn(RequestModel):
    max_retries: int = Field(default=2, ge=0, le=10, description="Redials after a machine was hung up on")
    delay_seconds: int = Field(default=4 * 3600, ge=0, le=7 * 86400, description="Wait before each redial")


class CampaignMachineIn(RequestModel):
    on_machine: OnMachine = Field(
        default="hangup", description="What each call does if a machine answers: hang up (outcome voicemail, "
                                      "retried by `retry`), leave `message` after the beep and hang up "
                                      "(voicemail_left, done), or let the agent talk. A fax is always hung up on")
    message: MachineMessageIn | None = Field(default=None, description="Needed by leave_message")
    retry: VoicemailRetryIn = Field(default_factory=VoicemailRetryIn,
                                    description="The voicemail retry rule, separate from busy / no-answer")


class CampaignIn(RequestModel):
    name: str = Field(min_length=1, max_length=200)
    agent_id: str = Field(min_length=1, max_length=64, description="Ultravox agent id (or our mapping id)")
    from_numbers: list[str] | None = Field(default=None, max_length=50,
                                           description="Caller numbers; default: the agent's numbers")
    start_at: datetime | None = None
    calling_window: WindowIn | None = None
    default_timezone: str = Field(default="UTC", max_length=64,
                                  description="For contacts whose zone is neither given nor derivable")
    pacing: PacingIn = Field(default_factory=PacingIn)
    retry: RetryIn = Field(default_factory=RetryIn)
    template_context: dict[str, str] | None = None
    contacts: list[dict[str, Any]] | None = Field(default=None, max_length=campaign_service.MAX_CONTACTS)
    start: bool = Field(default=True, description="false: created paused")
    answering_machine: CampaignMachineIn = Field(default_factory=CampaignMachineIn,
                                                 description="Answering machines (detection is asynchronous: "
                                                             "the callee hears the agent at once)")


class ContactsIn(RequestModel):
    contacts: list[dict[str, Any]] = Field(max_length=campaign_service.MAX_CONTACTS)


class PacingOut(ResponseModel):
    calls_per_second: int
    max_concurrent: int
    max_concurrent_agency: int | None


class RetryOut(ResponseModel):
    on: list[str]
    max_attempts: int
    delay_seconds: int


class ProgressOut(ResponseModel):
    contacts: dict[str, int]
    contacts_total: int
    attempts: int
    attempts_by_state: dict[str, int]
    answered_by: dict[str, int] = Field(description="Attempts answered by human, machine, fax, unknown; and "
                                                    "messages_left: messages left on machines")
    estimated_finish_at: datetime | None


class VoicemailRetryOut(ResponseModel):
    max_retries: int
    delay_seconds: int


class CampaignMachineOut(ResponseModel):
    on_machine: str
    message: dict[str, str] | None
    retry: VoicemailRetryOut


class CampaignOut(ResponseModel):
    id: uuid.UUID
    name: str
    status: str
    paused_reason: str | None
    agent_id: uuid.UUID
    from_numbers: list[str]
    start_at: datetime
    calling_window: dict[str, Any] | None
    default_timezone: str
    pacing: PacingOut
    retry: RetryOut
    answering_machine: CampaignMachineOut
    backoff_until: datetime | None
    created_at: datetime
    completed_at: datetime | None
    progress: ProgressOut | None = None
    import_report: dict[str, Any] | None = None


class CampaignList(ResponseModel):
    campaigns: list[CampaignOut]


class ImportReport(ResponseModel):
    added: int
    rows: int
    errors: list[dict[str, Any]]
    duplicates: list[dict[str, Any]]
    suppressed: list[dict[str, Any]]


class ContactOut(ResponseModel):
    id: uuid.UUID
    phone: str
    name: str | None
    timezone: str | None
    state: str
    attempts: int
    next_attempt_at: datetime
    last_outcome: str | None


class ContactList(ResponseModel):
    contacts: list[ContactOut]


class ContactQuery(RequestModel):
    state: Literal[CONTACT_STATES] | None = None  # type: ignore[valid-type]
    limit: int = Field(default=100, ge=1, le=1000)
    offset: int = Field(default=0, ge=0, le=2**63 - 1)  # the database's OFFSET is a 64-bit integer


class ImportErrorOut(ResponseModel):
    line: int | None
    message: str


class ImportOut(ResponseModel):
    id: uuid.UUID
    campaign_id: uuid.UUID
    status: Literal["queued", "importing", "done", "failed"]
    format: str
    filename: str | None
    size_bytes: int
    rows: int
    imported: int
    rejected: int
    rejected_by_kind: dict[str, int]
    error: ImportErrorOut | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    rejected_rows_url: str


class ImportList(ResponseModel):
    imports: list[ImportOut]


NOT_FOUND = (None, "Not found, or another agency's.")
# The contact route's own body limit (CONTACT_IMPORT_MAX_BYTES), also for chunked bodies
# (body_limit.py reads those before Flask does, so it needs the path).
CONTACT_IMPORT_PATH = r"/api/v1/campaigns/[^/]+/contacts"
RAW_FORMATS = {"text/csv": "csv", "text/plain": "csv", "application/json": "json"}
# How browsers and tools label an uploaded file (Excel on Windows: .csv as application/vnd.ms-excel).
FILE_FORMATS = {**RAW_FORMATS, "application/csv": "csv", "application/vnd.ms-excel": "csv"}
FILE_EXTENSIONS = {".csv": "csv", ".tsv": "csv", ".txt": "csv", ".json": "json"}
CSV_CONTACTS = Body("text/csv", {"type": "string", "description": "UTF-8 CSV (text/plain is read the same way): "
                                 "a header row with `phone` (E.164), optional `timezone` (IANA) and `name`; "
                                 "other columns become the contact's template variables",
                                 "examples": ["phone,name,timezone\n+14155550100,Ada,America/Los_Angeles\n"]})
MULTIPART_CONTACTS = Body("multipart/form-data", {
    "type": "object", "required": ["file"],
    "properties": {"file": {"type": "string", "contentMediaType": "text/csv",
                            "description": "The list as a .csv or .json file (always imported in the background)"}}})


def _out(campaign, *, with_progress: bool = False, report: dict | None = None) -> dict[str, Any]:
    data = {
        **{name: getattr(campaign, name) for name in ("id", "name", "status", "paused_reason", "agent_id",
                                                       "from_numbers", "start_at", "calling_window",
                                                       "default_timezone", "backoff_until", "created_at",
                                                       "completed_at")},
        "pacing": {"calls_per_second": campaign.calls_per_second, "max_concurrent": campaign.max_concurrent,
                   "max_concurrent_agency": campaign.max_concurrent_agency},
        "retry": {"on": campaign.retry_on, "max_attempts": campaign.max_attempts,
                  "delay_seconds": campaign.retry_delay_seconds},
        "answering_machine": {"on_machine": campaign.on_machine, "message": campaign.machine_message,
                              "retry": {"max_retries": campaign.voicemail_max_retries,
                                        "delay_seconds": campaign.voicemail_retry_delay_seconds}},
    }
    if with_progress:
        data["progress"] = campaign_service.progress(get_session(), campaign)
    if report is not None:
        data["import_report"] = report
    return data


@bp.post("/campaigns")
@require_auth(scope="campaigns:write")
@document(summary="Create a campaign", tags=["campaigns"], request_model=CampaignIn,
          responses={201: (CampaignOut, "Created (import_report when contacts were given)"),
                     400: (None, "Invalid input"), 404: (None, "Unknown agent")})
def create_campaign():
    body = parse_body(CampaignIn)
    session = get_session()
    agency_id = current_principal().agency_id
    machine = body.answering_machine
    campaign = campaign_service.create_campaign(
        session, agency_id, name=body.name, agent_id=body.agent_id, from_numbers=body.from_numbers,
        start_at=body.start_at, calling_window=body.calling_window.model_dump() if body.calling_window else None,
        default_timezone=body.default_timezone, calls_per_second=body.pacing.calls_per_second,
        max_concurrent=body.pacing.max_concurrent, max_concurrent_agency=body.pacing.max_concurrent_agency,
        retry_on=list(body.retry.on), max_attempts=body.retry.max_attempts,
        retry_delay_seconds=body.retry.delay_seconds, template_context=body.template_context, start=body.start,
        on_machine=machine.on_machine, machine_message=machine.message.as_dict() if machine.message else None,
        voicemail_max_retries=machine.retry.max_retries, voicemail_retry_delay_seconds=machine.retry.delay_seconds)
    report = None
    if body.contacts is not None:
        report = campaign_service.add_contacts(session, campaign, items=body.contacts)
    session.commit()
    return render(CampaignOut, _out(campaign, with_progress=True, report=report), 201)


@bp.get("/campaigns")
@require_auth(scope="campaigns:read")
@document(summary="List campaigns", tags=["campaigns"], responses={200: (CampaignList, "Campaigns")})
def list_campaigns():
    campaigns = campaign_service.list_campaigns(get_session(), current_principal().agency_id)
    return render(CampaignList, {"campaigns": [_out(c) for c in campaigns]})


@bp.get("/campaigns/<uuid:campaign_id>")
@require_auth(scope="campaigns:read")
@document(summary="A campaign with its progress", tags=["campaigns"],
          responses={200: (CampaignOut, "Campaign"), 404: NOT_FOUND})
def get_campaign(campaign_id: uuid.UUID):
    campaign = campaign_service.get_campaign(get_session(), current_principal().agency_id, campaign_id)
    return render(CampaignOut, _out(campaign, with_progress=True))


@bp.post("/campaigns/<uuid:campaign_id>/contacts")
@require_auth(scope="campaigns:write")
@document(summary="Add contacts: text/csv body (header row with phone, optional timezone, name, other columns = "
                  "template variables) or JSON {\"contacts\": [...]}. Bodies up to 64 KB answer at once (200); "
                  "larger ones (up to CONTACT_IMPORT_MAX_BYTES, 25 MB), a multipart/form-data `file`, or "
                  "`Prefer: respond-async` start a background import (202)", tags=["campaigns"],
          request_model=ContactsIn, bodies=[CSV_CONTACTS, MULTIPART_CONTACTS],
          parameters=[{"name": "Prefer", "in": "header", "required": False, "schema": {"type": "string"},
                       "description": "respond-async: always import in the background (202)"}],
          responses={200: (ImportReport, "Per-line report"), 202: (ImportOut, "Background import started"),
                     400: (None, "Input refused as a whole"), 404: NOT_FOUND, 409: (None, "Campaign cancelled"),
                     413: (None, "Larger than CONTACT_IMPORT_MAX_BYTES"),
                     415: (None, "Unsupported content type")})
def add_contacts(campaign_id: uuid.UUID):
    config = get_config()
    # Before anything reads the body: this route's own limit, not the API's 64 KB.
    request.max_content_length = config.contact_import_max_bytes
    session = get_session()
    campaign = campaign_service.get_campaign(session, current_principal().agency_id, campaign_id)
    mimetype = request.mimetype
    if mimetype == "multipart/form-data":
        upload, file_format = _uploaded_file()
        return _start_import(campaign_id, import_service.start_import(
            session, campaign, upload.stream, file_format=file_format, filename=upload.filename))
    if mimetype not in RAW_FORMATS:
        raise ApiError(415, "Send text/csv, application/json, or a file as multipart/form-data",
                       code="unsupported_media_type")
    # Up to the API's usual body limit, the list is imported within the request, as it
    # always was (200 and the per-line report); anything larger runs in the background.
    wants_async = "respond-async" in request.headers.get("Prefer", "").lower()
    if wants_async or (request.content_length or 0) > config.max_body_bytes:
        response = _start_import(campaign_id, import_service.start_import(
            session, campaign, request.stream, file_format=RAW_FORMATS[mimetype]))
        if wants_async:
            response.headers["Preference-Applied"] = "respond-async"
        return response
    if mimetype in ("text/csv", "text/plain"):
        try:
            text = request.get_data(cache=True).decode("utf-8")
        except UnicodeDecodeError:
            raise ApiError(400, "CSV must be UTF-8", code="invalid_input") from None
        report = campaign_service.add_contacts(session, campaign, csv_text=text)
    elif mimetype == "application/json":
        body = parse_body(ContactsIn)
        report = campaign_service.add_contacts(session, campaign, items=body.contacts)
    else:
        raise ApiError(415, "Send text/csv or application/json", code="unsupported_media_type")
    if report["added"] == 0 and report["errors"] and not report["duplicates"] and not report["suppressed"]:
        session.rollback()
        return render(ImportReport, report, 400)
    session.commit()
    return render(ImportReport, report)


def _uploaded_file():
    """The multipart upload's one file (field `file`, or the only file sent) and its format."""
    files = request.files
    upload = files.get("file") or (next(iter(files.values())) if len(files) == 1 else None)
    if upload is None:
        raise ApiError(400, "send the contact list as the multipart field `file`", code="invalid_input",
                       fields={"file": "required"})
    extension = "." + upload.filename.rsplit(".", 1)[-1].lower() if upload.filename and "." in upload.filename else ""
    file_format = FILE_EXTENSIONS.get(extension) or FILE_FORMATS.get(upload.mimetype)
    if file_format is None:
        raise ApiError(415, "the file must be CSV (.csv, text/csv) or JSON (.json, application/json)",
                       code="unsupported_media_type")
    return upload, file_format


def _import_out(contact_import) -> dict[str, Any]:
    return {**import_service.describe(get_session(), contact_import),
            "rejected_rows_url": url_for("campaigns.rejected_rows", campaign_id=contact_import.campaign_id,
                                         import_id=contact_import.id)}


def _start_import(campaign_id: uuid.UUID, contact_import) -> Response:
    """202 with the import just stored (the upload is committed before the answer)."""
    get_session().commit()
    response, _status = render(ImportOut, _import_out(contact_import), 202)
    response.status_code = 202
    response.headers["Location"] = url_for("campaigns.get_import", campaign_id=campaign_id,
                                           import_id=contact_import.id)
    return response


@bp.get("/campaigns/<uuid:campaign_id>/imports")
@require_auth(scope="campaigns:read")
@document(summary="A campaign's background contact imports, newest first (at most 100)", tags=["campaigns"],
          responses={200: (ImportList, "Imports"), 404: NOT_FOUND})
def list_imports(campaign_id: uuid.UUID):
    session = get_session()
    agency_id = current_principal().agency_id
    campaign_service.get_campaign(session, agency_id, campaign_id)
    found = import_service.list_imports(session, agency_id, campaign_id)
    return render(ImportList, {"imports": [_import_out(i) for i in found]})


@bp.get("/campaigns/<uuid:campaign_id>/imports/<uuid:import_id>")
@require_auth(scope="campaigns:read")
@document(summary="A background contact import: status (queued, importing, done, failed), rows, imported, "
                  "rejected", tags=["campaigns"], responses={200: (ImportOut, "Import"), 404: NOT_FOUND})
def get_import(campaign_id: uuid.UUID, import_id: uuid.UUID):
    found = import_service.get_import(get_session(), current_principal().agency_id, campaign_id, import_id)
    return render(ImportOut, _import_out(found))


@bp.get("/campaigns/<uuid:campaign_id>/imports/<uuid:import_id>/rejected")
@require_auth(scope="campaigns:read")
@document(summary="The rows an import did not add, as CSV: row (CSV line, header = 1; JSON item from 0), kind "
                  "(error, duplicate, suppressed), field, reason, phone", tags=["campaigns"],
          responses={200: (None, "text/csv"), 404: NOT_FOUND})
def rejected_rows(campaign_id: uuid.UUID, import_id: uuid.UUID):
    session = get_session()
    found = import_service.get_import(session, current_principal().agency_id, campaign_id, import_id)
    session.rollback()  # the rows are read page by page in sessions of their own
    rows = import_service.rejected_rows_csv(get_db(), found.id)
    return Response(stream_with_context(rows), mimetype="text/csv",
                    headers={"Content-Disposition": f'attachment; filename="rejected-{found.id}.csv"'})


@bp.get("/campaigns/<uuid:campaign_id>/contacts")
@require_auth(scope="campaigns:read")
@document(summary="List a campaign's contacts", tags=["campaigns"], query_model=ContactQuery,
          responses={200: (ContactList, "Contacts"), 404: NOT_FOUND})
def list_contacts(campaign_id: uuid.UUID):
    query = parse_query(ContactQuery)
    session = get_session()
    campaign = campaign_service.get_campaign(session, current_principal().agency_id, campaign_id)
    contacts = campaign_service.list_contacts(session, campaign, state=query.state, limit=query.limit,
                                              offset=query.offset)
    return render(ContactList, {"contacts": contacts})


def _action_view(action: str):
    @require_auth(scope="campaigns:write")
    @document(summary=f"{action.capitalize()} a campaign", tags=["campaigns"],
              responses={200: (CampaignOut, "Updated"), 404: NOT_FOUND, 409: (None, "Not allowed in this state")})
    def view(campaign_id: uuid.UUID):
        session = get_session()
        campaign = campaign_service.set_status(session, current_principal().agency_id, campaign_id, action)
        session.commit()
        return render(CampaignOut, _out(campaign, with_progress=True))

    return view


for _action in ("pause", "resume", "cancel"):
    bp.add_url_rule(f"/campaigns/<uuid:campaign_id>/{_action}", f"{_action}_campaign", _action_view(_action),
                    methods=["POST"])
