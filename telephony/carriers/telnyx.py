"""Telnyx: TeXML applications (Twilio-compatible XML) and Call Control (JSON events + REST).

Both are signed the same way: Ed25519 over ``"{telnyx-timestamp}|{raw body}"`` with the
account's public key, and a timestamp more than 300 s away from now is refused (replay).
"""
from __future__ import annotations

import base64
import hashlib
import json
import logging
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any, Callable, Final, Mapping, Self

from ..config import DEFAULT_TELNYX_STREAM_CODEC, TELNYX_STREAM_FORMATS
from ..text import storable
from . import sdk
from .base import (
    FAX,
    HUMAN,
    MACHINE,
    MAX_DURATION_SECONDS,
    UNKNOWN,
    Answer,
    CarrierAdapter,
    CarrierDialer,
    CarrierSettings,
    Hold,
    InboundCall,
    MachineDetection,
    MachineMessage,
    OutboundDial,
    StatusEvent,
    WebhookRequest,
)
from .numbers import (
    CALL_CONTROL,
    INBOUND,
    STATUS,
    CarrierNumber,
    NumberProvisioner,
    NumberSetupRefused,
    application_name,
)
from .spec import CarrierSpec, CredentialField
from .twilio import TwilioAdapter

# The SDK (~60 MB, 2+ s to import) is imported when a Telnyx webhook or dial first needs it
# (sdk.lazy_module).
if TYPE_CHECKING:
    import telnyx
    import telnyx.lib.webhook_verification as telnyx_webhooks
else:
    telnyx = sdk.lazy_module("telnyx")
    telnyx_webhooks = sdk.lazy_module("telnyx.lib.webhook_verification")

log = logging.getLogger(__name__)

NAME = "telnyx"
# Ultravox: codec and bidirectionalCodec "must have the same value because Telnyx only
# tells us about one of them"; L16 at 16 kHz is HD audio (the documented codecs and their
# rates: config.TELNYX_STREAM_FORMATS).
DEFAULT_CODEC = DEFAULT_TELNYX_STREAM_CODEC
DEFAULT_SAMPLING_RATE = TELNYX_STREAM_FORMATS[DEFAULT_CODEC]
# Marks the client_state of a call we answered only to speak a message and hang up.
SAY_STATE_PREFIX = "telephony-say:"
# Marks the client_state of a caller we hold for a free slot (services/capacity.py).
HOLD_STATE_PREFIX = "telephony-hold:"
# A parked or answered call cannot pause: without hold audio, each round speaks this.
HOLD_REMINDER = "Thank you for holding. We will connect you as soon as a line is free."
SPEAK_VOICE = "female"
SPEAK_LANGUAGE: Final = "en-US"  # Final: typed as the literal the SDK's language parameter takes


def verify_ed25519(request: WebhookRequest, credentials: Mapping[str, str]) -> bool:
    public_key = credentials.get("public_key")
    if not public_key:
        return False
    try:
        # The raw bytes: re-serialised JSON or re-encoded form data would not match.
        # werkzeug's Headers offers the Mapping methods the SDK uses, but is not a typing Mapping.
        telnyx_webhooks.verify_webhook_signature(request.body, request.headers, public_key)  # type: ignore[arg-type]
    except telnyx_webhooks.WebhookVerificationError as exc:
        log.info("telnyx signature rejected: %s", exc.message)
        return False
    return True


class _TelnyxStream:
    """One codec for both directions of the media stream (Ultravox must see one codec),
    fixed at construction: an app's registry builds its Telnyx adapters and dialer from
    its TELNYX_STREAM_CODEC (``CarrierSettings``)."""

    name = NAME

    def __init__(self, codec: str = DEFAULT_CODEC, sampling_rate: int = DEFAULT_SAMPLING_RATE) -> None:
        self.codec = codec
        self.sampling_rate = sampling_rate

    @classmethod
    def from_settings(cls, settings: CarrierSettings) -> Self:
        return cls(settings.telnyx_codec, settings.telnyx_sampling_rate)

    def stream_format(self) -> tuple[str, int]:
        """(codec, sampling rate): the codec is used for both directions."""
        return self.codec, self.sampling_rate


