"""Handing a live carrier call to a person, per carrier: the redirect, the person's leg
and how its outcome is reported, and taking the caller back to an agent.

Cold transfer, on each carrier's own terms:

- Twilio: the live call is updated with TwiML ``<Dial action=...>``; when the person's
  leg ends, Twilio asks the action URL what to do next (DialCallStatus tells how it
  ended): hang up after a conversation, or stream the caller to a new agent call.
- Plivo: the Call transfer API points the call at our URL, which answers ``<Dial
  action=...>``; the action URL gets DialStatus and answers the same way.
- Telnyx: the Call Control ``transfer`` command dials the person and bridges on answer,
  reporting the person's leg to our webhook (call.answered, call.hangup with its cause);
  the caller's leg stays ours when nobody answers, and ``streaming_start`` gives it a
  new agent call. The agent's stream is stopped once the transfer is under way, so the
  caller hears the ringback, not the agent.

Warm transfer: the caller waits on hold while the person's phone rings; the person
first hears a whisper (the agent's summary) and accepts with a key, then the two are
bridged. Twilio and Plivo put the caller in a conference of their own (hold music) and
dial the person with a URL that answers with the whisper; accepting joins the person to
the conference. Telnyx dials the person, speaks the whisper with a digit gather, and
bridges the two legs. Declined, unanswered or failed: the caller is streamed to a new
agent call through the REST API (Twilio call update, Plivo call transfer, Telnyx
streaming_start).

Like the other adapters these know nothing of agencies or databases; the use case is
``services/transfers.py``.
"""
from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, ClassVar

from twilio.twiml.voice_response import Dial, VoiceResponse

from . import sdk
from .base import WebhookRequest, XmlCarrierAdapter, parse_int
from .plivo import PlivoAdapter
from .telnyx_call_control import TelnyxCallControl
from .twilio import TwilioAdapter

# The Plivo SDK is imported when a Plivo transfer first needs it (sdk.lazy_module).
if TYPE_CHECKING:
    import plivo.xml as plivoxml
else:
    plivoxml = sdk.lazy_module("plivo.xml")

log = logging.getLogger(__name__)

# The outcomes of the person's leg, as services/transfers.py records them.
ANSWERED, BUSY, NO_ANSWER, DECLINED, FAILED = "answered", "busy", "no-answer", "declined", "failed"
OUTCOMES = (ANSWERED, BUSY, NO_ANSWER, DECLINED, FAILED)


@dataclass(frozen=True)
class TransferDial:
    """What to dial for a transfer, and where the carrier reports on it."""

    destination: str  # E.164 or a sip: URI (validated: services/transfer_targets.py)
    caller_id: str | None
    ring_timeout: int
    callback_url: Callable[[str], str]  # kind ("dial", "dial-result", "events") -> our URL
    command_id: str  # Telnyx idempotency key

    @property
    def is_sip(self) -> bool:
        return self.destination.lower().startswith(("sip:", "sips:"))


@dataclass(frozen=True)
class WarmDial:
    """A warm transfer: where the caller waits, whom to dial and from which number."""

    destination: str
    from_number: str  # what the person sees: the target's caller id, else our number
    ring_timeout: int
    room: str  # the conference the caller waits in (Twilio, Plivo)
    callback_url: Callable[[str], str]
    command_id: str

    @property
    def is_sip(self) -> bool:
        return self.destination.lower().startswith(("sip:", "sips:"))


@dataclass(frozen=True)
class LegReport:
    """What a carrier said about the person's leg. ``final`` False: an interim event
    (answered); True: the leg is over, with ``outcome`` (ANSWERED when they talked)."""

    final: bool
    outcome: str
    leg_id: str | None = None
    talk_seconds: int | None = None


