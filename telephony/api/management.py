"""Agency management API (/api/v1): agents, phone numbers, credentials, API keys.

Admin only (a dashboard user with the admin role, or an API key with the
`admin` scope). Every call is scoped to the caller's agency; another agency's
resource is a 404, the same as a missing one.
"""
from __future__ import annotations

import functools
import uuid
from datetime import datetime
from typing import TYPE_CHECKING, Literal

from flask import Blueprint, jsonify
from flask.blueprints import BlueprintSetupState
from pydantic import Field, create_model

from ..auth import ALL_SCOPES, current_principal, require_auth
from ..carriers.registry import CARRIERS
from ..credentials import get_credentials
from ..db import get_session
from ..services import agents as agent_service
from ..services import api_keys as api_key_service
from ..services import capacity as capacity_service
from ..services import number_setup
from ..services import phone_numbers as number_service
from .schema import RequestModel, ResponseModel, document, parse_body, render
from .transfers import TransferTargetIn, TransferTargetOut

bp = Blueprint("management", __name__, url_prefix="/api/v1")

UltravoxId = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")
# What a phone number's carrier column can hold (tests/test_carrier_registry.py checks the
# models' Carrier enum agrees).
if TYPE_CHECKING:  # pragma: no cover
    CarrierName = str
else:
    CarrierName = Literal[tuple(carrier.name for carrier in CARRIERS)]
Scope = Literal["calls:read", "calls:write", "campaigns:read", "campaigns:write", "admin"]
assert set(Scope.__args__) == set(ALL_SCOPES)  # type: ignore[attr-defined]


# -- schemas ---------------------------------------------------------------------

class AgentIn(RequestModel):
    name: str = Field(min_length=1, max_length=200)
    ultravox_agent_id: str = UltravoxId
    recording_enabled: bool = False
    transfer_targets: list[TransferTargetIn] = Field(default_factory=list, max_length=20)