class _TelnyxSigned(_TelnyxStream):
    """What both Telnyx webhook products share: the account's Ed25519 signature and the
    media stream's codec."""

    def verify(self, request: WebhookRequest, credentials: Mapping[str, str]) -> bool:
        return verify_ed25519(request, credentials)


class TelnyxTexmlAdapter(_TelnyxSigned, TwilioAdapter):
    """TeXML is Twilio-compatible: the same form fields, status callbacks and verbs.

    Differences: the Ed25519 signature, and <Stream> needs bidirectional RTP with one
    codec for both directions (otherwise Telnyx streams one way only)."""

    def _stream_attributes(self) -> dict[str, str]:
        codec, sampling_rate = self.stream_format()
        return {"bidirectional_mode": "rtp", "codec": codec, "bidirectional_codec": codec,
                "bidirectional_sampling_rate": str(sampling_rate)}


@dataclass(frozen=True)
class CallControlEvent:
    event_id: str
    event_type: str
    call_control_id: str
    direction: str
    client_state: str  # decoded from base64; "" when absent or undecodable
    occurred_at: str
    payload: Mapping[str, Any] = field(default_factory=dict)

    @property
    def say(self) -> tuple[str, str] | None:
        """(agency id, message) of a call we answered only to speak and hang up, else None.

        The state rides in client_state, which Telnyx echoes on every later event, because
        such a call may have no row of ours (an unassigned number) to look it up by."""
        if not self.client_state.startswith(SAY_STATE_PREFIX):
            return None
        agency_id, sep, message = self.client_state[len(SAY_STATE_PREFIX):].partition(":")
        return (agency_id, message) if sep else None

    @property
    def hold(self) -> str | None:
        """The hold state of a caller we hold for a free slot (``Hold.state``), else None."""
        if not self.client_state.startswith(HOLD_STATE_PREFIX):
            return None
        return self.client_state[len(HOLD_STATE_PREFIX):]


# Answering-machine detection results (standard and premium) -> ours.
_MACHINE_VERDICTS = {"human": HUMAN, "human_residence": HUMAN, "human_business": HUMAN, "machine": MACHINE,
                     "fax_detected": FAX, "silence": UNKNOWN, "not_sure": UNKNOWN}
MACHINE_VERDICT_EVENTS = ("call.machine.detection.ended", "call.machine.premium.detection.ended")
MACHINE_GREETING_EVENTS = ("call.machine.greeting.ended", "call.machine.premium.greeting.ended")
# A message we play on an answering machine is over: the call is hung up.
MESSAGE_ENDED_EVENTS = ("call.speak.ended", "call.playback.ended")

# Call Control hangup causes -> our terminal statuses (anything else ended normally).
_HANGUP_STATUS = {"user_busy": "busy", "timeout": "no-answer", "no_answer": "no-answer",
                  "originator_cancel": "canceled", "call_rejected": "failed", "not_found": "failed"}


