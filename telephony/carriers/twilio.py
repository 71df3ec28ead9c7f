"""Twilio: voice webhooks (X-Twilio-Signature, form fields, TwiML) and outbound dials."""
from __future__ import annotations

import json
from typing import Any, Callable, Mapping

from twilio.base.exceptions import TwilioException, TwilioRestException
from twilio.request_validator import RequestValidator
from twilio.twiml.voice_response import VoiceResponse

from .. import call_states
from . import sdk
from .base import (
    FAX,
    HUMAN,
    MACHINE,
    MAX_DURATION_SECONDS,
    UNKNOWN,
    CarrierDialer,
    Hold,
    InboundCall,
    MachineDetection,
    MachineMessage,
    OutboundDial,
    StatusEvent,
    WebhookRequest,
    XmlCarrierAdapter,
    parse_int,
)
from .numbers import INBOUND, STATUS, CarrierNumber, NumberProvisioner
from .spec import CarrierSpec, CredentialField

NAME = "twilio"
SIGNATURE_HEADER = "X-Twilio-Signature"
# Twilio's CallStatus words are our vocabulary; "initiated" and unknown values are
# ignored rather than guessed.
_STATUSES = call_states.CARRIER_REPORTED
# AnsweredBy of asynchronous AMD -> ours. With DetectMessageEnd a machine is reported
# once its greeting is over (machine_end_*); machine_start comes from plain "Enable".
_ANSWERED_BY = {"human": HUMAN, "machine_start": MACHINE, "machine_end_beep": MACHINE,
                "machine_end_silence": MACHINE, "machine_end_other": MACHINE, "fax": FAX, "unknown": UNKNOWN}


class TwilioAdapter(XmlCarrierAdapter):
    name = NAME
    can_hold = True

    def verify(self, request: WebhookRequest, credentials: Mapping[str, str]) -> bool:
        token = credentials.get("auth_token")
        signature = request.headers.get(SIGNATURE_HEADER)
        if not token or not signature:
            return False
        # The SDK checks the URL with and without the default port and compares in
        # constant time; the form is passed whole (every field, every value, untrimmed).
        return RequestValidator(token).validate(request.public_url, request.form, signature)

    def parse_inbound(self, request: WebhookRequest) -> InboundCall:
        return InboundCall(carrier_call_id=request.field("CallSid"), from_number=request.field("From"),
                           to_number=request.field("To"))

    def parse_status(self, request: WebhookRequest) -> StatusEvent | None:
        call_sid, status = request.field("CallSid"), request.field("CallStatus").lower()
        if not call_sid or status not in _STATUSES:
            return None
        return StatusEvent(carrier_call_id=call_sid, status=status,
                           sequence=parse_int(request.field("SequenceNumber")),
                           duration_seconds=parse_int(request.field("CallDuration"), MAX_DURATION_SECONDS))

    def parse_machine_detection(self, request: WebhookRequest) -> MachineDetection | None:
        call_sid, answered_by = request.field("CallSid"), request.field("AnsweredBy").lower()
        if not call_sid or not answered_by:
            return None
        return MachineDetection(carrier_call_id=call_sid, answered_by=_ANSWERED_BY.get(answered_by, UNKNOWN),
                                detail=answered_by[:64], greeting_ended=answered_by.startswith("machine_end"))

    def voicemail_response(self, message: MachineMessage) -> str:
        """TwiML leaving ``message`` (audio or spoken text), then hanging up."""
        response = VoiceResponse()
        if message.audio_url:
            response.play(message.audio_url)
        else:
            response.say(message.text or "")
        response.hangup()
        return str(response)

    def stream_response(self, join_url: str) -> str:
        response = VoiceResponse()
        response.connect().stream(url=join_url, **self._stream_attributes())
        return str(response)

    def _stream_attributes(self) -> dict[str, str]:
        """Extra <Stream> attributes (snake_case; the builder camel-cases them)."""
        return {}

    def say_and_hangup(self, message: str) -> str:
        response = VoiceResponse()
        response.say(message)
        response.hangup()
        return str(response)

    def dial_fallback(self, number: str) -> str:
        # No callerId: on a forwarded inbound call the carrier presents the original
        # caller's number, which is what the person answering the fallback wants to see.
        response = VoiceResponse()
        response.dial(number)
        return str(response)

    def hold_response(self, hold: Hold) -> str:
        # <Redirect> is only reached once the audio (or pause) before it has ended: that
        # is the retry interval. TeXML has the same verbs.
        response = VoiceResponse()
        if hold.message:
            response.say(hold.message)
        if hold.audio_url:
            response.play(hold.audio_url)
            # A <Play> the carrier cannot fetch is skipped: the pause keeps the loop from spinning.
            response.pause(length=1)
        else:
            response.pause(length=hold.pause_seconds)
        response.redirect(hold.redirect_url, method="POST")
        return str(response)