class AgentPatch(RequestModel):
    name: str | None = Field(default=None, min_length=1, max_length=200)
    ultravox_agent_id: str | None = Field(default=None, min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")
    recording_enabled: bool | None = None
    transfer_targets: list[TransferTargetIn] | None = Field(default=None, max_length=20)  # replaces; [] removes


class AgentOut(ResponseModel):
    id: uuid.UUID
    name: str
    ultravox_agent_id: str
    recording_enabled: bool
    created_at: datetime
    transfer_targets: list[TransferTargetOut] = []


class AgentList(ResponseModel):
    agents: list[AgentOut]


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


Secret = Field(default=None, min_length=1, max_length=4096)


class SecretStatusOut(ResponseModel):
    set: bool
    last4: str | None = Field(description="Last 4 characters, empty for short secrets, null when not set.")


# The credential models follow the app's credential store, whose providers are Ultravox and
# the carriers of the app's registry: e.g. TwilioCredentialsIn {account_sid, auth_token},
# and CredentialsOut with one member per provider.
@functools.lru_cache(maxsize=None)
def credentials_in_model(provider: str, fields: tuple[str, ...]) -> type[RequestModel]:
    """PUT /credentials/<provider>: each field optional (omitted: kept; null: deleted)."""
    return create_model(f"{provider.capitalize()}CredentialsIn", __base__=RequestModel,
                        **{name: (str | None, Secret) for name in fields})  # type: ignore[call-overload]


@functools.lru_cache(maxsize=None)
def credentials_out_model(providers: tuple[str, ...]) -> type[ResponseModel]:
    return create_model("CredentialsOut", __base__=ResponseModel,
                        **{name: (dict[str, SecretStatusOut], ...) for name in providers})  # type: ignore[call-overload]


class ApiKeyIn(RequestModel):
    name: str = Field(min_length=1, max_length=200)
    scopes: list[Scope] = Field(min_length=1, max_length=len(ALL_SCOPES))


class ApiKeyOut(ResponseModel):
    id: uuid.UUID
    name: str
    prefix: str
    scopes: list[str]
    created_at: datetime
    last_used_at: datetime | None
    revoked_at: datetime | None


class ApiKeyCreated(ApiKeyOut):
    key: str = Field(description="The key itself. Shown only in this response; store it now.")


class ApiKeyList(ResponseModel):
    api_keys: list[ApiKeyOut]


class MeOut(ResponseModel):
    agency_id: uuid.UUID
    kind: Literal["user", "api_key"]
    scopes: list[str]


NOT_FOUND = (None, "Not found, or another agency's.")


# -- who am I ----------------------------------------------------------------------

@bp.get("/me")
@require_auth()
@document(summary="The caller's agency and permissions", tags=["management"], responses={200: (MeOut, "Caller")})
def me():
    principal = current_principal()
    return render(MeOut, {"agency_id": principal.agency_id, "kind": principal.kind,
                         "scopes": sorted(principal.scopes)})


# -- agents --------------------------------------------------------------------------

@bp.get("/agents")
@require_auth(scope="admin")
@document(summary="List agent mappings", tags=["agents"], responses={200: (AgentList, "Agents")})
def list_agents():
    agents = agent_service.list_agents(get_session(), current_principal().agency_id)
    return render(AgentList, {"agents": agents})


@bp.post("/agents")
@require_auth(scope="admin")
@document(summary="Map an Ultravox agent", tags=["agents"], request_model=AgentIn,
          responses={201: (AgentOut, "Created"), 409: (None, "Already mapped")})
def create_agent():
    body = parse_body(AgentIn)
    session = get_session()
    agent = agent_service.create_agent(session, current_principal().agency_id, **body.model_dump())
    session.commit()
    return render(AgentOut, agent, 201)


@bp.get("/agents/<uuid:agent_id>")
@require_auth(scope="admin")
@document(summary="Get an agent mapping", tags=["agents"], responses={200: (AgentOut, "Agent"), 404: NOT_FOUND})
def get_agent(agent_id: uuid.UUID):
    return render(AgentOut, agent_service.get_agent(get_session(), current_principal().agency_id, agent_id))


@bp.patch("/agents/<uuid:agent_id>")
@require_auth(scope="admin")
@document(summary="Change an agent mapping", tags=["agents"], request_model=AgentPatch,
          responses={200: (AgentOut, "Updated"), 404: NOT_FOUND})
def update_agent(agent_id: uuid.UUID):
    body = parse_body(AgentPatch)
    session = get_session()
    agent = agent_service.update_agent(session, current_principal().agency_id, agent_id,
                                       **body.model_dump(exclude_unset=True, exclude_none=True))
    session.commit()
    return render(AgentOut, agent)


@bp.delete("/agents/<uuid:agent_id>")
@require_auth(scope="admin")
@document(summary="Delete an agent mapping", tags=["agents"], responses={204: (None, "Deleted"), 404: NOT_FOUND})
def delete_agent(agent_id: uuid.UUID):
    session = get_session()
    agent_service.delete_agent(session, current_principal().agency_id, agent_id)
    session.commit()
    return "", 204


# -- phone numbers -------------------------------------------------------------------

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


# -- credentials (write-only secrets) ---------------------------------------------------

def _credentials_status_view(out: type[ResponseModel]):
    @require_auth(scope="admin")
    @document(summary="Which credentials are set (never their values)", tags=["credentials"],
              responses={200: (out, "Per provider and field: set, last 4 characters")})
    def get_credentials_status():
        return render(out, get_credentials().describe(get_session(), current_principal().agency_id))

    return get_credentials_status


def _credentials_view(provider: str, model: type[RequestModel], out: type[ResponseModel]):
    @require_auth(scope="admin")
    @document(summary=f"Set {provider} credentials (write-only; null deletes a field; omitted fields are kept)",
              tags=["credentials"], request_model=model,
              responses={200: (out, "Stored; the response shows only set/last 4")})
    def put_credentials():
        body = parse_body(model)
        session = get_session()
        agency_id = current_principal().agency_id
        get_credentials().set(session, agency_id, provider, body.model_dump(exclude_unset=True))
        session.commit()
        return render(out, get_credentials().describe(session, agency_id))

    return put_credentials


def _credentials_delete_view(provider: str):
    @require_auth(scope="admin")
    @document(summary=f"Delete all {provider} credentials", tags=["credentials"],
              responses={204: (None, "Deleted")})
    def delete_credentials():
        session = get_session()
        get_credentials().delete_provider(session, current_principal().agency_id, provider)
        session.commit()
        return "", 204

    return delete_credentials


@bp.record
def _credential_routes(state: BlueprintSetupState) -> None:
    """GET /credentials, PUT and DELETE /credentials/<provider>: one per provider of the
    app's credential store (create_app builds it before registering this blueprint)."""
    providers = state.app.extensions["telephony.credentials"].providers
    out = credentials_out_model(tuple(providers))
    state.add_url_rule("/credentials", "get_credentials_status", _credentials_status_view(out), methods=["GET"])
    for provider, fields in providers.items():
        state.add_url_rule(f"/credentials/{provider}", f"put_{provider}_credentials",
                           _credentials_view(provider, credentials_in_model(provider, tuple(fields)), out),
                           methods=["PUT"])
        state.add_url_rule(f"/credentials/{provider}", f"delete_{provider}_credentials",
                           _credentials_delete_view(provider), methods=["DELETE"])


# -- API keys ---------------------------------------------------------------------------

@bp.get("/api-keys")
@require_auth(scope="admin")
@document(summary="List API keys (never the keys themselves)", tags=["api keys"],
          responses={200: (ApiKeyList, "Keys")})
def list_api_keys():
    keys = api_key_service.list_api_keys(get_session(), current_principal().agency_id)
    return render(ApiKeyList, {"api_keys": keys})


@bp.post("/api-keys")
@require_auth(scope="admin")
@document(summary="Create an API key (the key is shown once)", tags=["api keys"], request_model=ApiKeyIn,
          responses={201: (ApiKeyCreated, "Created")})
def create_api_key():
    body = parse_body(ApiKeyIn)
    session = get_session()
    row, plaintext = api_key_service.create_api_key(session, current_principal().agency_id, name=body.name,
                                                    scopes=body.scopes)
    session.commit()
    out = ApiKeyOut.model_validate(row).model_dump(mode="json")
    return jsonify({**out, "key": plaintext}), 201


@bp.delete("/api-keys/<uuid:key_id>")
@require_auth(scope="admin")
@document(summary="Revoke an API key", tags=["api keys"], responses={200: (ApiKeyOut, "Revoked"), 404: NOT_FOUND})
def revoke_api_key(key_id: uuid.UUID):
    session = get_session()
    row = api_key_service.revoke_api_key(session, current_principal().agency_id, key_id)
    session.commit()
    return render(ApiKeyOut, row)


# -- capacity --------------------------------------------------------------------------

class CapacityPatch(RequestModel):
    max_concurrent_calls: int | None = Field(
        default=None, ge=1, le=capacity_service.MAX_CONCURRENT_CALLS_LIMIT,
        description="The concurrency limit of the agency's Ultravox plan (live calls of every kind at once); "
                    "null: unlimited.")
    reserved_inbound: int | None = Field(
        default=None, ge=0, le=capacity_service.MAX_CONCURRENT_CALLS_LIMIT,
        description="Slots campaigns may never take, kept for inbound callers (at most max_concurrent_calls).")
    inbound_wait_seconds: int | None = Field(
        default=None, ge=0, le=capacity_service.MAX_INBOUND_WAIT_SECONDS,
        description="How long an inbound caller who finds every slot taken is kept on hold before the "
                    "number's fallback; 0: no hold.")


class CapacityOut(ResponseModel):
    max_concurrent_calls: int | None
    reserved_inbound: int
    inbound_wait_seconds: int
    live_calls: int = Field(description="The agency's calls holding an Ultravox call now (what the limit counts).")


def _capacity_out(settings: capacity_service.CapacitySettings, live: int) -> dict:
    return {"max_concurrent_calls": settings.max_concurrent_calls, "reserved_inbound": settings.reserved_inbound,
            "inbound_wait_seconds": settings.inbound_wait_seconds, "live_calls": live}


@bp.get("/capacity")
@require_auth(scope="admin")
@document(summary="The agency's call capacity: Ultravox concurrency limit, slots reserved for inbound, "
                  "inbound hold time, live calls", tags=["capacity"], responses={200: (CapacityOut, "Capacity")})
def get_capacity():
    session = get_session()
    agency_id = current_principal().agency_id
    settings = capacity_service.get_capacity(session, agency_id)
    return render(CapacityOut, _capacity_out(settings, capacity_service.live_calls(session, agency_id)))


@bp.patch("/capacity")
@require_auth(scope="admin")
@document(summary="Change the agency's call capacity (omitted fields are kept; max_concurrent_calls null: "
                  "unlimited)", tags=["capacity"], request_model=CapacityPatch,
          responses={200: (CapacityOut, "Updated"),
                     400: (None, "reserved_inbound above max_concurrent_calls, or without one")})
def update_capacity():
    body = parse_body(CapacityPatch)
    session = get_session()
    agency_id = current_principal().agency_id
    settings = capacity_service.set_capacity(session, agency_id, **body.model_dump(exclude_unset=True))
    session.commit()
    return render(CapacityOut, _capacity_out(settings, capacity_service.live_calls(session, agency_id)))
