"""Outbound calls.

  POST /api/v1/calls      place one call (scope calls:write; Idempotency-Key supported)

Carrier callbacks for outbound calls (signed by the carrier like every webhook; the URL
names our call id, so a callback can be matched even if our process died before it
stored the carrier's call id; this is how a crashed dial is reconciled):
  POST /webhooks/outbound/twilio/status/<call_id>         Twilio status_callback
  POST /webhooks/outbound/telnyx/call-control/<call_id>   Telnyx dial webhook_url
  POST /webhooks/outbound/plivo/answer/<call_id>          Plivo answer_url (stream XML)
  POST /webhooks/outbound/plivo/hangup/<call_id>          Plivo hangup_url
  POST /webhooks/outbound/twilio/amd/<call_id>            Twilio AsyncAmdStatusCallback
  POST /webhooks/outbound/plivo/amd/<call_id>             Plivo machine_detection_url
  POST /webhooks/outbound/plivo/voicemail/<call_id>       Plivo: the XML leaving a message on a machine
(Telnyx reports answering machines on its call-control webhook.)
"""
from __future__ import annotations

import logging
import uuid
from typing import Any, Literal

from flask import Blueprint, Response, jsonify, request
from pydantic import Field, HttpUrl

from ..answering_machine import POLICIES as MACHINE_POLICIES
from ..auth import current_principal, require_auth
from ..carriers.registry import get_carriers
from ..carriers.telnyx_call_control import MACHINE_GREETING_EVENTS, MACHINE_VERDICT_EVENTS, MESSAGE_ENDED_EVENTS
from ..db import get_session
from ..errors import ApiError
from ..services import answering_machine, idempotency_keys, outbound_callbacks
from ..services import outbound as outbound_service
from ..services.carrier_webhooks import SignatureRejected
from .carrier_webhook_docs import (
    BAD_SIGNATURE,
    DATABASE_UNAVAILABLE,
    EMPTY_JSON,
    XML_ANSWER,
    request_bodies,
    signature_headers,
)
from .errors import api_error
from .schema import Described, RequestModel, ResponseModel, document, parse_body
from .webhooks import webhook_request

log = logging.getLogger(__name__)

bp = Blueprint("outbound", __name__)


# What a call does if a machine answers (answering_machine.py); campaigns.py's policy too.
OnMachine = Literal["hangup", "leave_message", "continue"]
assert set(OnMachine.__args__) == set(MACHINE_POLICIES)  # type: ignore[attr-defined]


class MachineMessageIn(RequestModel):
    """Exactly one of text (spoken by the carrier) or audio_url (played)."""

    text: str | None = Field(default=None, min_length=1, max_length=1000, description="Spoken by the carrier")
    audio_url: HttpUrl | None = Field(default=None, description="An mp3 or wav the carrier plays")

    def as_dict(self) -> dict[str, str]:
        if (self.text is None) == (self.audio_url is None):
            raise ApiError(400, "message: give exactly one of text or audio_url", code="invalid_input",
                           fields={"message": "give exactly one of text or audio_url"})
        return {"text": self.text} if self.text is not None else {"audio_url": str(self.audio_url)}


class AnsweringMachineIn(RequestModel):
    on_machine: OnMachine = Field(
        default="continue", description="What the call does if a machine answers: hang up (outcome voicemail), "
                                        "leave `message` after the beep and hang up (voicemail_left), or let the "
                                        "agent talk. A fax is always hung up on.")
    message: MachineMessageIn | None = Field(default=None, description="Needed by leave_message")


class OutboundCallIn(RequestModel):
    agent_id: str = Field(min_length=1, max_length=64, description="Ultravox agent id (or our agent mapping id)")
    to: str = Field(min_length=2, max_length=32, description="Callee, E.164")
    from_: str | None = Field(default=None, alias="from", min_length=2, max_length=32,
                              description="One of the agency's numbers (decides the carrier); "
                                          "default: the number assigned to the agent")
    template_context: dict[str, Any] | None = None
    metadata: dict[str, str] | None = Field(default=None, max_length=20)
    answering_machine: AnsweringMachineIn | None = Field(
        default=None, description="Answering-machine policy (detection is always asynchronous: the callee hears "
                                  "the agent at once). Default: continue")


