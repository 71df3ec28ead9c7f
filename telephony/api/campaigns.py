"""Outbound campaigns (/api/v1/campaigns).

  POST /campaigns                      create (campaigns:write), contacts optional in the body
  GET  /campaigns                      list (campaigns:read)
  GET  /campaigns/<id>                 settings + progress (counts per state, attempts, ETA)
  POST /campaigns/<id>/contacts        add contacts: Content-Type text/csv (a CSV file as the raw
                                       body) or application/json {"contacts": [...]}; per-line report
  GET  /campaigns/<id>/contacts        list contacts (?state=&limit=&offset=)
  POST /campaigns/<id>/pause|resume|cancel
"""
from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any, Literal

from flask import Blueprint, request
from pydantic import Field

from ..auth import current_principal, require_auth
from ..db import get_session
from ..errors import ApiError
from ..services.campaigns import manage as campaign_service
from ..services.campaigns.attempts import CONTACT_STATES
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
    estimated_finish_at: datetime | None


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


NOT_FOUND = (None, "Not found, or another agency's.")
CSV_CONTACTS = Body("text/csv", {"type": "string", "description": "UTF-8 CSV (text/plain is read the same way): "
                                 "a header row with `phone` (E.164), optional `timezone` (IANA) and `name`; "
                                 "other columns become the contact's template variables",
                                 "examples": ["phone,name,timezone\n+14155550100,Ada,America/Los_Angeles\n"]})


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
    campaign = campaign_service.create_campaign(
        session, agency_id, name=body.name, agent_id=body.agent_id, from_numbers=body.from_numbers,
        start_at=body.start_at, calling_window=body.calling_window.model_dump() if body.calling_window else None,
        default_timezone=body.default_timezone, calls_per_second=body.pacing.calls_per_second,
        max_concurrent=body.pacing.max_concurrent, max_concurrent_agency=body.pacing.max_concurrent_agency,
        retry_on=list(body.retry.on), max_attempts=body.retry.max_attempts,
        retry_delay_seconds=body.retry.delay_seconds, template_context=body.template_context, start=body.start)
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
                  "template variables) or JSON {\"contacts\": [...]}", tags=["campaigns"],
          request_model=ContactsIn, bodies=[CSV_CONTACTS],
          responses={200: (ImportReport, "Per-line report"), 400: (None, "Input refused as a whole"),
                     404: NOT_FOUND, 409: (None, "Campaign cancelled"), 415: (None, "Unsupported content type")})
def add_contacts(campaign_id: uuid.UUID):
    session = get_session()
    campaign = campaign_service.get_campaign(session, current_principal().agency_id, campaign_id)
    mimetype = request.mimetype
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
