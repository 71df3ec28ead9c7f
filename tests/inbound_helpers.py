"""Shared pieces of the inbound-call tests: signing exactly as each carrier does,
seeding an agency with a number, reading the XML answers, and one contract every
carrier's test module runs (`InboundContract`, subclassed per carrier).

Signing recipes (carriers.md): Twilio HMAC-SHA1 over URL + sorted name/value pairs;
Telnyx Ed25519 over "timestamp|raw body" with a key made by `cryptography`; Plivo V3
HMAC-SHA256 over URL + "?" + sorted name/value pairs + "." + nonce.
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import json
import threading
import time
import uuid
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

import pytest
import requests
import responses
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import select
from sqlalchemy.exc import OperationalError

from telephony import direct_sql
from telephony.models import Call
from telephony.services import agents as agent_service
from telephony.services import inbound as inbound_service
from telephony.services import phone_numbers as number_service
from telephony.services.agencies import create_agency
from telephony.sim.common import serve_in_thread
from tests.ultravox_openapi import validate_request

PUBLIC_BASE = "https://voice.example.test"  # the `config` fixture's public_base_url
ULTRAVOX_BASE = "https://api.ultravox.ai"
ULTRAVOX_KEY = "Zk9Ht7Lm.wX7pN9fM3kLj6tRq2bGhA8yE5cZvD4sT"
AGENT_UV_ID = "3c90c3cc-0d44-4b50-8888-8dd25736052a"
NUMBER = "+14155550100"
CALLER = "+14155550199"
FALLBACK = "+14155550111"
JOIN_URL = "wss://voice.ultravox.example/calls/11111111-2222-3333-4444-555555555555/telephony"

TWILIO_SID = "AC" + "c" * 32
TWILIO_TOKEN = "twilio-auth-token-for-tests-0001"
PLIVO_ID = "MA" + "B2" * 9
PLIVO_TOKEN = "plivo-auth-token-for-tests-00001"
TELNYX_API_KEY = "KEY0123456789TESTSONLY"
_TELNYX_PRIVATE = Ed25519PrivateKey.generate()
TELNYX_PUBLIC_KEY = base64.b64encode(_TELNYX_PRIVATE.public_key().public_bytes(
    serialization.Encoding.Raw, serialization.PublicFormat.Raw)).decode()


# -- signing ------------------------------------------------------------------------------


def twilio_signature(url: str, params: dict[str, str], token: str = TWILIO_TOKEN) -> str:
    payload = url + "".join(name + params[name] for name in sorted(params))
    return base64.b64encode(hmac.new(token.encode(), payload.encode(), hashlib.sha1).digest()).decode()


def telnyx_headers(body: bytes, *, timestamp: int | None = None,
                   key: Ed25519PrivateKey = _TELNYX_PRIVATE) -> dict[str, str]:
    stamp = str(int(time.time()) if timestamp is None else timestamp)
    signature = key.sign(stamp.encode() + b"|" + body)
    return {"telnyx-signature-ed25519": base64.b64encode(signature).decode(), "telnyx-timestamp": stamp}


def plivo_headers(url: str, params: dict[str, str], token: str = PLIVO_TOKEN, *,
                  nonce: str = "12345678901234567890") -> dict[str, str]:
    payload = url + "?" + "".join(name + params[name] for name in sorted(params)) + "." + nonce
    signature = base64.b64encode(hmac.new(token.encode(), payload.encode(), hashlib.sha256).digest()).decode()
    return {"X-Plivo-Signature-V3": signature, "X-Plivo-Signature-V3-Nonce": nonce}


# -- seeding -------------------------------------------------------------------------------


@dataclass
class Seeded:
    agency_id: uuid.UUID
    agent_id: uuid.UUID | None
    number: str


CARRIER_CREDENTIALS = {
    "twilio": {"account_sid": TWILIO_SID, "auth_token": TWILIO_TOKEN},
    "telnyx": {"api_key": TELNYX_API_KEY, "public_key": TELNYX_PUBLIC_KEY, "connection_id": "1234567890"},
    "plivo": {"auth_id": PLIVO_ID, "auth_token": PLIVO_TOKEN},
}


def seed(app: Any, *, carrier: str, number: str = NUMBER, fallback: str | None = None,
         number_recording: bool | None = None, agent_recording: bool = False, with_agent: bool = True,
         ultravox_key: str | None = ULTRAVOX_KEY, carrier_credentials: dict[str, str] | None = None) -> Seeded:
    db = app.extensions["telephony.db"]
    store = app.extensions["telephony.credentials"]
    with app.app_context(), db.session() as session:
        agency = create_agency(session, f"Agency {uuid.uuid4().hex[:6]}", credit_balance=3600)
        agent = agent_service.create_agent(session, agency.id, name="Receptionist", ultravox_agent_id=AGENT_UV_ID,
                                           recording_enabled=agent_recording) if with_agent else None
        number_service.add_number(session, agency.id, e164=number, carrier=carrier,
                                  agent_id=agent.id if agent else None, fallback_number=fallback,
                                  recording_enabled=number_recording)
        store.set(session, agency.id, carrier, CARRIER_CREDENTIALS[carrier] if carrier_credentials is None
                  else carrier_credentials)
        if ultravox_key:
            store.set(session, agency.id, "ultravox", {"api_key": ultravox_key})
        return Seeded(agency_id=agency.id, agent_id=agent.id if agent else None, number=number)


def calls(app: Any) -> list[Call]:
    with app.extensions["telephony.db"].session() as session:
        return list(session.scalars(select(Call).order_by(Call.created_at)))


# -- reading answers -------------------------------------------------------------------------


def parse_answer(xml: str) -> tuple[str, str]:
    """("stream", url) | ("dial", number) | ("say", text) from TwiML, TeXML or Plivo XML."""
    root = ET.fromstring(xml)
    assert root.tag == "Response", xml
    stream = root.find("./Connect/Stream")
    if stream is not None:
        return "stream", stream.attrib["url"]
    stream = root.find("./Stream")  # Plivo: the URL is the element text
    if stream is not None:
        return "stream", (stream.text or "").strip()
    dial = root.find("./Dial")
    if dial is not None:
        number = dial.find("./Number")
        return "dial", ((number.text if number is not None else dial.text) or "").strip()
    for verb in ("Say", "Speak"):
        spoken = root.find(f"./{verb}")
        if spoken is not None:
            assert root.find("./Hangup") is not None, xml
            return "say", spoken.text or ""
    raise AssertionError(f"unexpected answer: {xml}")


# -- Ultravox mock (responses) ------------------------------------------------------------------


@dataclass
class UltravoxMock:
    """Records every Ultravox request (validated against the OpenAPI spec)."""

    requests: list[requests.PreparedRequest] = field(default_factory=list)

    @property
    def bodies(self) -> list[dict[str, Any]]:
        return [json.loads(request.body) for request in self.requests]

    def answer_with(self, rsps: responses.RequestsMock, status: int = 201, *,
                    error: Exception | None = None, headers: dict[str, str] | None = None) -> None:
        def callback(request: requests.PreparedRequest):
            validate_request(request)
            self.requests.append(request)
            if error is not None:
                raise error
            if status != 201:
                return status, headers or {}, json.dumps({"detail": "simulated failure"})
            body = json.loads(request.body)
            return 201, {}, json.dumps({"callId": str(uuid.uuid4()), "joinUrl": JOIN_URL,
                                        "created": "2026-11-21T10:00:00.000000Z", "metadata": body["metadata"]})

        rsps.add_callback(responses.POST, f"{ULTRAVOX_BASE}/api/agents/{AGENT_UV_ID}/calls", callback=callback)


def sim_calls_for(ultravox_sim: Any, carrier_call_id: str) -> list[dict[str, Any]]:
    """The simulator's calls for one carrier call (a call a previous test left sleeping
    in the simulator may still land after its reset)."""
    every = requests.get(f"{ultravox_sim.base_url}/_sim/calls", timeout=5).json()["calls"]
    return [c for c in every if c["call"]["metadata"].get("telephony.carrier_call_id") == carrier_call_id]


# -- the per-carrier case ---------------------------------------------------------------------


class CarrierCase:
    """How one carrier talks to us: paths, field names, signing."""

    name: str
    voice_path: str
    status_path: str
    sends_plus: bool = True

    def call_id(self) -> str:
        raise NotImplementedError

    def inbound_form(self, call_id: str, *, to: str = NUMBER, from_: str = CALLER) -> dict[str, str]:
        raise NotImplementedError

    def status_form(self, call_id: str, status: str, *, sequence: int | None = None,
                    duration: int | None = None) -> dict[str, str]:
        raise NotImplementedError

    def sign(self, path: str, form: dict[str, str], body: bytes) -> dict[str, str]:
        raise NotImplementedError

    def post(self, client: Any, path: str, form: dict[str, str], *, signed: bool = True,
             headers: dict[str, str] | None = None, base_url: str = "http://localhost") -> Any:
        body = urlencode(form).encode()
        all_headers = dict(self.sign(path, form, body) if signed else {})
        all_headers.update(headers or {})
        return client.post(path, data=body, content_type="application/x-www-form-urlencoded",
                           headers=all_headers, base_url=base_url)

    def number(self, e164: str) -> str:
        return e164 if self.sends_plus else e164.lstrip("+")


class TwilioCase(CarrierCase):
    name = "twilio"
    voice_path = "/webhooks/twilio/voice"
    status_path = "/webhooks/twilio/status"

    def call_id(self) -> str:
        return "CA" + uuid.uuid4().hex

    def inbound_form(self, call_id: str, *, to: str = NUMBER, from_: str = CALLER) -> dict[str, str]:
        return {"CallSid": call_id, "AccountSid": TWILIO_SID, "From": self.number(from_), "To": self.number(to),
                "CallStatus": "ringing", "Direction": "inbound", "ApiVersion": "2010-04-01", "Caller": from_,
                "Called": to, "FromCountry": "US", "ToCountry": "US"}

    def status_form(self, call_id: str, status: str, *, sequence: int | None = None,
                    duration: int | None = None) -> dict[str, str]:
        form = {"CallSid": call_id, "AccountSid": TWILIO_SID, "From": CALLER, "To": NUMBER, "CallStatus": status,
                "Direction": "inbound", "ApiVersion": "2010-04-01", "CallbackSource": "call-progress-events",
                "Timestamp": "Sat, 21 Nov 2026 10:00:00 +0000"}
        if sequence is not None:
            form["SequenceNumber"] = str(sequence)
        if duration is not None:
            form["CallDuration"] = str(duration)
        return form

    def sign(self, path: str, form: dict[str, str], body: bytes) -> dict[str, str]:
        return {"X-Twilio-Signature": twilio_signature(PUBLIC_BASE + path, form)}


class TelnyxTexmlCase(TwilioCase):
    name = "telnyx"
    voice_path = "/webhooks/telnyx/texml"
    status_path = "/webhooks/telnyx/status"

    def call_id(self) -> str:
        return "v3:" + base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")

    def inbound_form(self, call_id: str, *, to: str = NUMBER, from_: str = CALLER) -> dict[str, str]:
        return {"CallSid": call_id, "CallSidLegacy": call_id, "AccountSid": str(uuid.UUID(int=7)),
                "From": from_, "To": to, "CallStatus": "ringing", "Direction": "inbound",
                "ConnectionId": "1234567890"}

    def sign(self, path: str, form: dict[str, str], body: bytes) -> dict[str, str]:
        return telnyx_headers(body)


class PlivoCase(CarrierCase):
    name = "plivo"
    voice_path = "/webhooks/plivo/answer"
    status_path = "/webhooks/plivo/hangup"
    sends_plus = False

    def call_id(self) -> str:
        return str(uuid.uuid4())

    def inbound_form(self, call_id: str, *, to: str = NUMBER, from_: str = CALLER) -> dict[str, str]:
        return {"CallUUID": call_id, "From": self.number(from_), "To": self.number(to), "CallStatus": "ringing",
                "Direction": "inbound", "Event": "StartApp", "BillRate": "0.0085"}

    def status_form(self, call_id: str, status: str, *, sequence: int | None = None,
                    duration: int | None = None) -> dict[str, str]:
        form = {"CallUUID": call_id, "From": self.number(CALLER), "To": self.number(NUMBER), "CallStatus": status,
                "Direction": "inbound", "Event": "Hangup", "HangupCause": "NORMAL_CLEARING"}
        if duration is not None:
            form.update({"Duration": str(duration), "BillDuration": str(duration)})
        return form

    def sign(self, path: str, form: dict[str, str], body: bytes) -> dict[str, str]:
        return plivo_headers(PUBLIC_BASE + path, form)


# -- the contract every carrier meets ------------------------------------------------------------


class InboundContract:
    """Every bullet of the inbound-call issue, for one carrier (set `case`), on SQLite
    and PostgreSQL (the `app`/`client`/`sim_app` fixtures are parametrized)."""

    case: CarrierCase
    expected_stream_xml: str  # the exact answer for JOIN_URL (golden)

    @property
    def _sid_field(self) -> str:
        return "CallUUID" if self.case.name == "plivo" else "CallSid"

    # -- happy path ---------------------------------------------------------------------

    def test_streams_to_the_agent_and_records_the_call(self, app, client):
        seeded = seed(app, carrier=self.case.name)
        uv = UltravoxMock()
        call_sid = self.case.call_id()
        with responses.RequestsMock() as rsps:
            uv.answer_with(rsps)
            response = self.case.post(client, self.case.voice_path, self.case.inbound_form(call_sid))
        assert response.status_code == 200
        assert response.mimetype == "text/xml"
        assert response.get_data(as_text=True) == self.expected_stream_xml
        assert parse_answer(response.get_data(as_text=True)) == ("stream", JOIN_URL)

        [body] = uv.bodies
        assert body["medium"] == {self.case.name: {}}
        assert body["firstSpeakerSettings"] == {"agent": {}}
        assert body["templateContext"] == {"caller_number": CALLER, "called_number": NUMBER}
        assert body["recordingEnabled"] is False
        # The per-request timeout is the inbound budget (connect capped by it).
        assert uv.requests[0].req_kwargs["timeout"] == (3.05, 5.0)

        [call] = calls(app)
        assert (call.source.value, call.direction.value) == (self.case.name, "inbound")
        assert (call.from_number, call.to_number, call.carrier_call_id) == (CALLER, NUMBER, call_sid)
        assert call.agency_id == seeded.agency_id and call.agent_id == seeded.agent_id
        assert call.join_url == JOIN_URL and call.ultravox_call_id and call.status == "ringing"
        metadata = body["metadata"]
        assert metadata["telephony.call_id"] == str(call.id)
        assert metadata["telephony.carrier_call_id"] == call_sid
        assert metadata["telephony.agency_id"] == str(seeded.agency_id)
        assert metadata["telephony.source"] == self.case.name
        assert metadata["telephony.direction"] == "inbound"

    @pytest.mark.parametrize("number_recording, agent_recording, expected", [
        (True, False, True), (False, True, False), (None, True, True), (None, False, False)])
    def test_recording_follows_the_number_else_the_agent(self, app, client, number_recording, agent_recording,
                                                         expected):
        seed(app, carrier=self.case.name, number_recording=number_recording, agent_recording=agent_recording)
        uv = UltravoxMock()
        with responses.RequestsMock() as rsps:
            uv.answer_with(rsps)
            assert self.case.post(client, self.case.voice_path,
                                  self.case.inbound_form(self.case.call_id())).status_code == 200
        assert uv.bodies[0]["recordingEnabled"] is expected

    # -- signatures ----------------------------------------------------------------------

    @pytest.mark.parametrize("tamper", ["missing", "forged", "other_field_value"])
    def test_bad_signature_is_refused_and_nothing_is_written(self, app, client, tamper):
        seed(app, carrier=self.case.name)
        form = self.case.inbound_form(self.case.call_id())
        body = urlencode(form).encode()
        headers = {} if tamper == "missing" else self.case.sign(self.case.voice_path, form, body)
        if tamper == "forged":
            headers = {name: ("A" * len(value) if "once" not in name and "timestamp" not in name else value)
                       for name, value in headers.items()}
        sent = dict(form, From="+14155550000") if tamper == "other_field_value" else form
        with responses.RequestsMock(assert_all_requests_are_fired=False) as rsps:
            UltravoxMock().answer_with(rsps)
            response = self.case.post(client, self.case.voice_path, sent, signed=False, headers=headers)
            assert len(rsps.calls) == 0
        assert response.status_code == 403
        assert calls(app) == []

    def test_signed_with_another_agencys_credentials_is_refused(self, app, client):
        seed(app, carrier=self.case.name, carrier_credentials=self._other_credentials())
        with responses.RequestsMock(assert_all_requests_are_fired=False) as rsps:
            UltravoxMock().answer_with(rsps)
            response = self.case.post(client, self.case.voice_path, self.case.inbound_form(self.case.call_id()))
            assert len(rsps.calls) == 0
        assert response.status_code == 403 and calls(app) == []

    def _other_credentials(self) -> dict[str, str]:
        other = Ed25519PrivateKey.generate().public_key().public_bytes(serialization.Encoding.Raw,
                                                                      serialization.PublicFormat.Raw)
        return {"twilio": {"account_sid": TWILIO_SID, "auth_token": "another-agencys-token-000000000"},
                "telnyx": {"api_key": TELNYX_API_KEY, "public_key": base64.b64encode(other).decode()},
                "plivo": {"auth_id": PLIVO_ID, "auth_token": "another-agencys-token-000000000"}}[self.case.name]

    def test_signature_is_checked_against_the_public_url_behind_a_proxy(self, app, client):
        """The app sees http://10.0.0.5:8080/...; the carrier signed https://voice.example.test/..."""
        seed(app, carrier=self.case.name)
        uv = UltravoxMock()
        with responses.RequestsMock() as rsps:
            uv.answer_with(rsps)
            response = self.case.post(client, self.case.voice_path, self.case.inbound_form(self.case.call_id()),
                                      base_url="http://10.0.0.5:8080")
        assert response.status_code == 200
        assert parse_answer(response.get_data(as_text=True)) == ("stream", JOIN_URL)

    # -- routing -------------------------------------------------------------------------

    def test_unknown_number_hears_not_in_service(self, app, client):
        seed(app, carrier=self.case.name)
        with responses.RequestsMock(assert_all_requests_are_fired=False) as rsps:
            UltravoxMock().answer_with(rsps)
            # Unsigned on purpose: there is no agency whose credentials could verify it,
            # and the fixed answer writes nothing and starts nothing.
            response = self.case.post(client, self.case.voice_path,
                                      self.case.inbound_form(self.case.call_id(), to="+14155550177"), signed=False)
            assert len(rsps.calls) == 0
        assert response.status_code == 200 and response.mimetype == "text/xml"
        assert parse_answer(response.get_data(as_text=True)) == ("say", inbound_service.NOT_IN_SERVICE)
        assert calls(app) == []

    def test_number_registered_with_another_carrier_is_unknown_here(self, app, client):
        other = "plivo" if self.case.name != "plivo" else "twilio"
        seed(app, carrier=other)
        with responses.RequestsMock(assert_all_requests_are_fired=False) as rsps:
            UltravoxMock().answer_with(rsps)
            response = self.case.post(client, self.case.voice_path, self.case.inbound_form(self.case.call_id()))
            assert len(rsps.calls) == 0
        assert parse_answer(response.get_data(as_text=True)) == ("say", inbound_service.NOT_IN_SERVICE)

    def test_number_without_an_agent_hears_not_in_service(self, app, client):
        seed(app, carrier=self.case.name, with_agent=False, fallback=FALLBACK)
        with responses.RequestsMock(assert_all_requests_are_fired=False) as rsps:
            UltravoxMock().answer_with(rsps)
            response = self.case.post(client, self.case.voice_path, self.case.inbound_form(self.case.call_id()))
            assert len(rsps.calls) == 0
        assert response.status_code == 200
        assert parse_answer(response.get_data(as_text=True)) == ("say", inbound_service.NOT_IN_SERVICE)
        assert calls(app) == []

    # -- idempotency ------------------------------------------------------------------------

    def test_repeated_webhook_gets_the_same_answer_and_no_second_call(self, app, client):
        seed(app, carrier=self.case.name)
        uv = UltravoxMock()
        form = self.case.inbound_form(self.case.call_id())
        with responses.RequestsMock() as rsps:
            uv.answer_with(rsps)
            first = self.case.post(client, self.case.voice_path, form)
            second = self.case.post(client, self.case.voice_path, form)
        assert first.status_code == second.status_code == 200
        assert first.get_data() == second.get_data()
        assert len(uv.requests) == 1 and len(calls(app)) == 1

    def test_a_replay_after_the_call_ended_gets_no_stream_and_the_join_url_is_gone(self, app, client):
        seed(app, carrier=self.case.name, fallback=FALLBACK)
        uv = UltravoxMock()
        call_id = self.case.call_id()
        form = self.case.inbound_form(call_id)
        with responses.RequestsMock() as rsps:
            uv.answer_with(rsps)
            first = self.case.post(client, self.case.voice_path, form)
            assert parse_answer(first.get_data(as_text=True))[0] == "stream"
            ended = self.case.post(client, self.case.status_path,
                                   self.case.status_form(call_id, "completed", sequence=9, duration=30))
            assert ended.status_code < 300
            [call] = calls(app)
            assert call.status == "completed" and call.join_url is None
            replay = self.case.post(client, self.case.voice_path, form)
        assert replay.status_code == 200
        assert parse_answer(replay.get_data(as_text=True)) == ("say", inbound_service.APOLOGY)
        assert len(uv.requests) == 1

    def test_repeated_webhook_after_a_failure_gets_the_same_fallback(self, app, client):
        seed(app, carrier=self.case.name, fallback=FALLBACK)
        uv = UltravoxMock()
        form = self.case.inbound_form(self.case.call_id())
        with responses.RequestsMock() as rsps:
            uv.answer_with(rsps, status=503, headers={"Retry-After": "3"})
            first = self.case.post(client, self.case.voice_path, form)
            second = self.case.post(client, self.case.voice_path, form)
        assert parse_answer(first.get_data(as_text=True)) == ("dial", self.case.number(FALLBACK))
        assert first.get_data() == second.get_data()
        assert len(uv.requests) == 1

    # -- failures ------------------------------------------------------------------------------

    # (Ultravox 429 holds the caller instead: tests/test_inbound_hold.py.)
    @pytest.mark.parametrize("failure", ["500", "503", "timeout", "connection", "no_key"])
    @pytest.mark.parametrize("with_fallback", [True, False])
    def test_ultravox_failure_dials_the_fallback_else_apologises(self, app, client, failure, with_fallback):
        seed(app, carrier=self.case.name, fallback=FALLBACK if with_fallback else None,
             ultravox_key=None if failure == "no_key" else ULTRAVOX_KEY)
        uv = UltravoxMock()
        with responses.RequestsMock(assert_all_requests_are_fired=False) as rsps:
            if failure == "timeout":
                uv.answer_with(rsps, error=requests.exceptions.ReadTimeout("read timed out"))
            elif failure == "connection":
                uv.answer_with(rsps, error=requests.exceptions.ConnectionError("refused"))
            elif failure != "no_key":
                uv.answer_with(rsps, status=int(failure), headers={"Retry-After": "1"})
            response = self.case.post(client, self.case.voice_path, self.case.inbound_form(self.case.call_id()))
        assert response.status_code == 200 and response.mimetype == "text/xml"
        expected = ("dial", self.case.number(FALLBACK)) if with_fallback else ("say", inbound_service.APOLOGY)
        assert parse_answer(response.get_data(as_text=True)) == expected
        [call] = calls(app)
        assert call.join_url is None and call.ultravox_call_id is None and call.status == "ringing"
        assert call.metadata_["inbound_answer"] == expected[0]

    def test_database_outage_answers_with_an_apology(self, app, client, monkeypatch):
        seed(app, carrier=self.case.name, fallback=FALLBACK)

        def down(*args, **kwargs):
            raise OperationalError("SELECT ...", {}, Exception("server closed the connection unexpectedly"))

        monkeypatch.setattr(inbound_service, "find_route", down)
        response = self.case.post(client, self.case.voice_path, self.case.inbound_form(self.case.call_id()))
        assert response.status_code == 200 and response.mimetype == "text/xml"
        assert parse_answer(response.get_data(as_text=True)) == ("say", inbound_service.APOLOGY)

    def test_unexpected_error_after_verification_still_forwards_the_caller(self, app, client, monkeypatch):
        seed(app, carrier=self.case.name, fallback=FALLBACK)

        def broken(*args, **kwargs):
            raise RuntimeError("a bug")

        monkeypatch.setattr("telephony.services.calls.agent_call_body", broken)
        response = self.case.post(client, self.case.voice_path, self.case.inbound_form(self.case.call_id()))
        assert response.status_code == 200
        assert parse_answer(response.get_data(as_text=True)) == ("dial", self.case.number(FALLBACK))

    def test_failed_insert_still_connects_the_caller(self, app, client, monkeypatch):
        seed(app, carrier=self.case.name)

        def insert_fails(session, statement, params):
            if "INSERT INTO calls" in statement.plan(session.get_bind().dialect).sql:
                raise OperationalError("INSERT INTO calls ...", {}, Exception("disk I/O error"))
            return run(session, statement, params)

        run = direct_sql.run
        monkeypatch.setattr(direct_sql, "run", insert_fails)
        uv = UltravoxMock()
        call_sid = self.case.call_id()
        with responses.RequestsMock() as rsps:
            uv.answer_with(rsps)
            response = self.case.post(client, self.case.voice_path, self.case.inbound_form(call_sid))
        assert parse_answer(response.get_data(as_text=True)) == ("stream", JOIN_URL)
        assert calls(app) == []
        # What the Ultravox webhook ingest needs to rebuild the row.
        metadata = uv.bodies[0]["metadata"]
        assert metadata["telephony.carrier_call_id"] == call_sid
        assert {"telephony.call_id", "telephony.agency_id", "telephony.agent_id", "telephony.source",
                "telephony.direction", "telephony.from", "telephony.to"} <= set(metadata)

    # -- the answer first, its record after ---------------------------------------------------

    def test_answer_is_sent_before_its_record_is_written(self, app, client):
        seed(app, carrier=self.case.name)
        call_sid = self.case.call_id()
        with responses.RequestsMock() as rsps:
            UltravoxMock().answer_with(rsps)
            body = urlencode(self.case.inbound_form(call_sid)).encode()
            # buffered=False: the response is handed over before the server closes it.
            response = client.post(self.case.voice_path, data=body, buffered=False,
                                   content_type="application/x-www-form-urlencoded",
                                   headers=self.case.sign(self.case.voice_path, self.case.inbound_form(call_sid),
                                                          body))
            assert parse_answer(response.get_data(as_text=True)) == ("stream", JOIN_URL)
            [claimed] = calls(app)  # claimed before Ultravox was asked: idempotency holds
            assert (claimed.carrier_call_id, claimed.status, claimed.join_url) == (call_sid, "created", None)
            response.close()  # what the WSGI server does once the answer is sent
        [call] = calls(app)
        assert (call.status, call.join_url) == ("ringing", JOIN_URL) and call.ultravox_call_id

    def test_failing_record_after_the_answer_is_only_logged(self, app, client, monkeypatch, caplog):
        seed(app, carrier=self.case.name)

        def broken(*args, **kwargs):
            raise RuntimeError("database gone after the answer")

        monkeypatch.setattr(inbound_service, "store_pending_write", broken)
        with responses.RequestsMock() as rsps:
            UltravoxMock().answer_with(rsps)
            response = self.case.post(client, self.case.voice_path, self.case.inbound_form(self.case.call_id()))
        assert response.status_code == 200
        assert parse_answer(response.get_data(as_text=True)) == ("stream", JOIN_URL)
        assert "storing the answer after sending it failed" in caplog.text
        [call] = calls(app)
        assert call.status == "created" and call.join_url is None  # repaired later from Ultravox metadata

    # -- end to end against the Ultravox simulator -------------------------------------------

    def test_end_to_end_with_the_ultravox_simulator(self, sim_app, ultravox_sim):
        seed(sim_app, carrier=self.case.name)
        call_sid = self.case.call_id()
        response = self.case.post(sim_app.test_client(), self.case.voice_path, self.case.inbound_form(call_sid))
        kind, join_url = parse_answer(response.get_data(as_text=True))
        assert response.status_code == 200 and kind == "stream"
        [sim_call] = sim_calls_for(ultravox_sim, call_sid)
        assert sim_call["call"]["joinUrl"] == join_url
        assert sim_call["call"]["medium"] == {self.case.name: {}}
        assert sim_call["call"]["firstSpeakerSettings"] == {"agent": {}}
        assert sim_call["templateContext"] == {"caller_number": CALLER, "called_number": NUMBER}
        assert sim_call["call"]["metadata"]["telephony.carrier_call_id"] == call_sid
        [call] = calls(sim_app)
        assert call.ultravox_call_id == sim_call["call"]["callId"] and call.join_url == join_url

    def test_ultravox_simulator_too_slow_falls_back_within_the_budget(self, sim_app, ultravox_sim):
        seed(sim_app, carrier=self.case.name, fallback=FALLBACK)
        sim_app.extensions["telephony.config"] = sim_app.extensions["telephony.config"].with_overrides(
            inbound_ultravox_budget=0.5)
        requests.post(f"{ultravox_sim.base_url}/_sim/config", json={"latency_ms": 2000}, timeout=5)
        started = time.monotonic()
        response = self.case.post(sim_app.test_client(), self.case.voice_path,
                                  self.case.inbound_form(self.case.call_id()))
        assert time.monotonic() - started < 1.5
        assert parse_answer(response.get_data(as_text=True)) == ("dial", self.case.number(FALLBACK))

    def test_concurrent_duplicates_create_one_ultravox_call(self, sim_app, ultravox_sim):
        """Threads over real HTTP, so the duplicates really overlap while the first one
        waits on Ultravox (300 ms): all get the same answer, one Ultravox call, one row."""
        seed(sim_app, carrier=self.case.name)
        requests.post(f"{ultravox_sim.base_url}/_sim/config", json={"latency_ms": 300}, timeout=5)
        form = self.case.inbound_form(self.case.call_id())
        body = urlencode(form).encode()
        threads_count = 6
        barrier = threading.Barrier(threads_count)
        answers: list[tuple[int, str]] = []
        with serve_in_thread(sim_app) as server:
            def post() -> None:
                headers = {"Content-Type": "application/x-www-form-urlencoded",
                           **self.case.sign(self.case.voice_path, form, body)}
                barrier.wait()
                reply = requests.post(server.base_url + self.case.voice_path, data=body, headers=headers, timeout=15)
                answers.append((reply.status_code, reply.text))

            workers = [threading.Thread(target=post) for _ in range(threads_count)]
            for worker in workers:
                worker.start()
            for worker in workers:
                worker.join(timeout=20)
        assert len(answers) == threads_count
        assert {status for status, _ in answers} == {200}
        assert len({text for _, text in answers}) == 1
        assert parse_answer(answers[0][1])[0] == "stream"
        assert len(sim_calls_for(ultravox_sim, form[self._sid_field])) == 1
        assert len(calls(sim_app)) == 1