class CallTransferer(ABC):
    name: ClassVar[str]

    @abstractmethod
    def redirect(self, client: Any, carrier_call_id: str, dial: TransferDial) -> None:
        """Hand the live call to the dial. The SDK's exceptions propagate."""

    @abstractmethod
    def parse_report(self, request: WebhookRequest) -> LegReport | None:
        """The person's leg as a callback reports it; None when it says nothing we track."""

    def after_report(self, report: LegReport, join_url: str | None, goodbye: str) -> str:
        """XML carriers: what the caller's call does once the person's leg is over: hang up
        after a conversation, else stream to the new agent call (or say goodbye)."""
        return ""

    def dial_xml(self, dial: TransferDial) -> str:
        """XML carriers that fetch a URL to learn what to dial (Plivo)."""
        raise NotImplementedError

    def resume(self, client: Any, carrier_call_id: str, join_url: str, *, command_id: str) -> None:
        """REST carriers: put the caller back on an agent call (Telnyx)."""

    # -- warm -------------------------------------------------------------------------

    def hold(self, client: Any, carrier_call_id: str, dial: WarmDial) -> None:
        """Put the caller on hold (the agent's leg ends)."""
        raise NotImplementedError(f"{self.name}: no warm transfer")

    def dial_person(self, client: Any, dial: WarmDial, *, credentials: Any) -> str:
        """Dial the person; returns their leg's id."""
        raise NotImplementedError(f"{self.name}: no warm transfer")

    def whisper_xml(self, whisper: str, accept_digit: str | None, result_url: str, room: str) -> str:
        """XML carriers: what the person hears on answering (and the key gather)."""
        raise NotImplementedError

    def join_xml(self, room: str) -> str:
        """XML carriers: the person accepted: into the caller's conference."""
        raise NotImplementedError

    def goodbye_xml(self) -> str:
        raise NotImplementedError

    def parse_digits(self, request: WebhookRequest) -> str:
        return request.field("Digits")

    def parse_leg_status(self, request: WebhookRequest) -> LegReport | None:
        """The person's leg's status callback (warm): final reports only."""
        return None

    def resume_live(self, client: Any, carrier_call_id: str, join_url: str, *, resume_url: str,
                    command_id: str) -> None:
        """Take the caller out of the hold (warm) and stream them to an agent call."""
        self.resume(client, carrier_call_id, join_url, command_id=command_id)


class XmlCallTransferer(CallTransferer):
    """What the carriers whose calls run on XML (Twilio, Plivo) share: the goodbye, and the
    person's leg's final status callback, read from the carrier's own field names."""

    adapter: ClassVar[XmlCarrierAdapter]
    _LEG_STATUS: ClassVar[dict[str, str]]
    _LEG_ID_FIELD: ClassVar[str]
    _LEG_DURATION_FIELD: ClassVar[str]

    def goodbye_xml(self) -> str:
        return self.adapter.say_and_hangup("Thank you. Goodbye.")

    def parse_leg_status(self, request: WebhookRequest) -> LegReport | None:
        status = request.field("CallStatus").lower()
        if status not in self._LEG_STATUS:
            return None
        return LegReport(final=True, outcome=self._LEG_STATUS[status],
                         leg_id=request.field(self._LEG_ID_FIELD) or None,
                         talk_seconds=parse_int(request.field(self._LEG_DURATION_FIELD)))


