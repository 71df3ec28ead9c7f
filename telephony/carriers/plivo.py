"""Plivo: answer_url / hangup_url webhooks (signature V3, Plivo XML) and outbound dials."""
from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, Callable, Mapping

from . import sdk
from .base import (
    HUMAN,
    MACHINE,
    MAX_DURATION_SECONDS,
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
from .numbers import INBOUND, STATUS, CarrierNumber, NumberProvisioner, application_name
from .spec import CarrierSpec, CredentialField

# The SDK is imported when a Plivo webhook or dial first needs it (sdk.lazy_module).
if TYPE_CHECKING:
    import plivo.exceptions as plivo_errors
    import plivo.utils as plivo_utils
    import plivo.xml as plivoxml
else:
    plivo_errors = sdk.lazy_module("plivo.exceptions")
    plivo_utils = sdk.lazy_module("plivo.utils")
    plivoxml = sdk.lazy_module("plivo.xml")

log = logging.getLogger(__name__)

NAME = "plivo"
SIGNATURE_HEADERS = ("X-Plivo-Signature-V3", "X-Plivo-Signature-Ma-V3")  # (sub)account token, main account token
NONCE_HEADER = "X-Plivo-Signature-V3-Nonce"
# Ultravox recommends 16 kHz linear PCM for Plivo AudioStream.
CONTENT_TYPE = "audio/x-l16;rate=16000"
# Plivo CallStatus -> ours. Plivo's list (support.plivo.com, "What do the different call
# statuses mean?"): in-progress, completed, ringing, no-answer, busy, cancel (ended before
# it was answered) and timeout, which is a connection timeout at a carrier or in Plivo's
# network, not an unanswered phone: a failure. "failed" and the other spellings of
# cancel are accepted too.
_STATUSES = {"ringing": "ringing", "in-progress": "in-progress", "completed": "completed", "busy": "busy",
             "failed": "failed", "no-answer": "no-answer", "timeout": "failed", "cancel": "canceled",
             "canceled": "canceled", "cancelled": "canceled"}


# The longest wait for a voicemail greeting's beep before the message is left anyway.
BEEP_WAIT_SECONDS = 30


def _with_plus(number: str) -> str:
    """Plivo sends numbers as country code + digits, without the "+"."""
    return f"+{number}" if number.isdigit() else number


class PlivoAdapter(XmlCarrierAdapter):
    name = NAME
    can_hold = True

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
                if plivo_utils.validate_v3_signature(request.method, request.public_url, nonce, token, signature,
                                                     params):
                    return True
            except plivo_errors.PlivoRestError:  # the SDK's argument validation (e.g. a malformed URL)
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
                           duration_seconds=parse_int(request.field("Duration"), MAX_DURATION_SECONDS))

    def parse_machine_detection(self, request: WebhookRequest) -> MachineDetection | None:
        # Plivo's machine_detection_url: Machine=true|false (no fax, no beep report).
        call_uuid, machine = request.field("CallUUID"), request.field("Machine").lower()
        if not call_uuid or machine not in ("true", "false"):
            return None
        return MachineDetection(carrier_call_id=call_uuid, answered_by=MACHINE if machine == "true" else HUMAN,
                                detail=f"Machine={machine}")

    def voicemail_response(self, message: MachineMessage) -> str:
        """XML waiting for the greeting's beep, leaving ``message``, then hanging up:
        Plivo reports a machine as soon as it hears one, before its greeting is over."""
        response = plivoxml.ResponseElement()
        response.add(plivoxml.WaitElement(length=BEEP_WAIT_SECONDS, beep=True))
        if message.audio_url:
            response.add(plivoxml.PlayElement(message.audio_url))
        else:
            response.add(plivoxml.SpeakElement(message.text or ""))
        response.add(plivoxml.HangupElement())
        return response.to_string()

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

    def hold_response(self, hold: Hold) -> str:
        # <Wait> is Plivo's pause; <Redirect> is fetched once the audio before it ended.
        response = plivoxml.ResponseElement()
        if hold.message:
            response.add(plivoxml.SpeakElement(hold.message))
        if hold.audio_url:
            response.add(plivoxml.PlayElement(hold.audio_url))
            # A <Play> the carrier cannot fetch is skipped: the wait keeps the loop from spinning.
            response.add(plivoxml.WaitElement(length=1))
        else:
            response.add(plivoxml.WaitElement(length=hold.pause_seconds))
        response.add(plivoxml.RedirectElement(hold.redirect_url, method="POST"))
        return response.to_string()


# Plivo's exception classes (by name in plivo.exceptions) -> the HTTP status they stand for.
_ERROR_STATUSES: tuple[tuple[tuple[str, ...], int], ...] = (
    (("PlivoServerError",), 500),
    (("AuthenticationError",), 401),
    (("ValidationError", "InvalidRequestError"), 400),
    (("ForbiddenError", "GeoPermissionError"), 403),
    (("ResourceNotFoundError",), 404),
)


