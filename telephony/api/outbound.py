"""Outbound calls.

  POST /api/v1/calls      place one call (scope calls:write; Idempotency-Key supported)

Carrier callbacks for outbound calls (signed by the carrier like every webhook; the URL
names our call id, so a callback can be matched even if our process died before it
stored the carrier's call id; this is how a crashed dial is reconciled):
  POST /webhooks/outbound/twilio/status/<call_id>         Twilio status_callback
  POST /webhooks/outbound/telnyx/call-control/<call_id>   Telnyx dial webhook_url
  POST /webhooks/outbound/plivo/answer/<call_id>          Plivo answer_url (stream XML)
  POST /webhooks/outbound/plivo/hangup/<call_id>          Plivo hangup_url
"""
from __future__ import annotations

import logging
import uuid
from typing import Any

from flask import Blueprint, Response, jsonify, request
from pydantic import Field
from sqlalchemy import select, update

from ..auth import current_principal, require_auth
from ..carriers.base import WebhookRequest
from ..carriers.registry import TELNYX_CALL_CONTROL, xml_carrier
from ..context import get_config
from ..db import get_session
from ..errors import ApiError, DomainError
from ..models import Call, CallSource
from ..services import call_status
from ..services import dispatch
from ..services import idempotency_keys
from ..services import outbound as outbound_service
from ..services.call_status import SignatureRejected
from ..services.idempotency import first_time
from ..ultravox import UltravoxError, UltravoxRateLimited
from .schema import RequestModel, ResponseModel, document, parse_body

log = logging.getLogger(__name__)

bp = Blueprint("outbound", __name__)


class OutboundCallIn(RequestModel):
    agent_id: str = Field(min_length=1, max_length=64, description="Ultravox agent id (or our agent mapping id)")
    to: str = Field(min_length=2, max_length=32, description="Callee, E.164")
    from_: str | None = Field(default=None, alias="from", min_length=2, max_length=32,
                              description="One of the agency's numbers (decides the carrier); "
                                          "default: the number assigned to the agent")
    template_context: dict[str, Any] | None = None
    metadata: dict[str, str] | None = Field(default=None, max_length=20)


class OutboundCallOut(ResponseModel):
    call_id: uuid.UUID
    status: str
    carrier_call_id: str | None
    ultravox_call_id: str


IDEMPOTENCY_PARAMETER = {"name": "Idempotency-Key", "in": "header", "required": False,
                         "schema": {"type": "string", "maxLength": 255},
                         "description": "Same key + same body within 24 h returns the first result without "
                                        "a second call; a different body is 422; while the first is in flight, 409."}


def _error_body(exc: DomainError) -> dict[str, Any]:
    body: dict[str, Any] = {"error": exc.message, "code": exc.code}
    if exc.field:
        body["fields"] = {exc.field: exc.message}
    return body


@bp.post("/api/v1/calls")
@require_auth(scope="calls:write")
@document(summary="Place an outbound call (the callee speaks first)", tags=["calls"], request_model=OutboundCallIn,
          parameters=[IDEMPOTENCY_PARAMETER],
          responses={201: (OutboundCallOut, "Dialling"), 400: (None, "Invalid input"),
                     409: (None, "Same Idempotency-Key still in flight"),
                     422: (None, "Carrier refused the call, number on the do-not-call list, or "
                                 "Idempotency-Key reused with another body"),
                     429: (None, "Ultravox or carrier rate limit (Retry-After)"),
                     502: (None, "Carrier error or unreachable (the call is recorded as failed)")})
def create_outbound_call():
    body = parse_body(OutboundCallIn)
    session = get_session()
    agency_id = current_principal().agency_id
    key = request.headers.get("Idempotency-Key")
    if key is not None:
        replay = idempotency_keys.begin(session, agency_id, key.strip(),
                                        idempotency_keys.fingerprint(body.model_dump(mode="json", by_alias=True)))
        if replay is not None:
            response = jsonify(replay.body)
            response.status_code = replay.status
            response.headers["Idempotent-Replayed"] = "true"
            return response
    try:
        result = outbound_service.make_call(session, agency_id, agent_id=body.agent_id, to=body.to,
                                            from_number=body.from_, template_context=body.template_context,
                                            metadata=body.metadata)
    except outbound_service.CarrierError as exc:
        # A call row exists and the carrier was asked: this outcome is the key's answer.
        if key is not None:
            idempotency_keys.finish(session, agency_id, key.strip(), exc.status, _error_body(exc))
        raise
    except UltravoxRateLimited as exc:
        if key is not None:
            idempotency_keys.release(session, agency_id, key.strip())
        retry = str(int(exc.retry_after)) if exc.retry_after else "5"
        raise ApiError(429, "Ultravox is at its rate or concurrency limit; retry later", code="upstream_rate_limited",
                       headers={"Retry-After": retry}) from None
    except UltravoxError as exc:
        if key is not None:
            idempotency_keys.release(session, agency_id, key.strip())
        raise ApiError(502, f"Ultravox refused the call: {exc.detail}", code="ultravox_error") from None
    except BaseException:
        if key is not None:
            idempotency_keys.release(session, agency_id, key.strip())
        raise
    out = OutboundCallOut.model_validate(result.__dict__).model_dump(mode="json")
    if key is not None:
        idempotency_keys.finish(session, agency_id, key.strip(), 201, out)
    return jsonify(out), 201