class TelnyxCallControl(_TelnyxSigned, CarrierAdapter):
    """Telnyx Call Control: events arrive as signed JSON and we act through the REST API
    (the official SDK), so an answer is a command, not a response body."""

    # Holding: the parked call is answered with the hold state in client_state; on
    # call.answered the hold audio plays (or a line is spoken), and its
    # call.playback.ended / call.speak.ended is the next try (services/inbound.py).
    can_hold = True

    def parse_event(self, request: WebhookRequest) -> CallControlEvent:
        try:
            document = json.loads(request.body or b"{}")
        except (ValueError, RecursionError):  # not JSON, not UTF-8, or nested too deeply
            document = {}
        data = document.get("data") if isinstance(document, dict) else None
        data = data if isinstance(data, dict) else {}
        raw_payload = data.get("payload")
        payload: dict[str, Any] = raw_payload if isinstance(raw_payload, dict) else {}
        return CallControlEvent(
            event_id=_text(data.get("id")), event_type=_text(data.get("event_type")),
            call_control_id=_text(payload.get("call_control_id")),
            direction=_text(payload.get("direction")),
            client_state=_text(_decode_state(payload.get("client_state"))),
            occurred_at=_text(data.get("occurred_at")), payload=payload)

    def parse_inbound(self, request: WebhookRequest) -> InboundCall:
        event = self.parse_event(request)
        return InboundCall(carrier_call_id=event.call_control_id, from_number=_text(event.payload.get("from")),
                           to_number=_text(event.payload.get("to")))

    def parse_status(self, request: WebhookRequest) -> StatusEvent | None:
        event = self.parse_event(request)
        if not event.call_control_id:
            return None
        if event.event_type == "call.answered":
            return StatusEvent(event.call_control_id, "in-progress", event_id=event.event_id or None)
        if event.event_type == "call.hangup":
            status = _HANGUP_STATUS.get(str(event.payload.get("hangup_cause") or ""), "completed")
            return StatusEvent(event.call_control_id, status, event_id=event.event_id or None,
                               duration_seconds=_seconds_between(event.payload.get("start_time"), event.occurred_at))
        return None

    def parse_machine_detection(self, request: WebhookRequest) -> MachineDetection | None:
        event = self.parse_event(request)
        if not event.call_control_id:
            return None
        result = _text(event.payload.get("result"))[:64]
        if event.event_type in MACHINE_VERDICT_EVENTS:
            answered_by = _MACHINE_VERDICTS.get(result, UNKNOWN)
            return MachineDetection(event.call_control_id, answered_by, result or "unknown",
                                    greeting_follows=answered_by == MACHINE, event_id=event.event_id or None)
        if event.event_type in MACHINE_GREETING_EVENTS:
            return MachineDetection(event.call_control_id, None, result or "ended", greeting_ended=True,
                                    event_id=event.event_id or None)
        return None

    # -- commands ------------------------------------------------------------------------

    def execute(self, answer: Answer, *, call_control_id: str, agency_id: str, credentials: Mapping[str, str],
                api_base: str, command_id: str, answered: bool = False) -> None:
        """Carry out ``answer`` on a parked incoming call (``answered``: on a call we
        answered already, to hold it).

        ``command_id`` makes a repeated webhook's repeated command a no-op at Telnyx
        (deduplicated for 60 s), so answering twice never starts two streams."""
        codec, sampling_rate = self.stream_format()
        if answered:
            self._execute_answered(answer, call_control_id=call_control_id, agency_id=agency_id,
                                   credentials=credentials, api_base=api_base)
            return

        def run(client: telnyx.Telnyx) -> None:
            actions = client.calls.actions
            if answer.kind == "hold" and answer.hold is not None:
                # The hold audio plays once the call is answered (continue_hold).
                actions.answer(call_control_id, client_state=_encode_state(HOLD_STATE_PREFIX + answer.hold.state),
                               command_id=f"{command_id}:answer")
            elif answer.kind == "stream" and answer.join_url:
                actions.answer(call_control_id, stream_url=answer.join_url, stream_track="inbound_track",
                               stream_codec=codec, stream_bidirectional_mode="rtp",  # type: ignore[arg-type]
                               stream_bidirectional_codec=codec,  # type: ignore[arg-type]
                               stream_bidirectional_target_legs="opposite",
                               # Not a named argument of answer() in the SDK; the API takes it.
                               extra_body={"stream_bidirectional_sampling_rate": sampling_rate},
                               command_id=f"{command_id}:answer")
            elif answer.kind == "dial" and answer.number:
                actions.transfer(call_control_id, to=answer.number, command_id=f"{command_id}:transfer")
            else:
                # A parked call cannot speak: answer it, speak on call.answered, hang up on
                # call.speak.ended (see continue_say). The message rides in client_state.
                state = f"{SAY_STATE_PREFIX}{agency_id}:{answer.message or ''}"
                actions.answer(call_control_id, client_state=_encode_state(state), command_id=f"{command_id}:answer")

        self._with_client(credentials, api_base, run, call_control_id)

    def _execute_answered(self, answer: Answer, *, call_control_id: str, agency_id: str,
                          credentials: Mapping[str, str], api_base: str) -> None:
        """``answer`` on a call held so far: the stream starts on the answered call,
        the fallback is a transfer, the apology is spoken then hung up (continue_say)."""
        if answer.kind == "hold" and answer.hold is not None:
            self.play_hold(call_control_id, answer.hold, credentials=credentials, api_base=api_base)
            return
        codec, sampling_rate = self.stream_format()

        def run(client: telnyx.Telnyx) -> None:
            actions = client.calls.actions
            if answer.kind == "stream" and answer.join_url:
                actions.start_streaming(call_control_id, stream_url=answer.join_url, stream_track="inbound_track",
                                        stream_codec=codec,  # type: ignore[arg-type]
                                        stream_bidirectional_mode="rtp",
                                        stream_bidirectional_codec=codec,  # type: ignore[arg-type]
                                        stream_bidirectional_target_legs="opposite",
                                        stream_bidirectional_sampling_rate=sampling_rate,  # type: ignore[arg-type]
                                        command_id=f"{call_control_id}:stream")
            elif answer.kind == "dial" and answer.number:
                actions.transfer(call_control_id, to=answer.number, command_id=f"{call_control_id}:transfer")
            else:
                state = f"{SAY_STATE_PREFIX}{agency_id}:{answer.message or ''}"
                actions.speak(call_control_id, payload=answer.message or "", voice=SPEAK_VOICE,
                              language=SPEAK_LANGUAGE, client_state=_encode_state(state),
                              command_id=f"{call_control_id}:speak")

        self._with_client(credentials, api_base, run, call_control_id)

    def play_hold(self, call_control_id: str, hold: Hold, *, credentials: Mapping[str, str], api_base: str) -> None:
        """One round of hold on an answered call: the message (first round), else the
        hold audio, else a spoken reminder. Its end (call.speak.ended /
        call.playback.ended, carrying ``hold.state``) is the next try."""
        state = _encode_state(HOLD_STATE_PREFIX + hold.state)
        command_id = f"{call_control_id}:hold:{hold.round}"

        def run(client: telnyx.Telnyx) -> None:
            actions = client.calls.actions
            if hold.audio_url and not hold.message:
                actions.start_playback(call_control_id, audio_url=hold.audio_url, client_state=state,
                                       command_id=f"{command_id}:play")
            else:
                actions.speak(call_control_id, payload=hold.message or HOLD_REMINDER, voice=SPEAK_VOICE,
                              language=SPEAK_LANGUAGE, client_state=state, command_id=f"{command_id}:speak")

        self._with_client(credentials, api_base, run, call_control_id)

    def continue_say(self, event: CallControlEvent, *, credentials: Mapping[str, str], api_base: str) -> bool:
        """Next step of a speak-and-hang-up answer (the caller verified the event with the
        agency named in its state); False when the event is not such a step."""
        if event.say is None or event.event_type not in ("call.answered", "call.speak.ended"):
            return False
        message = event.say[1]

        def run(client: telnyx.Telnyx) -> None:
            actions = client.calls.actions
            if event.event_type == "call.answered":
                actions.speak(event.call_control_id, payload=message, voice=SPEAK_VOICE, language=SPEAK_LANGUAGE,
                              client_state=_encode_state(event.client_state),
                              command_id=f"{event.call_control_id}:speak")
            else:
                actions.hangup(event.call_control_id, command_id=f"{event.call_control_id}:hangup")

        self._with_client(credentials, api_base, run, event.call_control_id)
        return True

    @staticmethod
    def _with_client(credentials: Mapping[str, str], api_base: str, run: Any, call_control_id: str) -> None:
        api_key = credentials.get("api_key")
        if not api_key:
            log.error("telnyx call %s: the agency has no Telnyx API key; cannot command the call", call_control_id)
            return
        client = sdk.telnyx_client(api_key, api_base=api_base, timeout=5.0)
        try:
            run(client)
        except telnyx.APIError as exc:
            # The webhook is answered 200 regardless: Telnyx retrying it cannot fix this.
            log.error("telnyx call %s: command failed: %s", call_control_id, type(exc).__name__)
        finally:
            client.close()