class TwilioTransferer(XmlCallTransferer):
    name = "twilio"
    # DialCallStatus -> outcome ("completed"/"answered": they talked).
    _OUTCOMES = {"completed": ANSWERED, "answered": ANSWERED, "busy": BUSY, "no-answer": NO_ANSWER,
                 "failed": FAILED, "canceled": FAILED}
    adapter: ClassVar[TwilioAdapter] = TwilioAdapter()

    def dial_twiml(self, dial: TransferDial) -> str:
        response = VoiceResponse()
        verb = Dial(action=dial.callback_url("dial-result"), method="POST", timeout=dial.ring_timeout,
                    caller_id=dial.caller_id)
        if dial.is_sip:
            verb.sip(dial.destination)
        else:
            verb.number(dial.destination)
        response.append(verb)
        return str(response)

    def redirect(self, client: Any, carrier_call_id: str, dial: TransferDial) -> None:
        client.calls(carrier_call_id).update(twiml=self.dial_twiml(dial))

    def parse_report(self, request: WebhookRequest) -> LegReport | None:
        status = request.field("DialCallStatus").lower()
        if status not in self._OUTCOMES:
            return None
        return LegReport(final=True, outcome=self._OUTCOMES[status], leg_id=request.field("DialCallSid") or None,
                         talk_seconds=parse_int(request.field("DialCallDuration")))

    def after_report(self, report: LegReport, join_url: str | None, goodbye: str) -> str:
        if report.outcome == ANSWERED:
            response = VoiceResponse()
            response.hangup()
            return str(response)
        return self.adapter.stream_response(join_url) if join_url else self.adapter.say_and_hangup(goodbye)


    _LEG_STATUS = {"busy": BUSY, "no-answer": NO_ANSWER, "failed": FAILED, "canceled": FAILED,
                   "completed": ANSWERED}
    _LEG_ID_FIELD, _LEG_DURATION_FIELD = "CallSid", "CallDuration"

    def hold(self, client: Any, carrier_call_id: str, dial: WarmDial) -> None:
        hold = VoiceResponse()
        # The caller waits alone (Twilio's hold music) until the person joins; the room
        # ends when the caller leaves.
        hold.dial().conference(dial.room, start_conference_on_enter=False, end_conference_on_exit=True,
                               beep=False)
        client.calls(carrier_call_id).update(twiml=str(hold))

    def dial_person(self, client: Any, dial: WarmDial, *, credentials: Any) -> str:
        leg = client.calls.create(to=dial.destination, from_=dial.from_number, url=dial.callback_url("whisper"),
                                  method="POST", status_callback=dial.callback_url("leg-status"),
                                  status_callback_method="POST", timeout=dial.ring_timeout)
        return str(leg.sid)

    def whisper_xml(self, whisper: str, accept_digit: str | None, result_url: str, room: str) -> str:
        response = VoiceResponse()
        if accept_digit is None:
            response.say(whisper)
            response.dial().conference(room, start_conference_on_enter=True, end_conference_on_exit=True, beep=False)
            return str(response)
        gather = response.gather(num_digits=1, action=result_url, method="POST", timeout=8)
        gather.say(whisper)
        response.say("Goodbye.")
        response.hangup()
        return str(response)

    def join_xml(self, room: str) -> str:
        response = VoiceResponse()
        response.dial().conference(room, start_conference_on_enter=True, end_conference_on_exit=True, beep=False)
        return str(response)


    def resume_live(self, client: Any, carrier_call_id: str, join_url: str, *, resume_url: str,
                    command_id: str) -> None:
        client.calls(carrier_call_id).update(twiml=self.adapter.stream_response(join_url))


