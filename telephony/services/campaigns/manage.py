"""Campaign management: create, add contacts, pause / resume / cancel, progress.

Dialling itself is the dispatcher's (claim.py, dial.py, outcomes.py). Every function takes the agency id and
filters on it: another agency's campaign is NotFound, exactly like a missing one.
"""
from __future__ import annotations

import math
import uuid
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from ... import answering_machine as amd
from ...carriers.base import ANSWERED_BY
from ...db import insert_if_absent
from ...errors import Conflict, InvalidInput, NotFound
from ...models import Campaign, CampaignContact, DialAttempt, PhoneNumber, utcnow
from ..agents import find_agent
from ..do_not_call import listed_among
from ..outbound import validate_machine_policy
from ..phone_numbers import normalize_e164
from .attempts import CONTACT_CANCELLED, CONTACT_DIALING, CONTACT_QUEUED, CONTACT_STATES
from .contacts import ImportResult, parse_contacts_csv, parse_contacts_json
from .windows import CallingWindow, validate_timezone

RETRYABLE = ("busy", "no-answer", "failed")
MAX_CONTACTS = 100_000


def create_campaign(session: Session, agency_id: uuid.UUID, *, name: str, agent_id: str,
                    from_numbers: list[str] | None, start_at: datetime | None,
                    calling_window: dict[str, Any] | None, default_timezone: str, calls_per_second: int,
                    max_concurrent: int, max_concurrent_agency: int | None, retry_on: list[str],
                    max_attempts: int, retry_delay_seconds: int, template_context: dict[str, str] | None,
                    start: bool, on_machine: str = amd.CAMPAIGN_DEFAULT, machine_message: dict[str, Any] | None = None,
                    voicemail_max_retries: int = 2, voicemail_retry_delay_seconds: int = 4 * 3600) -> Campaign:
    agent = find_agent(session, agency_id, agent_id)
    numbers = _caller_numbers(session, agency_id, agent.id, from_numbers)
    window = CallingWindow.from_dict(calling_window, prefix="calling_window.").to_dict() if calling_window else None
    zone = validate_timezone(default_timezone, field="default_timezone")
    if start_at is not None and start_at.tzinfo is None:
        raise InvalidInput("start_at must include a UTC offset", field="start_at")
    unknown = sorted(set(retry_on) - set(RETRYABLE))
    if unknown:
        raise InvalidInput(f"retry_on may list {', '.join(RETRYABLE)}", field="retry_on")
    validate_machine_policy(on_machine, machine_message, field="answering_machine")
    campaign = Campaign(agency_id=agency_id, agent_id=agent.id, name=name, status="running" if start else "paused",
                        from_numbers=numbers, start_at=start_at or utcnow(), calling_window=window,
                        default_timezone=zone, calls_per_second=calls_per_second, max_concurrent=max_concurrent,
                        max_concurrent_agency=max_concurrent_agency, retry_on=list(dict.fromkeys(retry_on)),
                        max_attempts=max_attempts, retry_delay_seconds=retry_delay_seconds,
                        template_context=template_context or {}, on_machine=on_machine,
                        machine_message=machine_message, voicemail_max_retries=voicemail_max_retries,
                        voicemail_retry_delay_seconds=voicemail_retry_delay_seconds)
    session.add(campaign)
    session.flush()
    return campaign


def _caller_numbers(session: Session, agency_id: uuid.UUID, agent_id: uuid.UUID,
                    from_numbers: list[str] | None) -> list[str]:
    if from_numbers:
        wanted = list(dict.fromkeys(normalize_e164(n, field=f"from_numbers.{i}") for i, n in enumerate(from_numbers)))
        owned = set(session.scalars(select(PhoneNumber.e164).where(PhoneNumber.agency_id == agency_id,
                                                                   PhoneNumber.e164.in_(wanted))))
        missing = [n for n in wanted if n not in owned]
        if missing:
            raise InvalidInput(f"{missing[0]} is not one of the agency's phone numbers", field="from_numbers")
        return wanted
    numbers = list(session.scalars(select(PhoneNumber.e164).where(PhoneNumber.agency_id == agency_id,
                                                                  PhoneNumber.agent_id == agent_id)
                                   .order_by(PhoneNumber.created_at, PhoneNumber.id)))
    if not numbers:
        raise InvalidInput("no phone number is assigned to this agent; pass from_numbers", field="from_numbers")
    return numbers


