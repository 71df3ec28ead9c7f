"""What carriers send to our webhook routes, for /openapi.json.

The routes come from each carrier's CarrierSpec (api/webhooks.py) and from
api/outbound.py; their bodies and signature headers are described here, one entry per
carrier dialect. A carrier not listed (a new one, a test's fake) is described
generically until its entry is added.
"""
from __future__ import annotations

from typing import Any

from .schema import Body

XML_ANSWER = Body("text/xml", {"type": "string",
                               "description": "The carrier's call-control XML (TwiML, TeXML or Plivo XML): "
                                              "stream to Ultravox, or say and hang up"})


def _header(name: str, description: str) -> dict[str, Any]:
    return {"name": name, "in": "header", "required": True, "schema": {"type": "string"}, "description": description}


def _form(fields: dict[str, str]) -> Body:
    return Body("application/x-www-form-urlencoded", {
        "type": "object", "additionalProperties": {"type": "string"},
        "properties": {name: {"type": "string", "description": text} for name, text in fields.items()}})


_TWILIO_FORM = {"CallSid": "The carrier's call id", "AccountSid": "Account (or subaccount) that owns the number",
                "From": "Caller, E.164", "To": "Called number, E.164",
                "CallStatus": "queued, ringing, in-progress, completed, busy, no-answer, failed, canceled",
                "SequenceNumber": "Order of status callbacks", "CallDuration": "Seconds (final status only)"}
_PLIVO_FORM = {"CallUUID": "The carrier's call id", "From": "Caller", "To": "Called number",
               "CallStatus": "ringing, in-progress, completed, busy, no-answer, failed, cancel, timeout",
               "Duration": "Seconds (hangup only)", "HangupCause": "Why the call ended"}
_TELNYX_EVENT = Body("application/json", {
    "type": "object", "required": ["data"],
    "properties": {"data": {"type": "object", "properties": {
        "id": {"type": "string"}, "event_type": {"type": "string",
                                                 "description": "call.initiated, call.answered, call.hangup, ..."},
        "occurred_at": {"type": "string", "format": "date-time"},
        "payload": {"type": "object", "properties": {
            "call_control_id": {"type": "string"}, "from": {"type": "string"}, "to": {"type": "string"},
            "direction": {"type": "string"}, "client_state": {"type": "string"},
            "hangup_cause": {"type": "string"}, "start_time": {"type": "string"}}}}}}})

SIGNATURES: dict[str, list[dict[str, Any]]] = {
    "twilio": [_header("X-Twilio-Signature", "Base64 HMAC-SHA1 of the public URL and the sorted form fields, "
                                             "keyed with the account's auth token")],
    "telnyx": [_header("telnyx-signature-ed25519", "Base64 Ed25519 signature of `{telnyx-timestamp}|{raw body}`, "
                                                   "checked with the account's public key"),
               _header("telnyx-timestamp", "Unix seconds; more than 300 s away from now is refused (replay)")],
    "plivo": [_header("X-Plivo-Signature-V3", "Base64 HMAC-SHA256 of URL, parameters and nonce, keyed with the "
                                              "auth token (`X-Plivo-Signature-Ma-V3`: the main account's token)"),
              _header("X-Plivo-Signature-V3-Nonce", "The nonce that was signed")],
}
FORMS: dict[str, Body] = {"twilio": _form(_TWILIO_FORM), "telnyx": _form(_TWILIO_FORM), "plivo": _form(_PLIVO_FORM)}
GENERIC_FORM = _form({})

BAD_SIGNATURE = "Signature missing or not valid for the number's agency"
# Callbacks (not the inbound answer, which is always 200) let the carrier redeliver.
DATABASE_UNAVAILABLE = "The database could not serve the callback; the carrier redelivers (Retry-After)"
EMPTY_JSON = Body("application/json", {"type": "object", "maxProperties": 0})


def signature_headers(carrier: str) -> list[dict[str, Any]]:
    return SIGNATURES.get(carrier, [])


def request_bodies(carrier: str, kind: str) -> list[Body]:
    """`kind` as in CarrierSpec.webhook_paths(): inbound, status or call-control."""
    if kind == "call-control":
        return [_TELNYX_EVENT]
    return [FORMS.get(carrier, GENERIC_FORM)]