class TwilioDialer(CarrierDialer):
    name = NAME
    sdk_client = staticmethod(sdk.twilio_client)
    STATUS_EVENTS = ("initiated", "ringing", "answered", "completed")
    MACHINE_DETECTION = "DetectMessageEnd"

    def account(self, credentials: Mapping[str, str]) -> str:
        return credentials["account_sid"]

    def secrets(self, credentials: Mapping[str, str]) -> tuple[str, ...]:
        return credentials["account_sid"], credentials["auth_token"]

    def place_call(self, client: Any, credentials: Mapping[str, str], dial: OutboundDial) -> str:
        # The TwiML rides along with the create: no answer webhook round trip once the callee picks up.
        call = client.calls.create(to=dial.to, from_=dial.from_number,
                                   twiml=TwilioAdapter().stream_response(dial.join_url),
                                   status_callback=dial.callback_url("status"),
                                   status_callback_event=list(self.STATUS_EVENTS), timeout=dial.ring_timeout,
                                   # Asynchronous AMD: the callee hears the agent at once; the
                                   # verdict arrives later, once a machine's greeting is over.
                                   machine_detection=self.MACHINE_DETECTION, async_amd="true",
                                   async_amd_status_callback=dial.callback_url("amd"),
                                   async_amd_status_callback_method="POST")
        return str(call.sid)

    def error_status(self, exc: Exception) -> tuple[int | None, str] | None:
        if isinstance(exc, TwilioRestException):
            return exc.status, f"{exc.msg} (code {exc.code})" if exc.code else str(exc.msg)
        return None

    def hang_up(self, client: Any, carrier_call_id: str) -> None:
        client.calls(carrier_call_id).update(status="completed")

    def leave_message(self, client: Any, carrier_call_id: str, message: MachineMessage,
                      callback_url: Callable[[str], str]) -> None:
        # New TwiML replaces the <Connect><Stream> (the agent's stream closes) and ends the call.
        client.calls(carrier_call_id).update(twiml=TwilioAdapter().voicemail_response(message))


def _listed(fetch: Any) -> Any:
    """A list call, whose failed page the SDK reports as a bare TwilioException with the
    response attached: raised as the TwilioRestException any other call raises."""
    try:
        return fetch()
    except TwilioRestException:
        raise
    except TwilioException as exc:
        response = exc.args[1] if len(exc.args) > 1 else None
        status = getattr(response, "status_code", None)
        if not isinstance(status, int):
            raise
        try:
            body = json.loads(response.text)  # type: ignore[union-attr]
        except ValueError:
            body = {}
        body = body if isinstance(body, dict) else {}
        raise TwilioRestException(status, "IncomingPhoneNumbers.json", msg=str(body.get("message") or exc.args[0]),
                                  code=body.get("code"), method="GET") from None


class TwilioNumbers(NumberProvisioner):
    """IncomingPhoneNumbers: the webhook URLs live on the number itself."""

    name = NAME
    credential_fields = ("account_sid", "auth_token")

    def find(self, client: Any, e164: str) -> CarrierNumber | None:
        # PhoneNumber filters by pattern (a prefix matches too): keep the exact number only.
        for found in _listed(lambda: client.incoming_phone_numbers.list(phone_number=e164, limit=50)):
            if found.phone_number == e164:
                # An application or a SIP trunk takes the number's calls instead of its URLs.
                routing = found.voice_application_sid or found.trunk_sid or ""
                return CarrierNumber(e164=e164, carrier_id=str(found.sid), routing=routing,
                                     urls={INBOUND: found.voice_url or None, STATUS: found.status_callback or None})
        return None

    def current_urls(self, client: Any, number: CarrierNumber) -> dict[str, str | None]:
        if number.routing:
            return {INBOUND: f"(handled by {number.routing})", STATUS: f"(handled by {number.routing})"}
        return dict(number.urls or {INBOUND: None, STATUS: None})

    def point_here(self, client: Any, number: CarrierNumber, urls: Mapping[str, str],
                   credentials: Mapping[str, str]) -> dict[str, str]:
        # Clearing the application and trunk makes Twilio use the number's own URLs.
        client.incoming_phone_numbers(number.carrier_id).update(
            voice_url=urls[INBOUND], voice_method="POST", status_callback=urls[STATUS],
            status_callback_method="POST", voice_application_sid="", trunk_sid="")
        return {INBOUND: urls[INBOUND], STATUS: urls[STATUS]}


TWILIO = CarrierSpec(
    name=NAME, title="Twilio",
    credentials=(CredentialField("account_sid", secret=False), CredentialField("auth_token")),
    api_base_setting="twilio_api_base",
    adapter=TwilioAdapter, dialer=TwilioDialer,
    inbound_path="voice",  # the number's "A call comes in" webhook
    status_path="status",  # its "Call status changes" callback
    numbers=TwilioNumbers,
)