class PlivoTransferer(XmlCallTransferer):
    name = "plivo"
    # Dial action DialStatus -> outcome. A Dial "timeout" is the ring timeout running out.
    _OUTCOMES = {"completed": ANSWERED, "answer": ANSWERED, "busy": BUSY, "no-answer": NO_ANSWER,
                 "timeout": NO_ANSWER, "failed": FAILED, "cancel": FAILED}
    adapter: ClassVar[PlivoAdapter] = PlivoAdapter()

    def redirect(self, client: Any, carrier_call_id: str, dial: TransferDial) -> None:
        client.calls.update(carrier_call_id, legs="aleg", aleg_url=dial.callback_url("dial"), aleg_method="POST")

    def dial_xml(self, dial: TransferDial) -> str:
        verb = plivoxml.DialElement(action=dial.callback_url("dial-result"), method="POST",
                                    timeout=dial.ring_timeout, caller_id=dial.caller_id, redirect=True)
        if dial.is_sip:
            verb.add(plivoxml.UserElement(dial.destination))
        else:
            verb.add(plivoxml.NumberElement(dial.destination.lstrip("+")))
        return plivoxml.ResponseElement().add(verb).to_string(False)

    def parse_report(self, request: WebhookRequest) -> LegReport | None:
        status = request.field("DialStatus").lower()
        if status not in self._OUTCOMES:
            return None
        return LegReport(final=True, outcome=self._OUTCOMES[status], leg_id=request.field("DialBLegUUID") or None,
                         talk_seconds=parse_int(request.field("DialBLegDuration")))

    def after_report(self, report: LegReport, join_url: str | None, goodbye: str) -> str:
        if report.outcome == ANSWERED:
            return plivoxml.ResponseElement().add(plivoxml.HangupElement()).to_string(False)
        return self.adapter.stream_response(join_url) if join_url else self.adapter.say_and_hangup(goodbye)


    _LEG_STATUS = {"busy": BUSY, "no-answer": NO_ANSWER, "timeout": NO_ANSWER, "failed": FAILED,
                   "cancel": FAILED, "completed": ANSWERED}
    _LEG_ID_FIELD, _LEG_DURATION_FIELD = "CallUUID", "Duration"

    def hold(self, client: Any, carrier_call_id: str, dial: WarmDial) -> None:
        client.calls.update(carrier_call_id, legs="aleg", aleg_url=dial.callback_url("hold"), aleg_method="POST")

    def dial_person(self, client: Any, dial: WarmDial, *, credentials: Any) -> str:
        created = client.calls.create(from_=dial.from_number.lstrip("+"), to_=dial.destination.lstrip("+"),
                                      answer_url=dial.callback_url("whisper"), answer_method="POST",
                                      hangup_url=dial.callback_url("leg-status"), hangup_method="POST",
                                      ring_timeout=dial.ring_timeout)
        request_uuid = created["request_uuid"] if isinstance(created, dict) else created.request_uuid
        return str(request_uuid[0] if isinstance(request_uuid, list) else request_uuid)

    def hold_xml(self, room: str) -> str:
        conference = plivoxml.ConferenceElement(room, start_conference_on_enter=False, end_conference_on_exit=True)
        return plivoxml.ResponseElement().add(conference).to_string(False)

    def whisper_xml(self, whisper: str, accept_digit: str | None, result_url: str, room: str) -> str:
        response = plivoxml.ResponseElement()
        if accept_digit is None:
            response.add(plivoxml.SpeakElement(whisper))
            response.add(plivoxml.ConferenceElement(room, start_conference_on_enter=True,
                                                    end_conference_on_exit=True))
            return response.to_string(False)
        gather = plivoxml.GetDigitsElement(action=result_url, method="POST", num_digits=1, timeout=8, retries=1)
        gather.add(plivoxml.SpeakElement(whisper))
        response.add(gather)
        response.add(plivoxml.SpeakElement("Goodbye."))
        response.add(plivoxml.HangupElement())
        return response.to_string(False)

    def join_xml(self, room: str) -> str:
        conference = plivoxml.ConferenceElement(room, start_conference_on_enter=True, end_conference_on_exit=True)
        return plivoxml.ResponseElement().add(conference).to_string(False)


    def resume_live(self, client: Any, carrier_call_id: str, join_url: str, *, resume_url: str,
                    command_id: str) -> None:
        # Plivo fetches resume_url, which answers with the stream of the new agent call.
        client.calls.update(carrier_call_id, legs="aleg", aleg_url=resume_url, aleg_method="POST")


