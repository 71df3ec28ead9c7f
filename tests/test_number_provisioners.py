"""Each carrier's NumberProvisioner, against mocked carrier APIs: the requests it sends
through the official SDKs and how it reads the answers. `responses` for Twilio and
Plivo (requests); Telnyx's SDK speaks httpx, so its client gets an httpx MockTransport."""
from __future__ import annotations

import json
from urllib.parse import parse_qs

import httpx
import pytest
import responses
import telnyx
from twilio.base.exceptions import TwilioRestException

from telephony.carriers import sdk
from telephony.carriers.numbers import CarrierNumber, NumberSetupRefused
from telephony.carriers.plivo import PlivoNumbers
from telephony.carriers.telnyx import TelnyxNumbers
from telephony.carriers.twilio import TwilioNumbers

SID = "AC" + "a" * 32
AUTH_ID = "MA" + "B2" * 9
URLS = {"inbound": "https://voice.example.test/webhooks/x/voice", "status": "https://voice.example.test/webhooks/x/status",
        "call-control": "https://voice.example.test/webhooks/telnyx/call-control"}
TWILIO_NUMBERS = f"https://api.twilio.com/2010-04-01/Accounts/{SID}/IncomingPhoneNumbers"
PLIVO = f"https://api.plivo.com/v1/Account/{AUTH_ID}"


def _twilio_number(e164: str, **fields) -> dict:
    return {"sid": "PN" + e164[-4:] * 8, "account_sid": SID, "phone_number": e164, "voice_url": None,
            "status_callback": None, "voice_application_sid": None, "trunk_sid": None, **fields}


def _twilio_page(*numbers: dict) -> dict:
    return {"incoming_phone_numbers": list(numbers), "page": 0, "page_size": 50, "start": 0, "end": 0,
            "uri": "/x", "first_page_uri": "/x", "next_page_uri": None, "previous_page_uri": None}


# -- Twilio ----------------------------------------------------------------------------------


@responses.activate
def test_twilio_finds_the_exact_number_only_and_reads_its_urls():
    client = sdk.twilio_client(SID, "token")
    responses.get(f"{TWILIO_NUMBERS}.json", json=_twilio_page(
        _twilio_number("+141555501001"), _twilio_number("+14155550100", voice_url="https://old/voice",
                                                        voice_application_sid="AP" + "1" * 32)))
    found = TwilioNumbers().find(client, "+14155550100")
    assert found is not None and found.carrier_id == "PN" + "0100" * 8 and found.routing == "AP" + "1" * 32
    assert parse_qs(responses.calls[0].request.url.split("?", 1)[1])["PhoneNumber"] == ["+14155550100"]
    # Held by an application, the number's own URL is not where its calls go.
    assert TwilioNumbers().current_urls(client, found) == {"inbound": f"(handled by AP{'1' * 32})",
                                                           "status": f"(handled by AP{'1' * 32})"}
    responses.get(f"{TWILIO_NUMBERS}.json", json=_twilio_page(_twilio_number("+141555501001")))
    assert TwilioNumbers().find(client, "+14155550100") is None


@responses.activate
def test_twilio_points_the_number_itself_here_and_clears_what_would_override_it():
    client = sdk.twilio_client(SID, "token")
    update = responses.post(f"{TWILIO_NUMBERS}/PN123.json", json=_twilio_number("+14155550100"))
    TwilioNumbers().point_here(client, CarrierNumber("+14155550100", "PN123", routing="AP1"), URLS, {})
    sent = parse_qs(update.calls[0].request.body, keep_blank_values=True)
    assert sent == {"VoiceUrl": [URLS["inbound"]], "VoiceMethod": ["POST"], "StatusCallback": [URLS["status"]],
                    "StatusCallbackMethod": ["POST"], "VoiceApplicationSid": [""], "TrunkSid": [""]}


@responses.activate
def test_twilio_refused_list_page_is_a_rest_exception_with_its_status():
    """The SDK reports a failed list page as a bare TwilioException; it is raised as the
    TwilioRestException every other call raises, so a 401 reads as refused credentials."""
    responses.get(f"{TWILIO_NUMBERS}.json", status=401, json={"code": 20003, "message": "Authenticate"})
    with pytest.raises(TwilioRestException) as raised:
        TwilioNumbers().find(sdk.twilio_client(SID, "token"), "+14155550100")
    assert raised.value.status == 401 and raised.value.msg == "Authenticate"


# -- Plivo -----------------------------------------------------------------------------------


@responses.activate
def test_plivo_number_outside_the_account_is_none_and_inside_names_its_application():
    client = sdk.plivo_client(AUTH_ID, "token")
    responses.get(f"{PLIVO}/Number/14155550100/", status=404, json={"api_id": "x", "error": "not found"})
    assert PlivoNumbers().find(client, "+14155550100") is None
    responses.replace(responses.GET, f"{PLIVO}/Number/14155550100/",
                      json={"number": "14155550100", "application": f"/v1/Account/{AUTH_ID}/Application/777/"})
    assert PlivoNumbers().find(client, "+14155550100") == CarrierNumber("+14155550100", "14155550100", "777")


