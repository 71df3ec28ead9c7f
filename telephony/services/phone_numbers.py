"""Phone numbers an agency owns at a carrier, and the agent answering each."""
from __future__ import annotations

import uuid

import phonenumbers
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from ..errors import Conflict, DomainError, InvalidInput, NotFound
from ..models import Carrier, PhoneNumber
from .agents import get_agent

# The one answer for a number this agency cannot register: a number outside the
# numbering plan (no carrier can have sold it) and a number another agency holds get
# the same status, code and message, so the answer never confirms that a number is
# registered elsewhere. Only the agency's own duplicate is named as such.
NOT_REGISTRABLE_MESSAGE = ("this number cannot be registered for this agency; check that it is an "
                           "assigned number of your carrier account")


class NotRegistrable(DomainError):
    status = 422
    code = "number_not_registrable"


def _not_registrable() -> NotRegistrable:
    return NotRegistrable(NOT_REGISTRABLE_MESSAGE, field="e164")


def normalize_e164(value: str, *, field: str = "number") -> str:
    """'+1 (415) 555-0100' -> '+14155550100'. Requires the leading + and country code."""
    raw = value.strip() if isinstance(value, str) else ""
    if not raw.startswith("+"):
        raise InvalidInput(f"{field} must be in E.164 format, e.g. +14155550100", field=field)
    try:
        parsed = phonenumbers.parse(raw, None)
    except phonenumbers.NumberParseException:
        raise InvalidInput(f"{field} is not a phone number in E.164 format", field=field) from None
    if not phonenumbers.is_possible_number(parsed):
        raise InvalidInput(f"{field} is not a possible phone number", field=field)
    return phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.E164)


def list_numbers(session: Session, agency_id: uuid.UUID) -> list[PhoneNumber]:
    return list(session.scalars(select(PhoneNumber).where(PhoneNumber.agency_id == agency_id)
                                .order_by(PhoneNumber.created_at, PhoneNumber.id)))


def get_number(session: Session, agency_id: uuid.UUID, number_id: uuid.UUID) -> PhoneNumber:
    number = session.scalar(select(PhoneNumber).where(PhoneNumber.id == number_id,
                                                      PhoneNumber.agency_id == agency_id))
    if number is None:
        raise NotFound("Phone number not found", field="number_id")
    return number


def check_new_number(session: Session, agency_id: uuid.UUID, *, e164: str, agent_id: uuid.UUID | None = None,
                     fallback_number: str | None = None) -> tuple[str, str | None]:
    """(number, fallback) in E.164 when the agency may register the number, else the
    error it gets. Checked before anything is asked of the carrier."""
    e164 = normalize_e164(e164, field="e164")
    # Both refusals cost the same query, so neither is quicker to tell apart.
    holder = session.scalar(select(PhoneNumber.agency_id).where(PhoneNumber.e164 == e164))
    if holder == agency_id:
        raise Conflict("your agency already has this phone number", field="e164")
    if holder is not None or not phonenumbers.is_valid_number(phonenumbers.parse(e164, None)):
        raise _not_registrable()
    if agent_id is not None:
        get_agent(session, agency_id, agent_id)
    if fallback_number is not None:
        fallback_number = normalize_e164(fallback_number, field="fallback_number")
        if fallback_number == e164:
            raise InvalidInput("fallback_number must differ from the number itself", field="fallback_number")
    return e164, fallback_number


def add_number(session: Session, agency_id: uuid.UUID, *, e164: str, carrier: Carrier | str,
               agent_id: uuid.UUID | None = None, fallback_number: str | None = None,
               recording_enabled: bool | None = None) -> PhoneNumber:
    """Store the number as given, with no question to the carrier (services/number_setup.py
    adds the carrier's ownership check and webhook set-up in front of this)."""
    e164, fallback_number = check_new_number(session, agency_id, e164=e164, agent_id=agent_id,
                                             fallback_number=fallback_number)
    number = PhoneNumber(agency_id=agency_id, e164=e164, carrier=Carrier(carrier), agent_id=agent_id,
                         fallback_number=fallback_number, recording_enabled=recording_enabled)
    session.add(number)
    try:
        with session.begin_nested():
            session.flush()
    except IntegrityError:
        # Registered meanwhile (a concurrent request): the same answers as above.
        if session.scalar(select(PhoneNumber.agency_id).where(PhoneNumber.e164 == e164)) == agency_id:
            raise Conflict("your agency already has this phone number", field="e164") from None
        raise _not_registrable() from None
    return number


def update_number(session: Session, agency_id: uuid.UUID, number_id: uuid.UUID, **changes) -> PhoneNumber:
    number = get_number(session, agency_id, number_id)
    if "agent_id" in changes and changes["agent_id"] is not None:
        get_agent(session, agency_id, changes["agent_id"])
    if changes.get("fallback_number") is not None:
        changes["fallback_number"] = normalize_e164(changes["fallback_number"], field="fallback_number")
        if changes["fallback_number"] == number.e164:
            raise InvalidInput("fallback_number must differ from the number itself", field="fallback_number")
    if "carrier" in changes:
        changes["carrier"] = Carrier(changes["carrier"])
    for name, value in changes.items():
        setattr(number, name, value)
    session.flush()
    return number


def delete_number(session: Session, agency_id: uuid.UUID, number_id: uuid.UUID) -> None:
    session.delete(get_number(session, agency_id, number_id))
    session.flush()