class PlivoDialer(CarrierDialer):
    """Outbound: Plivo dials, then fetches our answer_url (answered with the stream XML)."""

    name = NAME
    sdk_client = staticmethod(sdk.plivo_client)

    def account(self, credentials: Mapping[str, str]) -> str:
        return credentials["auth_id"]

    def secrets(self, credentials: Mapping[str, str]) -> tuple[str, ...]:
        return credentials["auth_id"], credentials["auth_token"]

    def place_call(self, client: Any, credentials: Mapping[str, str], dial: OutboundDial) -> str:
        response = client.calls.create(from_=dial.from_number.lstrip("+"), to_=dial.to.lstrip("+"),
                                       answer_url=dial.callback_url("answer"), answer_method="POST",
                                       hangup_url=dial.callback_url("hangup"), ring_timeout=dial.ring_timeout,
                                       # Asynchronous: the stream starts at once, the verdict follows.
                                       machine_detection="true", machine_detection_url=dial.callback_url("amd"),
                                       machine_detection_method="POST")
        request_uuid = response["request_uuid"] if isinstance(response, Mapping) else response.request_uuid
        return str(request_uuid[0] if isinstance(request_uuid, list) else request_uuid)

    def error_status(self, exc: Exception) -> tuple[int | None, str] | None:
        for names, status in _ERROR_STATUSES:
            if isinstance(exc, tuple(getattr(plivo_errors, name) for name in names)):
                return status, str(exc)[:300]
        if isinstance(exc, plivo_errors.PlivoRestError):
            text = str(exc)
            for code in (429, 400, 401, 403, 404, 422):
                if f"status code {code}" in text:
                    return code, text[:300]
            return None, text[:300]
        return None

    def hang_up(self, client: Any, carrier_call_id: str) -> None:
        client.calls.hangup(carrier_call_id)

    def leave_message(self, client: Any, carrier_call_id: str, message: MachineMessage,
                      callback_url: Callable[[str], str]) -> None:
        # A transfer makes Plivo fetch new XML for the call (voicemail_response), which
        # replaces the stream: the agent is disconnected, the message left, the call ended.
        client.calls.transfer(carrier_call_id, legs="aleg", aleg_url=callback_url("voicemail"), aleg_method="POST")


def _application_id(uri: Any) -> str:
    """"/v1/Account/MA.../Application/123/" -> "123"; "" for none."""
    parts = [part for part in str(uri or "").split("/") if part]
    return parts[-1] if len(parts) >= 2 and parts[-2] == "Application" else ""


class PlivoNumbers(NumberProvisioner):
    """Numbers are linked to an application holding the answer and hangup URLs."""

    name = NAME
    credential_fields = ("auth_id", "auth_token")

    def find(self, client: Any, e164: str) -> CarrierNumber | None:
        digits = e164.lstrip("+")  # Plivo writes numbers without "+"
        try:
            found = client.numbers.get(digits)
        except plivo_errors.ResourceNotFoundError:
            return None
        return CarrierNumber(e164=e164, carrier_id=digits, routing=_application_id(getattr(found, "application", "")))

    def current_urls(self, client: Any, number: CarrierNumber) -> dict[str, str | None]:
        if not number.routing:
            return {}
        application = client.applications.get(number.routing)
        return {INBOUND: getattr(application, "answer_url", None) or None,
                STATUS: getattr(application, "hangup_url", None) or None}

    def point_here(self, client: Any, number: CarrierNumber, urls: Mapping[str, str],
                   credentials: Mapping[str, str]) -> dict[str, str]:
        in_use = self.already_here(client, number, urls)
        if in_use is not None:
            return in_use
        # Not the number's current application, which other numbers may share: ours.
        name = application_name(urls)
        app_id = ""
        for application in client.applications.list(app_name=name):
            if getattr(application, "app_name", None) == name:
                app_id = str(application.app_id)
                if application.answer_url != urls[INBOUND] or application.hangup_url != urls[STATUS]:
                    client.applications.update(app_id, answer_url=urls[INBOUND], answer_method="POST",
                                               hangup_url=urls[STATUS], hangup_method="POST")
                break
        if not app_id:
            created = client.applications.create(app_name=name, answer_url=urls[INBOUND], answer_method="POST",
                                                 hangup_url=urls[STATUS], hangup_method="POST")
            app_id = str(created.app_id)
        client.numbers.update(number.carrier_id, app_id=app_id)
        return {INBOUND: urls[INBOUND], STATUS: urls[STATUS]}


PLIVO = CarrierSpec(
    name=NAME, title="Plivo",
    credentials=(CredentialField("auth_id", secret=False), CredentialField("auth_token")),
    api_base_setting="plivo_api_base",
    adapter=PlivoAdapter, dialer=PlivoDialer,
    inbound_path="answer",  # the application's answer_url
    status_path="hangup",  # its hangup_url
    numbers=PlivoNumbers,
)