def _encode_state(value: str) -> str:
    return base64.b64encode(value.encode("utf-8")).decode("ascii")


def _text(value: Any) -> str:
    """A JSON value as text; "" when absent or not storable (a NUL, an unpaired surrogate)."""
    text = str(value or "")
    return text if storable(text) else ""


def _decode_state(value: Any) -> str:
    if not isinstance(value, str) or not value:
        return ""
    try:
        return base64.b64decode(value, validate=True).decode("utf-8")
    except ValueError:  # not base64 (binascii.Error; non-ASCII text), or not UTF-8
        return ""


def _seconds_between(start: Any, end: Any) -> int | None:
    try:
        started = datetime.fromisoformat(str(start).replace("Z", "+00:00"))
        ended = datetime.fromisoformat(str(end).replace("Z", "+00:00"))
        if started.tzinfo is None or ended.tzinfo is None:
            return None
        seconds = int((ended - started).total_seconds())
    except (ValueError, OverflowError):  # OverflowError: an offset past the datetime limits
        return None
    return seconds if 0 <= seconds <= MAX_DURATION_SECONDS else None


class TelnyxDialer(_TelnyxStream, CarrierDialer):
    """Outbound through Call Control: dial with the stream attached, events to our URL."""

    sdk_client = staticmethod(sdk.telnyx_client)

    def account(self, credentials: Mapping[str, str]) -> str:
        # The API key is the only account identity we hold, and a secret: a digest names it.
        return hashlib.sha256(credentials["api_key"].encode()).hexdigest()[:24]

    def secrets(self, credentials: Mapping[str, str]) -> tuple[str, ...]:
        return (credentials["api_key"],)

    def place_call(self, client: Any, credentials: Mapping[str, str], dial: OutboundDial) -> str:
        codec, sampling_rate = self.stream_format()
        response = client.calls.dial(
            connection_id=credentials["connection_id"], to=dial.to, from_=dial.from_number, stream_url=dial.join_url,
            stream_track="inbound_track", stream_bidirectional_mode="rtp", stream_codec=codec,
            stream_bidirectional_codec=codec, stream_bidirectional_sampling_rate=sampling_rate,
            stream_bidirectional_target_legs="opposite", timeout_secs=dial.ring_timeout,
            webhook_url=dial.callback_url("call-control"), command_id=dial.command_id,
            # Asynchronous AMD: the stream starts at answer; call.machine.premium.detection.ended
            # then, for a machine, call.machine.premium.greeting.ended arrive at the same webhook.
            answering_machine_detection=self.MACHINE_DETECTION)
        return str(response.data.call_control_id)

    # Premium: the only Telnyx detection that tells a fax apart, and it reports the end of
    # a machine's greeting (beep_detected / no_beep_detected). The standard events
    # (call.machine.detection.ended / greeting.ended) are understood too.
    MACHINE_DETECTION: Final = "premium"

    def hang_up(self, client: Any, carrier_call_id: str) -> None:
        client.calls.actions.hangup(carrier_call_id, command_id=f"{carrier_call_id}:hangup")

    def leave_message(self, client: Any, carrier_call_id: str, message: MachineMessage,
                      callback_url: Callable[[str], str]) -> None:
        # The agent's stream stops first (it would talk over the message); the hang-up
        # follows call.speak.ended / call.playback.ended (services/answering_machine.py).
        actions = client.calls.actions
        actions.stop_streaming(carrier_call_id, command_id=f"{carrier_call_id}:stop-stream")
        if message.audio_url:
            actions.start_playback(carrier_call_id, audio_url=message.audio_url,
                                   command_id=f"{carrier_call_id}:voicemail")
        else:
            actions.speak(carrier_call_id, payload=message.text or "", voice=SPEAK_VOICE, language=SPEAK_LANGUAGE,
                          command_id=f"{carrier_call_id}:voicemail")

    def error_status(self, exc: Exception) -> tuple[int | None, str] | None:
        if isinstance(exc, telnyx.APIStatusError):
            detail = ""
            body = exc.body
            if isinstance(body, dict) and isinstance(body.get("errors"), list) and body["errors"]:
                first = body["errors"][0]
                detail = f"{first.get('title', '')}: {first.get('detail', '')} (code {first.get('code', '')})"
            return exc.status_code, detail or exc.__class__.__name__
        if isinstance(exc, (telnyx.APITimeoutError, telnyx.APIConnectionError)):
            return None, f"{exc.__class__.__name__}: carrier unreachable or timed out"
        return None


