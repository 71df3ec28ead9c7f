"""Live call control over HTTP: the agent's transferCall tool and the carriers'
callbacks about the person's leg (docs/call-control.md).

  POST /tools/transfer/<call_id>                   the tool (Ultravox calls it; X-Transfer-Token)
  POST /webhooks/transfers/<transfer_id>/dial        Plivo: what to dial (XML)
  POST /webhooks/transfers/<transfer_id>/dial-result Twilio, Plivo: how the person's leg ended (XML)
  POST /webhooks/transfers/<transfer_id>/events      Telnyx: Call Control events of the person's leg
  Warm transfers (Twilio, Plivo):
  POST /webhooks/transfers/<transfer_id>/hold          Plivo: the caller waits in the conference (XML)
  POST /webhooks/transfers/<transfer_id>/whisper       the person answered: the whisper and key gather (XML)
  POST /webhooks/transfers/<transfer_id>/whisper-result  the key: join the conference, or decline (XML)
  POST /webhooks/transfers/<transfer_id>/leg-status    the person's leg ended
  POST /webhooks/transfers/<transfer_id>/resume        Plivo: the caller back to the agent (XML)

The schemas of an agent's transfer targets (the agents API) are here too. HTTP in, HTTP
out: the use cases are services/transfers.py and warm_transfers.py.
"""
from __future__ import annotations

import json
import logging
import uuid
from typing import Literal, Mapping

from flask import Blueprint, Response, jsonify, request
from pydantic import BaseModel, Field

from ..db import get_session
from ..errors import ApiError
from ..services import transfers, warm_transfers
from ..services.transfer_tool import TOKEN_HEADER
from .carrier_webhook_docs import (
    BAD_SIGNATURE,
    DATABASE_UNAVAILABLE,
    EMPTY_JSON,
    XML_ANSWER,
    request_bodies,
    signature_headers,
)
from .schema import Described, RequestModel, ResponseModel, document
from .webhooks import webhook_request

log = logging.getLogger(__name__)

bp = Blueprint("transfers", __name__)


# -- the agents API's schemas -------------------------------------------------------------

class TransferTargetIn(RequestModel):
    """services/transfer_targets.py checks the numbers (E.164) and normalises them."""

    name: str = Field(pattern=r"^[a-z0-9_-]{1,40}$", description="What the model calls it (a-z, 0-9, _ and -)")
    destination: str = Field(min_length=1, max_length=255, description="E.164 number or sip: URI")
    description: str = Field(min_length=1, max_length=500, description="When to transfer there; the model sees it")
    mode: Literal["cold", "warm"] = "cold"
    ring_timeout_seconds: int = Field(default=25, ge=5, le=120)
    caller_id: str | None = Field(default=None, max_length=16, description="E.164 shown to the person")
    accept_digit: str | None = Field(default="1", pattern=r"^[0-9*#]$",
                                     description="Warm: the key the person presses to accept; null: no prompt")


class TransferTargetOut(ResponseModel):
    name: str
    destination: str
    description: str
    mode: str
    ring_timeout_seconds: int
    caller_id: str | None = None
    accept_digit: str | None = None


# -- the tool ---------------------------------------------------------------------------------

class TransferToolIn(BaseModel):
    """What Ultravox sends: the model's two parameters and the automatic call id."""

    destination: str = Field(description="One of the agent's target names")
    reason: str | None = Field(default=None, description="The agent's summary for the person")
    ultravox_call_id: str = Field(description="The Ultravox call (KNOWN_PARAM_CALL_ID)")


class TransferToolOut(ResponseModel):
    result: str


@bp.post("/tools/transfer/<uuid:call_id>")
@document(summary="The agent's transferCall tool (Ultravox calls it during a carrier call)", tags=["call control"],
          request_model=TransferToolIn, security=[],
          parameters=[{"name": TOKEN_HEADER, "in": "header", "required": True, "schema": {"type": "string"},
                       "description": "The call's tool token (sent by Ultravox as a static parameter)"}],
          responses={200: (TransferToolOut, "Transfer started (or could not start: the result says so)"),
                     401: (None, "Not this call's token"), 404: (None, "No such call"),
                     409: (None, "The call has ended, or a transfer is under way"),
                     422: (None, "The destination is not one of the agent's targets")})