class TelnyxTransferer(CallTransferer):
    name = "telnyx"
    # call.hangup causes of the person's leg before it was answered -> outcome.
    _CAUSES = {"user_busy": BUSY, "timeout": NO_ANSWER, "no_answer": NO_ANSWER, "originator_cancel": FAILED,
               "call_rejected": BUSY, "not_found": FAILED, "unspecified": FAILED}

    def __init__(self, call_control: TelnyxCallControl) -> None:
        self.call_control = call_control  # parses signed events; knows the stream codec

    def redirect(self, client: Any, carrier_call_id: str, dial: TransferDial) -> None:
        actions = client.calls.actions
        extra: dict[str, Any] = {"from_": dial.caller_id} if dial.caller_id else {}
        actions.transfer(carrier_call_id, to=dial.destination, timeout_secs=dial.ring_timeout,
                         webhook_url=dial.callback_url("events"), command_id=f"{dial.command_id}:transfer", **extra)
        try:  # the caller hears the ringback, not the agent, while the person's phone rings
            actions.stop_streaming(carrier_call_id, command_id=f"{dial.command_id}:stream-stop")
        except Exception:  # noqa: BLE001 - the transfer is under way; a lingering stream is harmless
            log.warning("telnyx call %s: could not stop the agent's stream", carrier_call_id)

    def parse_report(self, request: WebhookRequest) -> LegReport | None:
        event = self.call_control.parse_event(request)
        if event.event_type == "call.answered":
            return LegReport(final=False, outcome=ANSWERED, leg_id=event.call_control_id or None)
        if event.event_type != "call.hangup":
            return None
        cause = str(event.payload.get("hangup_cause") or "")
        # "normal_clearing" after an answer is a conversation that ended; services/transfers.py
        # knows whether the leg was answered and keeps ANSWERED then.
        return LegReport(final=True, outcome=self._CAUSES.get(cause, ANSWERED if cause == "normal_clearing"
                                                              else FAILED),
                         leg_id=event.call_control_id or None)

    def resume(self, client: Any, carrier_call_id: str, join_url: str, *, command_id: str) -> None:
        codec, sampling_rate = self.call_control.stream_format()
        client.calls.actions.start_streaming(
            carrier_call_id, stream_url=join_url, stream_track="inbound_track", stream_codec=codec,
            stream_bidirectional_mode="rtp", stream_bidirectional_codec=codec,
            stream_bidirectional_target_legs="opposite", stream_bidirectional_sampling_rate=sampling_rate,
            command_id=f"{command_id}:resume")

    def hold(self, client: Any, carrier_call_id: str, dial: WarmDial) -> None:
        actions = client.calls.actions
        try:
            actions.stop_streaming(carrier_call_id, command_id=f"{dial.command_id}:stream-stop")
        except Exception:  # noqa: BLE001 - a lingering stream only delays the hold message
            log.warning("telnyx call %s: could not stop the agent's stream", carrier_call_id)
        actions.speak(carrier_call_id, payload=HOLD_MESSAGE, voice="female", language="en-US",
                      command_id=f"{dial.command_id}:hold")

    def dial_person(self, client: Any, dial: WarmDial, *, credentials: Any) -> str:
        created = client.calls.dial(connection_id=credentials["connection_id"], to=dial.destination,
                                    from_=dial.from_number, timeout_secs=dial.ring_timeout,
                                    webhook_url=dial.callback_url("events"), command_id=f"{dial.command_id}:dial")
        return str(created.data.call_control_id)

    def whisper(self, client: Any, leg_id: str, whisper: str, accept_digit: str, *, command_id: str) -> None:
        client.calls.actions.gather_using_speak(leg_id, payload=whisper, voice="female", language="en-US",
                                                maximum_digits=1, minimum_digits=1, timeout_millis=8000,
                                                command_id=f"{command_id}:whisper")

    def bridge(self, client: Any, carrier_call_id: str, leg_id: str, *, command_id: str) -> None:
        client.calls.actions.bridge(carrier_call_id, call_control_id_to_bridge_with=leg_id,
                                    command_id=f"{command_id}:bridge")

    def hang_up_leg(self, client: Any, leg_id: str, *, command_id: str) -> None:
        client.calls.actions.hangup(leg_id, command_id=f"{command_id}:decline")

    def parse_event(self, request: WebhookRequest) -> tuple[str, str, str]:
        """(event type, leg id, digits) of a Call Control event of the person's leg."""
        event = self.call_control.parse_event(request)
        return event.event_type, event.call_control_id, str(event.payload.get("digits") or "")


HOLD_MESSAGE = "Please hold while I connect you."