class OutboundCallOut(ResponseModel):
    call_id: uuid.UUID
    status: str
    carrier_call_id: str | None
    ultravox_call_id: str


IDEMPOTENCY_PARAMETER = {"name": "Idempotency-Key", "in": "header", "required": False,
                         "schema": {"type": "string", "maxLength": 255},
                         "description": "Same key + same body within 24 h returns the first result without "
                                        "a second call; a different body is 422; while the first is in flight, 409."}


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
        # A body without answering_machine keeps the fingerprint it had before the field existed.
        unset = {"answering_machine"} if body.answering_machine is None else None
        replay = idempotency_keys.begin(session, agency_id, key.strip(), idempotency_keys.fingerprint(
            body.model_dump(mode="json", by_alias=True, exclude=unset)))
        if replay is not None:
            response = jsonify(replay.body)
            response.status_code = replay.status
            response.headers["Idempotent-Replayed"] = "true"
            return response
    machine = body.answering_machine or AnsweringMachineIn()
    message = machine.message.as_dict() if machine.message is not None else None
    try:
        result = outbound_service.make_call(session, agency_id, agent_id=body.agent_id, to=body.to,
                                            from_number=body.from_, template_context=body.template_context,
                                            metadata=body.metadata, on_machine=machine.on_machine,
                                            machine_message=message)
    except outbound_service.CarrierRateLimited:
        # The carrier never processes a 429: nothing was dialled, so the key is free again
        # (storing this answer would replay a passing limit for 24 h).
        if key is not None:
            idempotency_keys.release(session, agency_id, key.strip())
        raise
    except outbound_service.CarrierError as exc:
        # A call row exists and the carrier was asked: this outcome is the key's answer.
        if key is not None:
            idempotency_keys.finish(session, agency_id, key.strip(), exc.status, api_error(exc).body())
        raise
    except BaseException:
        # Nothing was dialled (validation, Ultravox refusing, a bug): the key is free again.
        if key is not None:
            idempotency_keys.release(session, agency_id, key.strip())
        raise
    out = OutboundCallOut.model_validate(result.__dict__).model_dump(mode="json")
    if key is not None:
        idempotency_keys.finish(session, agency_id, key.strip(), 201, out)
    return jsonify(out), 201


# -- carrier callbacks for outbound calls ----------------------------------------------------


def _callback_document(carrier: str, summary: str, kind: str, ok: dict[int, tuple[Any, str]]):
    return document(summary=summary, tags=["carrier webhooks"], security=[], parameters=signature_headers(carrier),
                    bodies=request_bodies(carrier, kind),
                    responses={**ok, 403: (None, BAD_SIGNATURE), 404: (None, "call_id is not a UUID"),
                               503: (None, DATABASE_UNAVAILABLE)})


_APPLIED = {204: (None, "Applied, duplicate, or ignored (a call id we do not know)")}


@bp.post("/webhooks/outbound/twilio/status/<uuid:call_id>")
@_callback_document("twilio", "Twilio: status callback of an outbound call", "status", _APPLIED)
def twilio_outbound_status(call_id: uuid.UUID):
    outbound_callbacks.apply_callback(get_session(), "twilio", call_id, get_carriers().xml_adapter("twilio"),
                                      webhook_request())
    return "", 204


@bp.post("/webhooks/outbound/plivo/hangup/<uuid:call_id>")
@_callback_document("plivo", "Plivo: hangup callback of an outbound call", "status", _APPLIED)
def plivo_outbound_hangup(call_id: uuid.UUID):
    outbound_callbacks.apply_callback(get_session(), "plivo", call_id, get_carriers().xml_adapter("plivo"),
                                      webhook_request())
    return "", 204


@bp.post("/webhooks/outbound/telnyx/call-control/<uuid:call_id>")
@_callback_document("telnyx", "Telnyx: Call Control event of an outbound call", "call-control",
                    {200: (EMPTY_JSON, "Handled")})