def get_campaign(session: Session, agency_id: uuid.UUID, campaign_id: uuid.UUID) -> Campaign:
    campaign = session.scalar(select(Campaign).where(Campaign.id == campaign_id, Campaign.agency_id == agency_id))
    if campaign is None:
        raise NotFound("campaign not found")
    return campaign


def list_campaigns(session: Session, agency_id: uuid.UUID) -> list[Campaign]:
    return list(session.scalars(select(Campaign).where(Campaign.agency_id == agency_id)
                                .order_by(Campaign.created_at.desc(), Campaign.id)))


def add_contacts(session: Session, campaign: Campaign, *, csv_text: str | None = None,
                 items: Any = None) -> dict[str, Any]:
    """Parse, drop do-not-call numbers, insert (numbers already in the campaign are
    duplicates). Returns the per-line report; nothing is stored if the input as a whole
    was refused."""
    if campaign.status == "cancelled":
        raise Conflict("campaign is cancelled; contacts can no longer be added")
    existing = session.scalar(select(func.count()).select_from(CampaignContact)
                              .where(CampaignContact.campaign_id == campaign.id)) or 0
    limit = max(0, MAX_CONTACTS - existing)
    if csv_text is not None:
        result: ImportResult = parse_contacts_csv(csv_text, max_rows=max(limit, 1))
    else:
        result = parse_contacts_json(items, max_rows=max(limit, 1))
    dnc = listed_among(session, campaign.agency_id, [c.phone for c in result.contacts])
    added = 0
    already: list[str] = []
    suppressed: list[tuple[int | None, str]] = [(line, phone) for line, phone in result.suppressed]
    now = utcnow()
    for contact in result.contacts:
        if contact.phone in dnc:
            suppressed.append((None, contact.phone))
            continue
        if insert_if_absent(session, CampaignContact,
                            {"id": uuid.uuid4(), "campaign_id": campaign.id, "agency_id": campaign.agency_id,
                             "phone": contact.phone, "timezone": contact.timezone, "name": contact.name,
                             "template_context": dict(contact.template_context), "state": CONTACT_QUEUED,
                             "attempts": 0, "next_attempt_at": now, "created_at": now, "updated_at": now},
                            ["campaign_id", "phone"]):
            added += 1
        else:
            already.append(contact.phone)
    if campaign.status == "completed":
        campaign.status = "running"
    return {
        "added": added,
        "rows": result.rows,
        "errors": [{"line": e.line, "field": e.field, "message": e.message} for e in result.errors],
        "duplicates": [{"line": line, "phone": phone} for line, phone in result.duplicates]
        + [{"line": None, "phone": phone} for phone in already],
        "suppressed": [{"line": line, "phone": phone} for line, phone in suppressed],
    }


def set_status(session: Session, agency_id: uuid.UUID, campaign_id: uuid.UUID, action: str) -> Campaign:
    campaign = get_campaign(session, agency_id, campaign_id)
    allowed = {"pause": ("running",), "resume": ("paused",), "cancel": ("running", "paused")}[action]
    if campaign.status not in allowed:
        raise Conflict(f"cannot {action} a {campaign.status} campaign")
    if action == "pause":
        campaign.status = "paused"
    elif action == "resume":
        campaign.status, campaign.paused_reason, campaign.backoff_until = "running", None, None
    else:
        campaign.status = "cancelled"
        campaign.completed_at = utcnow()
        # Queued contacts are never dialled; calls already live run to their end.
        session.execute(update(CampaignContact).where(CampaignContact.campaign_id == campaign.id,
                                                      CampaignContact.state == CONTACT_QUEUED)
                        .values(state=CONTACT_CANCELLED).execution_options(synchronize_session=False))
    session.flush()
    return campaign


