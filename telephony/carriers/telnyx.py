"""Telnyx: the carrier's spec, its TeXML adapter (Twilio-compatible XML), outbound dialer
and number provisioning.

Call Control (JSON events and REST commands, answering-machine detection, hold) is in
telnyx_call_control.py; what the products share (the Ed25519 signature, the stream's
codec) in telnyx_base.py.
"""
from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING, Any, Callable, Final, Mapping

from . import sdk
from .base import CarrierDialer, MachineMessage, OutboundDial
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
from .telnyx_base import NAME, SPEAK_LANGUAGE, SPEAK_VOICE, TelnyxSigned, TelnyxStream
from .telnyx_call_control import TelnyxCallControl
from .twilio import TwilioAdapter

# The SDK (~60 MB, 2+ s to import) is imported when a Telnyx dial or number set-up first
# needs it (sdk.lazy_module).
if TYPE_CHECKING:
    import telnyx
else:
    telnyx = sdk.lazy_module("telnyx")


class TelnyxTexmlAdapter(TelnyxSigned, TwilioAdapter):
    """TeXML is Twilio-compatible: the same form fields, status callbacks and verbs.

    Differences: the Ed25519 signature, and <Stream> needs bidirectional RTP with one
    codec for both directions (otherwise Telnyx streams one way only)."""

    def _stream_attributes(self) -> dict[str, str]:
        codec, sampling_rate = self.stream_format()
        return {"bidirectional_mode": "rtp", "codec": codec, "bidirectional_codec": codec,
                "bidirectional_sampling_rate": str(sampling_rate)}


class TelnyxDialer(TelnyxStream, CarrierDialer):
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