# -- carrier callbacks for outbound calls ----------------------------------------------------


def _webhook_request() -> WebhookRequest:
    query = request.query_string.decode("latin-1")
    public_url = f"{get_config().public_base_url}{request.script_root}{request.path}" + (f"?{query}" if query else "")
    return WebhookRequest(method=request.method, public_url=public_url, headers=request.headers,
                          form=request.form, body=request.get_data(cache=True))


def _outbound_call(session, carrier: str, call_id: uuid.UUID) -> Call | None:
    return session.scalar(select(Call).where(Call.id == call_id, Call.source == CallSource(carrier)))


def _apply(carrier: str, call_id: uuid.UUID, adapter, *, event=None, bind_id: str | None = None) -> None:
    """Verify the signature with the owning agency's credentials, bind the carrier's call
    id if we never stored it, apply the status, settle the campaign attempt."""
    session = get_session()
    call = _outbound_call(session, carrier, call_id)
    if call is None:
        session.rollback()
        return
    request_ = _webhook_request()
    call_status.verified_credentials(session, adapter, request_, call.agency_id)
    event = event if event is not None else adapter.parse_status(request_)
    carrier_call_id = bind_id or (event.carrier_call_id if event is not None else None)
    call_status.end_reads_before_writing(session)
    if carrier_call_id and carrier == "plivo" and call.carrier_call_id != carrier_call_id:
        # Plivo answers calls.create with a request_uuid; its callbacks carry the CallUUID.
        session.execute(update(Call).where(Call.id == call_id).values(carrier_call_id=carrier_call_id)
                        .execution_options(synchronize_session=False))
    elif carrier_call_id:
        outbound_service.record_carrier_call(session, call_id, carrier_call_id)
    if event is not None:
        if event.event_id and not first_time(session, carrier, event.event_id, call.agency_id):
            session.rollback()
            return
        call_status.apply_event(session, call_id, event)
    session.commit()
    _bind_attempt(session, call_id, carrier_call_id)
    if event is not None:
        dispatch.settle_call(session, call_id)


def _bind_attempt(session, call_id: uuid.UUID, carrier_call_id: str | None) -> None:
    """A callback proves the carrier placed the call: an attempt stuck in "dialing" or
    given up as "unknown" (its worker died mid-dial) becomes "placed"."""
    from ..models import CampaignContact, DialAttempt
    if not carrier_call_id:
        return
    session.rollback()
    attempt = session.scalar(select(DialAttempt).where(DialAttempt.call_id == call_id))
    if attempt is None:
        session.rollback()
        return
    if attempt.state in ("dialing", "unknown"):
        if attempt.state == "unknown":
            session.execute(update(CampaignContact).where(CampaignContact.id == attempt.contact_id,
                                                          CampaignContact.state == "unknown")
                            .values(state="dialing").execution_options(synchronize_session=False))
        attempt.state, attempt.carrier_call_id = "placed", carrier_call_id
    session.commit()


@bp.post("/webhooks/outbound/twilio/status/<uuid:call_id>")
def twilio_outbound_status(call_id: uuid.UUID):
    _apply("twilio", call_id, xml_carrier("twilio"))
    return "", 204


@bp.post("/webhooks/outbound/plivo/hangup/<uuid:call_id>")
def plivo_outbound_hangup(call_id: uuid.UUID):
    _apply("plivo", call_id, xml_carrier("plivo"))
    return "", 204


@bp.post("/webhooks/outbound/telnyx/call-control/<uuid:call_id>")
def telnyx_outbound_event(call_id: uuid.UUID):
    adapter = TELNYX_CALL_CONTROL
    parsed = adapter.parse_event(_webhook_request())
    _apply("telnyx", call_id, adapter, bind_id=parsed.call_control_id or None)
    return jsonify({}), 200


@bp.post("/webhooks/outbound/plivo/answer/<uuid:call_id>")
def plivo_outbound_answer(call_id: uuid.UUID):
    """Plivo fetches this when the callee answers, and may fetch it again: the answer is
    always the stream XML for the Ultravox call created before dialling (never a new call)."""
    adapter = xml_carrier("plivo")
    session = get_session()
    call = _outbound_call(session, "plivo", call_id)
    if call is None or not call.join_url:
        session.rollback()
        return Response(adapter.say_and_hangup("Sorry, this call cannot be connected."), mimetype="text/xml")
    request_ = _webhook_request()
    call_status.verified_credentials(session, adapter, request_, call.agency_id)
    join_url = call.join_url
    call_uuid = request_.field("CallUUID")
    session.rollback()
    if call_uuid:
        session.execute(update(Call).where(Call.id == call_id).values(carrier_call_id=call_uuid)
                        .execution_options(synchronize_session=False))
        session.commit()
        _bind_attempt(session, call_id, call_uuid)
    return Response(adapter.stream_response(join_url), mimetype="text/xml")


__all__ = ["bp", "SignatureRejected"]