def transfer_tool(call_id: uuid.UUID):
    try:
        body = json.loads(request.get_data(cache=True) or b"{}")
    except ValueError:
        body = None
    if not isinstance(body, dict):
        raise ApiError(400, "body: must be a JSON object", code="invalid_input")
    result = transfers.invoke(get_session(), call_id, request.headers.get(TOKEN_HEADER), body)
    return jsonify({"result": result.result}), result.status


# -- the carriers' callbacks ------------------------------------------------------------------

def _leg_document(summary: str, carriers: tuple[str, ...], ok: Mapping[int, tuple[Described, str]]):
    """OpenAPI of a callback about the person's leg: signed like the carrier's other
    webhooks (checked with the owning agency's credentials), one carrier dialect each."""
    kind = "call-control" if carriers == ("telnyx",) else "status"
    headers = [dict(header, required=len(carriers) == 1) for carrier in carriers
               for header in signature_headers(carrier)]
    return document(summary=summary, tags=["call control"], security=[], parameters=headers,
                    bodies=request_bodies(carriers[0], kind),
                    responses={**ok, 403: (None, BAD_SIGNATURE), 404: (None, "No such transfer"),
                               503: (None, DATABASE_UNAVAILABLE)})


_XML: dict[int, tuple[Described, str]] = {200: (XML_ANSWER, "The carrier's next instructions (XML)")}

@bp.post("/webhooks/transfers/<uuid:transfer_id>/dial")
@_leg_document("Plivo: what to dial for a transfer (XML)", ("plivo",),
               _XML)
def plivo_dial(transfer_id: uuid.UUID):
    return Response(transfers.dial_instructions(get_session(), transfer_id, webhook_request()), mimetype="text/xml")


@bp.post("/webhooks/transfers/<uuid:transfer_id>/dial-result")
@_leg_document("Twilio, Plivo: how the person's leg of a transfer ended (the caller's next XML)", ("twilio", "plivo"),
               _XML)
def dial_result(transfer_id: uuid.UUID):
    return Response(transfers.report(get_session(), transfer_id, webhook_request()), mimetype="text/xml")


@bp.post("/webhooks/transfers/<uuid:transfer_id>/hold")
@_leg_document("Plivo: the caller waits in the warm transfer's conference (XML)", ("plivo",),
               _XML)
def plivo_hold(transfer_id: uuid.UUID):
    return Response(warm_transfers.hold_instructions(get_session(), transfer_id, webhook_request()),
                    mimetype="text/xml")


@bp.post("/webhooks/transfers/<uuid:transfer_id>/whisper")
@_leg_document("Twilio, Plivo: the person answered a warm transfer: whisper and key prompt (XML)",
               ("twilio", "plivo"),
               _XML)
def whisper(transfer_id: uuid.UUID):
    return Response(warm_transfers.whisper(get_session(), transfer_id, webhook_request()), mimetype="text/xml")


@bp.post("/webhooks/transfers/<uuid:transfer_id>/whisper-result")
@_leg_document("Twilio, Plivo: the person's key: join the conference or decline (XML)", ("twilio", "plivo"),
               _XML)
def whisper_result(transfer_id: uuid.UUID):
    return Response(warm_transfers.whisper_result(get_session(), transfer_id, webhook_request()), mimetype="text/xml")


@bp.post("/webhooks/transfers/<uuid:transfer_id>/leg-status")
@_leg_document("Twilio, Plivo: the person's leg of a warm transfer ended", ("twilio", "plivo"),
               {204: (None, "Applied, or a duplicate")})
def leg_status(transfer_id: uuid.UUID):
    warm_transfers.leg_status(get_session(), transfer_id, webhook_request())
    return "", 204


@bp.post("/webhooks/transfers/<uuid:transfer_id>/resume")
@_leg_document("Plivo: the caller back to the agent after a failed transfer (XML)", ("plivo",),
               _XML)
def plivo_resume(transfer_id: uuid.UUID):
    return Response(warm_transfers.resume_instructions(get_session(), transfer_id, webhook_request()),
                    mimetype="text/xml")


@bp.post("/webhooks/transfers/<uuid:transfer_id>/events")
@_leg_document("Telnyx: Call Control events of the person's leg of a transfer", ("telnyx",),
               {200: (EMPTY_JSON, "Handled")})
def telnyx_events(transfer_id: uuid.UUID):
    transfers.report(get_session(), transfer_id, webhook_request(), call_control=True)
    return jsonify({}), 200