@responses.activate
def test_plivo_links_the_number_to_our_application_created_once_and_leaves_its_old_one():
    client = sdk.plivo_client(AUTH_ID, "token")
    responses.get(f"{PLIVO}/Application/777/", json={"app_id": "777", "app_name": "Old IVR",
                                                     "answer_url": "https://old/answer", "hangup_url": None})
    listed = responses.get(f"{PLIVO}/Application/", json={"api_id": "x", "meta": {}, "objects": []})
    created = responses.post(f"{PLIVO}/Application/", status=201, json={"api_id": "x", "app_id": "42",
                                                                        "message": "created"})
    linked = responses.post(f"{PLIVO}/Number/14155550100/", json={"api_id": "x", "message": "changed"})
    PlivoNumbers().point_here(client, CarrierNumber("+14155550100", "14155550100", "777"), URLS, {})
    assert parse_qs(listed.calls[0].request.url.split("?", 1)[1])["app_name"] == ["Voice agents (voice.example.test)"]
    body = json.loads(created.calls[0].request.body)
    assert (body["app_name"], body["answer_url"], body["hangup_url"]) == (
        "Voice agents (voice.example.test)", URLS["inbound"], URLS["status"])
    assert json.loads(linked.calls[0].request.body)["app_id"] == "42"
    assert not [call for call in responses.calls if call.request.url.endswith("/Application/777/")
                and call.request.method == "POST"]  # the agency's application is never written


@responses.activate
def test_plivo_number_already_pointing_here_is_left_alone():
    client = sdk.plivo_client(AUTH_ID, "token")
    responses.get(f"{PLIVO}/Application/9/", json={"app_id": "9", "answer_url": URLS["inbound"],
                                                   "hangup_url": URLS["status"]})
    PlivoNumbers().point_here(client, CarrierNumber("+14155550100", "14155550100", "9"), URLS, {})
    assert [call.request.method for call in responses.calls] == ["GET"]


# -- Telnyx ----------------------------------------------------------------------------------


class TelnyxApi:
    """A mocked Telnyx API: (method, path) -> JSON answer; every request is kept."""

    def __init__(self, routes: dict[tuple[str, str], tuple[int, dict]]):
        self.routes = routes
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        status, body = self.routes.get((request.method, request.url.path), (404, {"errors": [{"code": "10005"}]}))
        return httpx.Response(status, json=body)

    def client(self) -> telnyx.Telnyx:
        return telnyx.Telnyx(api_key="KEY", base_url="https://api.telnyx.com/v2", max_retries=0,
                             http_client=httpx.Client(transport=httpx.MockTransport(self)))

    def sent(self, method: str, path: str) -> list[dict]:
        return [json.loads(r.content) for r in self.requests if (r.method, r.url.path) == (method, path)]


def test_telnyx_finds_by_filter_and_reads_a_call_control_connection():
    api = TelnyxApi({("GET", "/v2/phone_numbers"): (200, {"data": [
                        {"id": "1", "phone_number": "+14155550100", "connection_id": "cc1"}],
                        "meta": {"page_number": 1, "total_pages": 1}}),
                     ("GET", "/v2/call_control_applications/cc1"): (200, {"data": {
                         "id": "cc1", "application_name": "Agency", "webhook_event_url": "https://old/cc"}})})
    client = api.client()
    found = TelnyxNumbers().find(client, "+14155550100")
    assert found == CarrierNumber("+14155550100", "1", "cc1")
    assert api.requests[0].url.params["filter[phone_number]"] == "+14155550100"
    # Not a TeXML application (404), so a Call Control one.
    assert TelnyxNumbers().current_urls(client, found) == {"call-control": "https://old/cc"}


def test_telnyx_points_the_stored_call_control_connection_here_and_assigns_the_number():
    api = TelnyxApi({("GET", "/v2/call_control_applications/cc1"): (200, {"data": {
                         "id": "cc1", "application_name": "Agency CC", "webhook_event_url": "https://old/cc"}}),
                     ("PATCH", "/v2/call_control_applications/cc1"): (200, {"data": {"id": "cc1"}}),
                     ("PATCH", "/v2/phone_numbers/1"): (200, {"data": {"id": "1"}})})
    TelnyxNumbers().point_here(api.client(), CarrierNumber("+14155550100", "1", ""), URLS, {"connection_id": "cc1"})
    assert api.sent("PATCH", "/v2/call_control_applications/cc1") == [{
        "application_name": "Agency CC", "webhook_event_url": URLS["call-control"], "webhook_api_version": "2"}]
    assert api.sent("PATCH", "/v2/phone_numbers/1") == [{"connection_id": "cc1"}]


def test_telnyx_without_a_connection_uses_a_texml_application_of_its_own():
    api = TelnyxApi({("GET", "/v2/texml_applications"): (200, {"data": [], "meta": {"page_number": 1,
                                                                                     "total_pages": 1}}),
                     ("POST", "/v2/texml_applications"): (201, {"data": {"id": "t9"}}),
                     ("PATCH", "/v2/phone_numbers/1"): (200, {"data": {"id": "1"}})})
    TelnyxNumbers().point_here(api.client(), CarrierNumber("+14155550100", "1", ""), URLS, {})
    assert api.sent("POST", "/v2/texml_applications") == [{
        "friendly_name": "Voice agents (voice.example.test)", "voice_url": URLS["inbound"], "voice_method": "post",
        "status_callback": URLS["status"], "status_callback_method": "post"}]
    assert api.sent("PATCH", "/v2/phone_numbers/1") == [{"connection_id": "t9"}]


def test_telnyx_stored_connection_that_is_not_call_control_is_refused_with_a_reason():
    api = TelnyxApi({})
    with pytest.raises(NumberSetupRefused, match="not a Call Control application"):
        TelnyxNumbers().point_here(api.client(), CarrierNumber("+14155550100", "1", ""), URLS,
                                   {"connection_id": "sip-connection"})
    assert not [r for r in api.requests if r.method != "GET"]  # nothing changed
