"""Telnyx Call Control: JSON events in, REST commands out (answer, stream, transfer, speak,
hang up), answering-machine detection results, and holding a caller for a free slot.

The events are signed like TeXML's (telnyx_base.py).
"""
from __future__ import annotations

import base64
import json
import logging
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any, Mapping

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
    Hold,
    InboundCall,
    MachineDetection,
    StatusEvent,
    WebhookRequest,
)
from .telnyx_base import SPEAK_LANGUAGE, SPEAK_VOICE, TelnyxSigned

# The SDK (~60 MB, 2+ s to import) is imported when a Call Control command first needs it
# (sdk.lazy_module).
if TYPE_CHECKING:
    import telnyx
else:
    telnyx = sdk.lazy_module("telnyx")

log = logging.getLogger(__name__)

# Marks the client_state of a call we answered only to speak a message and hang up.
SAY_STATE_PREFIX = "telephony-say:"
# Marks the client_state of a caller we hold for a free slot (services/capacity.py).
HOLD_STATE_PREFIX = "telephony-hold:"
# A parked or answered call cannot pause: without hold audio, each round speaks this.
HOLD_REMINDER = "Thank you for holding. We will connect you as soon as a line is free."


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


class TelnyxCallControl(TelnyxSigned, CarrierAdapter):
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
