"""The one interface every carrier adapter implements, and the plain values it speaks.

An adapter knows one carrier's webhook dialect: how it signs requests, which form or
JSON fields carry the call, and which XML makes the carrier stream audio, dial a number
or speak. A dialer knows the same carrier's REST side for outbound calls: its official
SDK client, the account its calls-per-second limit counts, the dial itself and what the
SDK's errors mean. Neither knows about agencies, databases or Ultravox: the use cases in
``telephony.services`` drive them. Each carrier module ends with its description (a
``spec.CarrierSpec`` naming its adapters, dialer, credential fields, webhook paths...);
adding a carrier is one new module and a line in ``registry.py``.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, Callable, ClassVar, Literal, Mapping, Self

from werkzeug.datastructures import Headers, MultiDict

from ..config import DEFAULT_TELNYX_STREAM_CODEC, TELNYX_STREAM_FORMATS, Config
from ..text import storable


@dataclass(frozen=True)
class CarrierSettings:
    """The plain values carrier adapters and dialers are built with."""

    telnyx_codec: str = DEFAULT_TELNYX_STREAM_CODEC
    telnyx_sampling_rate: int = TELNYX_STREAM_FORMATS[DEFAULT_TELNYX_STREAM_CODEC]

    @classmethod
    def from_config(cls, config: "Config") -> "CarrierSettings":
        return cls(telnyx_codec=config.telnyx_stream_codec, telnyx_sampling_rate=config.telnyx_stream_sampling_rate)


@dataclass(frozen=True)
class WebhookRequest:
    """A carrier's HTTP request, as plain values (built by the blueprint).

    ``public_url`` is the URL the carrier called (PUBLIC_BASE_URL + path + query), which
    is what Twilio and Plivo sign; behind a TLS-terminating proxy the URL the app sees
    differs from it.
    """

    method: str
    public_url: str
    headers: Headers
    form: MultiDict[str, str]  # every value of repeated fields; empty for JSON bodies
    body: bytes  # raw, exactly as received (Telnyx signs these bytes)

    def field(self, name: str) -> str:
        """The field's value, trimmed; "" when absent, sent twice with different values
        (which one would the carrier mean?) or not storable (a NUL character)."""
        values = {value.strip() for value in self.form.getlist(name)}
        if len(values) != 1:
            return ""
        value = values.pop()
        return value if storable(value) else ""


@dataclass(frozen=True)
class InboundCall:
    carrier_call_id: str
    from_number: str
    to_number: str  # as the carrier sent it; the service normalises it to E.164


@dataclass(frozen=True)
class StatusEvent:
    carrier_call_id: str
    status: str  # a telephony.call_states status
    sequence: int | None = None  # Twilio/TeXML SequenceNumber: orders callbacks of one call
    duration_seconds: int | None = None
    event_id: str | None = None  # Telnyx Call Control event id (deduplicated in the database)


@dataclass(frozen=True)
class Hold:
    """Keep the caller waiting (every slot of the agency's Ultravox plan is taken), then
    ask us again: an XML carrier fetches ``redirect_url`` (POST) once the hold audio
    ends; an event-driven one (Telnyx Call Control) carries ``state`` in client_state."""

    redirect_url: str
    state: str
    round: int  # holds so far; 0: the caller has just arrived
    message: str | None = None  # spoken first (the first round)
    audio_url: str | None = None  # hold audio, played once per round
    pause_seconds: int = 5  # without hold audio: how long to wait before asking again


@dataclass(frozen=True)
class Answer:
    """What the carrier should do with the caller: carrier-neutral, rendered by an adapter."""

    kind: Literal["stream", "dial", "say", "hold"]
    join_url: str | None = None
    number: str | None = None
    message: str | None = None
    hold: Hold | None = None

    @classmethod
    def stream(cls, join_url: str) -> "Answer":
        return cls("stream", join_url=join_url)

    @classmethod
    def dial(cls, number: str) -> "Answer":
        return cls("dial", number=number)

    @classmethod
    def say(cls, message: str) -> "Answer":
        return cls("say", message=message)

    @classmethod
    def on_hold(cls, hold: Hold) -> "Answer":
        return cls("hold", hold=hold)


class CarrierAdapter(ABC):
    """One carrier's webhook dialect: signatures and fields. Stateless: one instance per
    carrier and app, built by the app's ``registry.CarrierRegistry``."""

    name: ClassVar[str]  # the carrier's name (its CarrierSpec.name)
    # Can keep a caller on hold and come back to us (Answer.on_hold); a carrier that
    # cannot gets the fallback instead.
    can_hold: ClassVar[bool] = False

    @classmethod
    def from_settings(cls, settings: "CarrierSettings") -> Self:
        """The instance an app uses; adapters that depend on a setting take it here."""
        return cls()

    @abstractmethod
    def verify(self, request: WebhookRequest, credentials: Mapping[str, str]) -> bool:
        """True only if the request carries a valid signature made with these credentials."""

    @abstractmethod
    def parse_inbound(self, request: WebhookRequest) -> InboundCall:
        """The call a voice webhook is about (empty strings for missing fields)."""

    @abstractmethod
    def parse_status(self, request: WebhookRequest) -> StatusEvent | None:
        """The status a callback reports, or None when it carries nothing we track."""

    def parse_machine_detection(self, request: WebhookRequest) -> "MachineDetection | None":
        """The answering-machine detection step a callback reports, or None (a carrier
        without asynchronous detection, or a callback about something else)."""
        return None


class XmlCarrierAdapter(CarrierAdapter):
    """A carrier that asks a URL what to do and obeys the XML it gets back."""

    @abstractmethod
    def stream_response(self, join_url: str) -> str:
        """XML connecting the caller to the Ultravox call at ``join_url``."""

    @abstractmethod
    def say_and_hangup(self, message: str) -> str:
        """XML speaking ``message`` and hanging up."""

    @abstractmethod
    def dial_fallback(self, number: str) -> str:
        """XML forwarding the caller to ``number`` (E.164)."""

    def hold_response(self, hold: Hold) -> str:
        """XML playing hold audio (or pausing), then redirecting to ``hold.redirect_url``
        (carriers with ``can_hold``)."""
        raise NotImplementedError(f"{self.name} cannot hold a call")

    def voicemail_response(self, message: "MachineMessage") -> str:
        """XML leaving ``message`` on an answering machine, then hanging up (carriers that
        can wait for the beep or play audio say so in their own version)."""
        return self.say_and_hangup(message.text or "")

    def render(self, answer: Answer) -> str:
        if answer.kind == "stream" and answer.join_url:
            return self.stream_response(answer.join_url)
        if answer.kind == "hold" and answer.hold is not None and self.can_hold:
            return self.hold_response(answer.hold)
        if answer.kind == "dial" and answer.number:
            return self.dial_fallback(answer.number)
        return self.say_and_hangup(answer.message or "")


@dataclass(frozen=True)
class OutboundDial:
    """What a carrier is asked to dial, and where it reports back."""

    to: str  # E.164
    from_number: str  # E.164, one of the agency's numbers with this carrier
    join_url: str  # the Ultravox call the callee is streamed to once they answer
    command_id: str  # idempotency key, where the carrier takes one (Telnyx)
    ring_timeout: int  # seconds to let it ring
    callback_url: Callable[[str], str]  # kind ("status", "answer", ...) -> our URL for this call


class CarrierDialer(ABC):
    """One carrier's REST side of an outbound call. Stateless, one instance per carrier
    and app (built by the app's ``registry.CarrierRegistry``); the SDK client is built by
    ``new_client`` and kept by the caller (``sdk.cached_client``). The credential fields a
    dial needs and the setting of the REST base URL are in the carrier's ``CarrierSpec``."""

    name: ClassVar[str]
    # The sdk.py factory: called with `secrets(...)`, api_base and timeout; never retries.
    sdk_client: ClassVar[Callable[..., Any]]

    @classmethod
    def from_settings(cls, settings: "CarrierSettings") -> Self:
        """The instance an app uses; dialers that depend on a setting take it here."""
        return cls()

    @abstractmethod
    def account(self, credentials: Mapping[str, str]) -> str:
        """Names the carrier account, the unit carriers count calls per second by. Never
        a secret: it becomes part of a rate-limit bucket name."""

    @abstractmethod
    def secrets(self, credentials: Mapping[str, str]) -> tuple[str, ...]:
        """The SDK client's credentials, in the factory's order (also its cache identity,
        of which only a digest is kept)."""

    def new_client(self, credentials: Mapping[str, str], *, api_base: str, timeout: float) -> Any:
        """The official SDK client for the account."""
        return self.sdk_client(*self.secrets(credentials), api_base=api_base, timeout=timeout)

    @abstractmethod
    def place_call(self, client: Any, credentials: Mapping[str, str], dial: OutboundDial) -> str:
        """Ask the carrier to dial; returns its call id. The SDK's exceptions propagate."""

    def error_status(self, exc: Exception) -> tuple[int | None, str] | None:
        """(HTTP status, or None when unknown, and a message) when ``exc`` is one of this
        carrier's SDK errors; None for anything else."""
        return None

    # -- acting on a live call (answering machines) ----------------------------------------

    def hang_up(self, client: Any, carrier_call_id: str) -> None:
        """End the live call now. The SDK's exceptions propagate."""
        raise NotImplementedError(f"{self.name}: hanging up a live call is not supported")

    def leave_message(self, client: Any, carrier_call_id: str, message: "MachineMessage",
                      callback_url: Callable[[str], str]) -> None:
        """Stop the agent's stream and play ``message`` on the live call, then end it
        (Telnyx: the hang-up follows the carrier's "speak/playback ended" event, see
        services/answering_machine.py). The SDK's exceptions propagate."""
        raise NotImplementedError(f"{self.name}: leaving a message is not supported")


# The largest value an INTEGER column holds; carrier numbers beyond it are malformed.
MAX_INT = 2**31 - 1
# A call longer than a week is not a call: a larger duration is dropped, not stored.
MAX_DURATION_SECONDS = 7 * 24 * 3600


def parse_int(value: str | None, maximum: int = MAX_INT) -> int | None:
    """A non-negative integer form field up to ``maximum``, or None when absent,
    malformed or out of range."""
    if value in (None, "") or len(value) > 20:
        return None
    try:
        number = int(value)
    except ValueError:
        return None
    return number if 0 <= number <= maximum else None


# -- answering-machine detection ---------------------------------------------------------------

# Who answered an outbound call, in our words (each carrier's detail is kept beside it).
HUMAN, MACHINE, FAX, UNKNOWN = "human", "machine", "fax", "unknown"
ANSWERED_BY = (HUMAN, MACHINE, FAX, UNKNOWN)


@dataclass(frozen=True)
class MachineDetection:
    """One step of a carrier's asynchronous answering-machine detection.

    A verdict (``answered_by`` set) says who answered; ``greeting_ended`` says that the
    machine's greeting is over (beep or silence), the moment to leave a message. Twilio
    (DetectMessageEnd) and Plivo send one verdict; Telnyx sends a verdict, then, for a
    machine, a separate greeting-ended event."""

    carrier_call_id: str
    answered_by: str | None  # one of ANSWERED_BY, or None for a step that is not a verdict
    detail: str  # the carrier's own word (machine_end_beep, human_residence, true...)
    greeting_ended: bool = False
    # A machine verdict whose greeting's end is reported apart, later (Telnyx greeting_end).
    greeting_follows: bool = False
    event_id: str | None = None  # Telnyx event id (deduplicated in the database)


@dataclass(frozen=True)
class MachineMessage:
    """The message left on an answering machine: text the carrier speaks, or an audio URL."""

    text: str | None = None
    audio_url: str | None = None

    @classmethod
    def from_dict(cls, value: Mapping[str, Any] | None) -> "MachineMessage | None":
        if not value:
            return None
        text, audio_url = value.get("text"), value.get("audio_url")
        if not text and not audio_url:
            return None
        return cls(text=str(text) if text else None, audio_url=str(audio_url) if audio_url else None)
