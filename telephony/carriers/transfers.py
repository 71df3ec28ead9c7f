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

Like the other adapters these know nothing of agencies or databases; the use case is
``services/transfers.py``.
"""
from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, Callable, ClassVar

from plivo import plivoxml
from twilio.twiml.voice_response import Dial, VoiceResponse

from .base import WebhookRequest, parse_int
from .plivo import PlivoAdapter
from .telnyx import TelnyxCallControl
from .twilio import TwilioAdapter

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


class TwilioTransferer(CallTransferer):
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


class PlivoTransferer(CallTransferer):
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
