"""Phone numbers: registered (and set up at the carrier: ownership checked, webhooks pointed
here), checked, changed, removed."""
from __future__ import annotations

import uuid
from datetime import datetime

from pydantic import Field

from ...auth import current_principal, require_auth
from ...db import get_session
from ...services import number_setup
from ...services import phone_numbers as number_service
from ..schema import RequestModel, ResponseModel, document, parse_body, render
from .blueprint import NOT_FOUND, CarrierName, bp


class PhoneNumberIn(RequestModel):
    e164: str = Field(min_length=2, max_length=32, description="E.164, e.g. +14155550100")
    carrier: CarrierName
    agent_id: uuid.UUID | None = None
    fallback_number: str | None = Field(default=None, min_length=2, max_length=32)
    recording_enabled: bool | None = None
    configure_carrier: bool = Field(
        default=True,
        description="Check with the carrier that the agency's carrier account holds the number, and point its "
                    "voice and status webhooks at this service. false: store it only, for a number set up by hand "
                    "(then nothing proves the agency owns it, and its webhooks are yours to keep pointed here).")


class PhoneNumberPatch(RequestModel):
    carrier: CarrierName | None = None
    agent_id: uuid.UUID | None = None
    fallback_number: str | None = Field(default=None, min_length=2, max_length=32)
    recording_enabled: bool | None = None


class PhoneNumberOut(ResponseModel):
    id: uuid.UUID
    e164: str
    carrier: CarrierName
    agent_id: uuid.UUID | None
    fallback_number: str | None
    recording_enabled: bool | None
    created_at: datetime


class PhoneNumberList(ResponseModel):
    phone_numbers: list[PhoneNumberOut]


class CarrierSetupOut(ResponseModel):
    carrier_number_id: str = Field(description="The carrier's id of the number (Twilio PN sid, Telnyx id, "
                                               "Plivo number)")
    webhooks: dict[str, str] = Field(description="Webhook kind (inbound, status, call-control) -> the URL set")


class PhoneNumberCreated(PhoneNumberOut):
    carrier_setup: CarrierSetupOut | None = Field(description="What was set up at the carrier; null with "
                                                              "configure_carrier false")


class NumberCheckOut(ResponseModel):
    id: uuid.UUID
    e164: str
    carrier: CarrierName
    in_account: bool = Field(description="The agency's carrier account holds the number")
    points_here: bool = Field(description="Its webhooks reach this service")
    problem: str | None
    expected: dict[str, str] = Field(description="Webhook kind -> this service's URL")
    current: dict[str, str | None] = Field(description="Webhook kind -> where the carrier sends it now")


@bp.get("/phone-numbers")
@require_auth(scope="admin")
@document(summary="List phone numbers", tags=["phone numbers"], responses={200: (PhoneNumberList, "Numbers")})
def list_numbers():
    numbers = number_service.list_numbers(get_session(), current_principal().agency_id)
    return render(PhoneNumberList, {"phone_numbers": numbers})


@bp.post("/phone-numbers")
@require_auth(scope="admin")
@document(summary="Register a phone number", tags=["phone numbers"], request_model=PhoneNumberIn,
          responses={201: (PhoneNumberCreated, "Created (and set up at the carrier)"),
                     400: (None, "Invalid input, or the carrier's credentials are not stored"),
                     404: (None, "Unknown agent"),
                     409: (None, "This agency already has the number"),
                     422: (None, "Number cannot be registered for this agency: not an assigned number, "
                                 "or not available (the same answer either way; code number_not_registrable); "
                                 "not in the agency's carrier account (number_not_in_carrier_account); the "
                                 "carrier refused the credentials or the set-up"),
                     429: (None, "The carrier is rate limiting the account"),
                     502: (None, "The carrier did not answer; nothing was stored")})
def create_number():
    body = parse_body(PhoneNumberIn)
    session = get_session()
    number, setup = number_setup.register_number(session, current_principal().agency_id, **body.model_dump())
    session.commit()
    out = PhoneNumberOut.model_validate(number).model_dump()
    return render(PhoneNumberCreated, {**out, "carrier_setup": number_setup.describe_setup(setup)}, 201)


@bp.get("/phone-numbers/<uuid:number_id>")
@require_auth(scope="admin")
@document(summary="Get a phone number", tags=["phone numbers"],
          responses={200: (PhoneNumberOut, "Number"), 404: NOT_FOUND})
def get_number(number_id: uuid.UUID):
    return render(PhoneNumberOut, number_service.get_number(get_session(), current_principal().agency_id, number_id))


@bp.get("/phone-numbers/<uuid:number_id>/check")
@require_auth(scope="admin")
@document(summary="Check with the carrier that the number is in the account and its webhooks point here",
          tags=["phone numbers"],
          responses={200: (NumberCheckOut, "The carrier's settings (points_here false: see problem)"),
                     400: (None, "The carrier's credentials are not stored"), 404: NOT_FOUND,
                     422: (None, "The carrier refused the stored credentials"),
                     429: (None, "The carrier is rate limiting the account"),
                     502: (None, "The carrier did not answer")})
def check_number(number_id: uuid.UUID):
    check = number_setup.check_number(get_session(), current_principal().agency_id, number_id)
    return render(NumberCheckOut, number_setup.describe_check(check))


@bp.patch("/phone-numbers/<uuid:number_id>")
@require_auth(scope="admin")
@document(summary="Change a phone number (agent, fallback, recording); null clears a field",
          tags=["phone numbers"], request_model=PhoneNumberPatch,
          responses={200: (PhoneNumberOut, "Updated"), 404: NOT_FOUND})
def update_number(number_id: uuid.UUID):
    body = parse_body(PhoneNumberPatch)
    changes = body.model_dump(exclude_unset=True)
    if changes.get("carrier", "") is None:
        changes.pop("carrier")
    session = get_session()
    number = number_service.update_number(session, current_principal().agency_id, number_id, **changes)
    session.commit()
    return render(PhoneNumberOut, number)


@bp.delete("/phone-numbers/<uuid:number_id>")
@require_auth(scope="admin")
@document(summary="Remove a phone number", tags=["phone numbers"],
          responses={204: (None, "Deleted"), 404: NOT_FOUND})
def delete_number(number_id: uuid.UUID):
    session = get_session()
    number_service.delete_number(session, current_principal().agency_id, number_id)
    session.commit()
    return "", 204