def telnyx_outbound_event(call_id: uuid.UUID):
    adapter, request_ = get_carriers().call_control("telnyx"), webhook_request()
    parsed = adapter.parse_event(request_)
    if parsed.event_type in MACHINE_VERDICT_EVENTS + MACHINE_GREETING_EVENTS:
        answering_machine.apply_detection(get_session(), "telnyx", call_id, adapter, request_)
        return jsonify({}), 200
    if parsed.event_type in MESSAGE_ENDED_EVENTS:
        answering_machine.message_ended(get_session(), "telnyx", call_id, adapter, request_)
        return jsonify({}), 200
    outbound_callbacks.apply_callback(get_session(), "telnyx", call_id, adapter, request_,
                                      bind_id=parsed.call_control_id or None)
    return jsonify({}), 200


CARRIER_SIGNED = {403: (None, "Signature missing or not valid for the call's agency (nothing written)")}
_VERDICT_APPLIED: dict[int, tuple[Described, str]] = {
    204: (None, "Applied, duplicate, too late to act on, or not our call"), **CARRIER_SIGNED}


def _apply_machine_verdict(carrier: str, call_id: uuid.UUID):
    answering_machine.apply_detection(get_session(), carrier, call_id, get_carriers().xml_adapter(carrier),
                                      webhook_request())
    return "", 204


@bp.post("/webhooks/outbound/twilio/amd/<uuid:call_id>")
@document(summary="Twilio answering-machine verdict of our outbound call (AsyncAmdStatusCallback, form, "
                  "X-Twilio-Signature)", tags=["webhooks"], security=[], responses=_VERDICT_APPLIED)
def twilio_outbound_amd(call_id: uuid.UUID):
    """Twilio's asynchronous answering-machine verdict (AsyncAmdStatusCallback)."""
    return _apply_machine_verdict("twilio", call_id)


@bp.post("/webhooks/outbound/plivo/amd/<uuid:call_id>")
@document(summary="Plivo machine detection of our outbound call (machine_detection_url, form, signature V3)",
          tags=["webhooks"], security=[], responses=_VERDICT_APPLIED)
def plivo_outbound_amd(call_id: uuid.UUID):
    """Plivo's asynchronous machine detection (machine_detection_url)."""
    return _apply_machine_verdict("plivo", call_id)


@bp.post("/webhooks/outbound/plivo/voicemail/<uuid:call_id>")
@document(summary="Plivo XML leaving the call's message on the machine that answered (fetched after our "
                  "transfer; signature V3)", tags=["webhooks"], security=[],
          responses={200: (None, "text/xml: wait for the beep, speak or play the message, hang up"),
                     **CARRIER_SIGNED})
def plivo_outbound_voicemail(call_id: uuid.UUID):
    """Plivo fetches this after we transferred a call a machine answered: wait for the
    beep, leave the message, hang up (a call with no message to leave is hung up)."""
    adapter = get_carriers().xml_adapter("plivo")
    message = answering_machine.voicemail_message(get_session(), "plivo", call_id, adapter, webhook_request())
    if message is None:
        return Response(adapter.say_and_hangup(""), mimetype="text/xml")
    return Response(adapter.voicemail_response(message), mimetype="text/xml")


@bp.post("/webhooks/outbound/plivo/answer/<uuid:call_id>")
@_callback_document("plivo", "Plivo: the callee answered an outbound call (stream XML)", "status",
                    {200: (XML_ANSWER, "The stream to the call's Ultravox call, or an apology and hang-up")})
def plivo_outbound_answer(call_id: uuid.UUID):
    """Plivo fetches this when the callee answers, and may fetch it again: the answer is
    always the stream XML for the Ultravox call created before dialling (never a new call)."""
    adapter = get_carriers().xml_adapter("plivo")
    join_url = outbound_callbacks.plivo_answer(get_session(), call_id, adapter, webhook_request())
    if join_url is None:
        return Response(adapter.say_and_hangup("Sorry, this call cannot be connected."), mimetype="text/xml")
    return Response(adapter.stream_response(join_url), mimetype="text/xml")


__all__ = ["bp", "SignatureRejected"]