def contact_counts(session: Session, campaign_id: uuid.UUID) -> dict[str, int]:
    counts = dict.fromkeys(CONTACT_STATES, 0)
    for state, count in session.execute(select(CampaignContact.state, func.count())
                                        .where(CampaignContact.campaign_id == campaign_id)
                                        .group_by(CampaignContact.state)):
        counts[state] = count
    return counts


def answered_by_counts(session: Session, campaign_id: uuid.UUID) -> dict[str, int]:
    """Attempts answered by humans, machines, faxes or unknown, and messages left on machines."""
    counts = dict.fromkeys(ANSWERED_BY, 0)
    for answered_by, count in session.execute(select(DialAttempt.answered_by, func.count())
                                              .where(DialAttempt.campaign_id == campaign_id,
                                                     DialAttempt.answered_by.is_not(None))
                                              .group_by(DialAttempt.answered_by)):
        counts[str(answered_by)] = count
    counts["messages_left"] = session.scalar(select(func.count()).select_from(DialAttempt).where(
        DialAttempt.campaign_id == campaign_id, DialAttempt.outcome == amd.VOICEMAIL_LEFT)) or 0
    return counts


def progress(session: Session, campaign: Campaign) -> dict[str, Any]:
    """Counts per contact state, attempts, and an estimated finish time: remaining
    contacts at the rate observed over the last 5 minutes (over the time since the first
    dial in them, so a campaign a few seconds old is not judged by 5 minutes), else the
    configured rate. It ignores future retries and calling-window pauses."""
    counts = contact_counts(session, campaign.id)
    attempts = dict(session.execute(select(DialAttempt.state, func.count())
                                    .where(DialAttempt.campaign_id == campaign.id)
                                    .group_by(DialAttempt.state)).all())
    now = utcnow()
    recent, first_recent = session.execute(
        select(func.count(), func.min(DialAttempt.dial_started_at)).select_from(DialAttempt).where(
            DialAttempt.campaign_id == campaign.id, DialAttempt.dial_started_at >= now - timedelta(minutes=5))).one()
    remaining = counts[CONTACT_QUEUED] + counts[CONTACT_DIALING]
    estimated = None
    if campaign.status in ("running", "paused") and remaining:
        if recent:
            # Every counted attempt has a dial_started_at (>= the cutoff), so their minimum is set.
            assert first_recent is not None
            if first_recent.tzinfo is None:  # SQLite returns naive UTC
                first_recent = first_recent.replace(tzinfo=now.tzinfo)
            rate = recent / max(1.0, (now - first_recent).total_seconds())
        else:
            rate = float(campaign.calls_per_second)
        start = max(now, campaign.start_at)
        estimated = start + timedelta(seconds=math.ceil(remaining / max(rate, 1e-6)))
    elif campaign.status in ("running",) and not remaining:
        estimated = now
    return {"contacts": counts, "contacts_total": sum(counts.values()),
            "attempts": sum(attempts.values()), "attempts_by_state": attempts,
            "answered_by": answered_by_counts(session, campaign.id),
            "estimated_finish_at": estimated if campaign.status != "completed" else campaign.completed_at}


def list_contacts(session: Session, campaign: Campaign, *, state: str | None, limit: int,
                  offset: int) -> list[CampaignContact]:
    query = select(CampaignContact).where(CampaignContact.campaign_id == campaign.id,
                                          CampaignContact.agency_id == campaign.agency_id)
    if state:
        query = query.where(CampaignContact.state == state)
    return list(session.scalars(query.order_by(CampaignContact.created_at, CampaignContact.id)
                                .limit(limit).offset(offset)))
