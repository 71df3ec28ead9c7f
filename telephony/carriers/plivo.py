"""Plivo answer_url / hangup_url webhooks: signature V3 and Plivo XML."""
from __future__ import annotations

import logging
from typing import Mapping

from plivo import plivoxml
from plivo.exceptions import PlivoRestError
from plivo.utils import validate_v3_signature

from .base import InboundCall, StatusEvent, WebhookRequest, XmlCarrierAdapter, parse_int

log = logging.getLogger(__name__)

SIGNATURE_HEADERS = ("X-Plivo-Signature-V3", "X-Plivo-Signature-Ma-V3")  # (sub)account token, main account token
NONCE_HEADER = "X-Plivo-Signature-V3-Nonce"
# Ultravox recommends 16 kHz linear PCM for Plivo AudioStream.
CONTENT_TYPE = "audio/x-l16;rate=16000"
# Plivo CallStatus -> ours.
_STATUSES = {"ringing": "ringing", "in-progress": "in-progress", "completed": "completed", "busy": "busy",
             "failed": "failed", "no-answer": "no-answer", "timeout": "no-answer", "cancel": "canceled",
             "canceled": "canceled", "cancelled": "canceled"}


def _with_plus(number: str) -> str:
    """Plivo sends numbers as country code + digits, without the "+"."""
    return f"+{number}" if number.isdigit() else number


class PlivoAdapter(XmlCarrierAdapter):
    name = "plivo"

    def verify(self, request: WebhookRequest, credentials: Mapping[str, str]) -> bool:
        token = credentials.get("auth_token")
        nonce = request.headers.get(NONCE_HEADER)
        if not token or not nonce:
            return False
        params = request.form.to_dict(flat=False)
        for header in SIGNATURE_HEADERS:
            signature = request.headers.get(header)
            if not signature:
                continue
            try:
                if validate_v3_signature(request.method, request.public_url, nonce, token, signature, params):
                    return True
            except PlivoRestError:  # the SDK's argument validation (e.g. a malformed URL)
                return False
        return False

    def parse_inbound(self, request: WebhookRequest) -> InboundCall:
        return InboundCall(carrier_call_id=request.field("CallUUID"), from_number=_with_plus(request.field("From")),
                           to_number=_with_plus(request.field("To")))

    def parse_status(self, request: WebhookRequest) -> StatusEvent | None:
        call_uuid = request.field("CallUUID")
        status = _STATUSES.get(request.field("CallStatus").lower())
        if not call_uuid or status is None:
            return None
        return StatusEvent(carrier_call_id=call_uuid, status=status,
                           duration_seconds=parse_int(request.field("Duration")))

    def stream_response(self, join_url: str) -> str:
        response = plivoxml.ResponseElement()
        # keepCallAlive: the stream alone holds the call until Ultravox disconnects.
        response.add(plivoxml.StreamElement(join_url, bidirectional=True, keepCallAlive=True,
                                            contentType=CONTENT_TYPE))
        return response.to_string()

    def say_and_hangup(self, message: str) -> str:
        response = plivoxml.ResponseElement()
        response.add(plivoxml.SpeakElement(message))
        response.add(plivoxml.HangupElement())
        return response.to_string()

    def dial_fallback(self, number: str) -> str:
        dial = plivoxml.DialElement()
        dial.add(plivoxml.NumberElement(number.lstrip("+")))  # Plivo writes numbers without "+"
        response = plivoxml.ResponseElement()
        response.add(dial)
        return response.to_string()