class TelnyxNumbers(NumberProvisioner):
    """Phone numbers are assigned to a connection: a TeXML application (voice URL and
    status callback) or a Call Control application (one webhook URL for every event)."""

    name = NAME
    credential_fields = ("api_key",)

    def find(self, client: Any, e164: str) -> CarrierNumber | None:
        for found in client.phone_numbers.list(filter={"phone_number": e164}).data:
            if found.phone_number == e164:
                return CarrierNumber(e164=e164, carrier_id=str(found.id), routing=found.connection_id or "")
        return None

    def current_urls(self, client: Any, number: CarrierNumber) -> dict[str, str | None]:
        if not number.routing:
            return {}
        try:
            texml = client.texml_applications.retrieve(number.routing).data
            return {INBOUND: texml.voice_url or None, STATUS: texml.status_callback or None}
        except telnyx.NotFoundError:
            pass
        try:
            return {CALL_CONTROL: client.call_control_applications.retrieve(number.routing).data.webhook_event_url
                    or None}
        except telnyx.NotFoundError:
            return {}  # a SIP (credential, IP, FQDN) connection: its calls never reach us

    def point_here(self, client: Any, number: CarrierNumber, urls: Mapping[str, str],
                   credentials: Mapping[str, str]) -> dict[str, str]:
        in_use = self.already_here(client, number, urls)
        if in_use is not None:
            return in_use
        connection_id = credentials.get("connection_id") or ""
        if connection_id:
            # The agency's Call Control application, which this service already dials with.
            try:
                application = client.call_control_applications.retrieve(connection_id).data
            except telnyx.NotFoundError:
                raise NumberSetupRefused("the stored Telnyx connection_id is not a Call Control application of "
                                         "this account") from None
            if application.webhook_event_url != urls[CALL_CONTROL]:
                client.call_control_applications.update(
                    connection_id, application_name=application.application_name or application_name(urls),
                    webhook_event_url=urls[CALL_CONTROL], webhook_api_version="2")
            in_use = {CALL_CONTROL: urls[CALL_CONTROL]}
        else:
            connection_id = self._own_texml_application(client, urls)
            in_use = {INBOUND: urls[INBOUND], STATUS: urls[STATUS]}
        if number.routing != connection_id:
            client.phone_numbers.update(number.carrier_id, connection_id=connection_id)
        return in_use

    @staticmethod
    def _own_texml_application(client: Any, urls: Mapping[str, str]) -> str:
        """This service's TeXML application in the account (found by name, else created)."""
        name = application_name(urls)
        for application in client.texml_applications.list(filter={"friendly_name": name}).data:
            if application.friendly_name == name:
                if application.voice_url != urls[INBOUND] or application.status_callback != urls[STATUS]:
                    client.texml_applications.update(str(application.id), friendly_name=name,
                                                     voice_url=urls[INBOUND], voice_method="post",
                                                     status_callback=urls[STATUS], status_callback_method="post")
                return str(application.id)
        created = client.texml_applications.create(friendly_name=name, voice_url=urls[INBOUND], voice_method="post",
                                                   status_callback=urls[STATUS], status_callback_method="post")
        return str(created.data.id)


TELNYX = CarrierSpec(
    name=NAME, title="Telnyx",
    # public_key verifies webhooks (both products); a dial needs the API key and the
    # Call Control connection (application) id.
    credentials=(CredentialField("api_key"), CredentialField("public_key", required=False, secret=False),
                 CredentialField("connection_id", secret=False)),
    api_base_setting="telnyx_api_base",
    adapter=TelnyxTexmlAdapter, dialer=TelnyxDialer,
    inbound_path="texml",  # the TeXML application's voice URL
    status_path="status",  # its status callback URL
    call_control=TelnyxCallControl,  # the Call Control application's webhook URL: /webhooks/telnyx/call-control
    numbers=TelnyxNumbers,
)
