"""Tests for telephony.ultravox. No network: `responses` answers every request,
and every mocked answer first checks the request against the Ultravox OpenAPI
spec via tests.ultravox_openapi.validate_request."""
from __future__ import annotations

import json
import logging
import pickle
from datetime import datetime, timedelta, timezone
from email.utils import format_datetime
from typing import Any, Callable
from urllib.parse import parse_qs, urlsplit

import pytest
import requests
import responses
from prometheus_client import REGISTRY

from telephony import ultravox
from telephony.config import Config
from telephony.ultravox import Recording, UltravoxClient, parse_retry_after
from telephony.ultravox_errors import (
    UltravoxAuthError,
    UltravoxClientError,
    UltravoxError,
    UltravoxNotFound,
    UltravoxRateLimited,
    UltravoxServerError,
    UltravoxTimeout,
    UltravoxUnavailable,
)
from tests.ultravox_openapi import validate_request

API_KEY = "Zk9Ht7Lm.wX7pN9fM3kLj6tRq2bGhA8yE5cZvD4sT"
BASE = "https://api.ultravox.ai"
CALL_ID = "3c90c3cc-0d44-4b50-8888-8dd25736052a"
AGENT_ID = "8b1f2a4e-5c6d-4e7f-9a0b-1c2d3e4f5a6b"
STORAGE_URL = ("https://storage.googleapis.com/fixie-ultravox-prod/call_recordings/2025/01/01/"
               f"{CALL_ID}.wav?X-Goog-Algorithm=GOOG4-RSA-SHA256&X-Goog-Expires=300&X-Goog-Signature=abc")
CALL = {
    "callId": CALL_ID,
    "joinUrl": f"wss://voice.ultravox.ai/calls/{CALL_ID}/telephony",
    "created": "2025-01-01T12:00:00Z",
    "joined": None,
    "ended": None,
    "medium": {"twilio": {}},
    "metadata": {"agency_id": "42"},
}


# --------------------------------------------------------------------------- helpers


@pytest.fixture
def rsps():
    # Unmatched URLs raise ConnectionError, so a request to an unexpected host fails the test.
    with responses.RequestsMock(assert_all_requests_are_fired=True) as mock:
        yield mock


@pytest.fixture
def client() -> UltravoxClient:
    return UltravoxClient(API_KEY)


def answer(status: int = 200, *, json_body: Any = None, body: bytes | str = b"",
           headers: dict[str, str] | None = None, exc: Exception | None = None,
           seen: list[requests.PreparedRequest] | None = None) -> Callable:
    """A `responses` callback that validates the request against the spec, then answers."""
    def callback(request: requests.PreparedRequest):
        validate_request(request)
        if seen is not None:
            seen.append(request)
        if exc is not None:
            raise exc
        reply_headers = dict(headers or {})
        payload: bytes | str = body
        if json_body is not None:
            payload = json.dumps(json_body)
            reply_headers.setdefault("Content-Type", "application/json")
        return status, reply_headers, payload
    return callback


def counter(operation: str, outcome: str) -> float:
    value = REGISTRY.get_sample_value(
        "telephony_upstream_requests_total",
        {"upstream": "ultravox", "operation": operation, "outcome": outcome},
    )
    return value or 0.0


def sent_json(request: requests.PreparedRequest) -> Any:
    return json.loads(request.body)


# --------------------------------------------------------------------------- create_call


def test_create_call_sends_spec_valid_body_with_api_key(rsps, client):
    body = {
        "systemPrompt": "You are the front desk of Acme Plumbing.",
        "voice": "Mark",
        "temperature": 0.3,
        "medium": {"twilio": {}},
        "firstSpeakerSettings": {"agent": {}},
        "metadata": {"agency_id": "42", "twilio_call_sid": "CA123"},
        "joinTimeout": "30s",
        "maxDuration": "900s",
        "recordingEnabled": True,
        "selectedTools": [{"toolName": "hangUp"}],
    }
    rsps.add_callback(responses.POST, f"{BASE}/api/calls", callback=answer(201, json_body=CALL))

    call = client.create_call(body)

    assert call == CALL
    request = rsps.calls[0].request
    assert request.headers["X-API-Key"] == API_KEY
    assert request.headers["Content-Type"] == "application/json"
    assert "Authorization" not in request.headers
    assert sent_json(request) == body
    assert urlsplit(request.url).query == ""


def test_create_call_with_prior_call_id_sends_query(rsps, client):
    prior = "11111111-2222-4333-8444-555555555555"
    rsps.add_callback(responses.POST, f"{BASE}/api/calls", callback=answer(201, json_body=CALL))

    client.create_call({"medium": {"twilio": {}}, "firstSpeakerSettings": {"user": {}}}, prior_call_id=prior)

    assert parse_qs(urlsplit(rsps.calls[0].request.url).query) == {"priorCallId": [prior]}


def test_create_agent_call_with_template_context(rsps, client):
    body = {
        "templateContext": {"customerName": "Jane", "account": {"tier": "gold"}},
        "medium": {"twilio": {"outgoing": {"to": "+15551230000", "from": "+15559870000"}}},
        "firstSpeakerSettings": {"user": {"fallback": {"delay": "10s", "text": "Hello, is Jane there?"}}},
        "metadata": {"agency_id": "42"},
        "maxDuration": "900s",
    }
    rsps.add_callback(responses.POST, f"{BASE}/api/agents/{AGENT_ID}/calls",
                      callback=answer(201, json_body=CALL))

    assert client.create_agent_call(AGENT_ID, body) == CALL
    assert sent_json(rsps.calls[0].request) == body


# --------------------------------------------------------------------------- reads


def test_get_call(rsps, client):
    ended = {**CALL, "ended": "2025-01-01T12:05:00Z", "endReason": "hangup"}
    rsps.add_callback(responses.GET, f"{BASE}/api/calls/{CALL_ID}", callback=answer(200, json_body=ended))

    assert client.get_call(CALL_ID) == ended
    assert rsps.calls[0].request.body is None


def message(index: int) -> dict:
    role = "MESSAGE_ROLE_AGENT" if index % 2 else "MESSAGE_ROLE_USER"
    return {"role": role, "text": f"message {index}", "medium": "MESSAGE_MEDIUM_VOICE",
            "callStageMessageIndex": index}


def test_list_messages_follows_all_cursor_pages_in_order(rsps, client):
    path = f"/api/calls/{CALL_ID}/messages"
    pages = {
        None: {"next": f"{BASE}{path}?cursor=cD0y&pageSize=2", "previous": None,
               "results": [message(0), message(1)], "total": 5},
        # A foreign host in `next` must not be followed: only its cursor is used.
        "cD0y": {"next": f"https://evil.example.com{path}?cursor=cD00", "previous": f"{BASE}{path}",
                 "results": [message(2), message(3)], "total": 5},
        "cD00": {"next": None, "previous": f"{BASE}{path}?cursor=cD0y", "results": [message(4)], "total": 5},
    }

    def callback(request):
        validate_request(request)
        cursor = parse_qs(urlsplit(request.url).query).get("cursor", [None])[0]
        return 200, {"Content-Type": "application/json"}, json.dumps(pages[cursor])

    rsps.add_callback(responses.GET, f"{BASE}{path}", callback=callback)

    messages = client.list_messages(CALL_ID, page_size=2)

    assert [m["text"] for m in messages] == [f"message {i}" for i in range(5)]
    assert len(rsps.calls) == 3
    for call, cursor in zip(rsps.calls, [None, "cD0y", "cD00"]):
        assert urlsplit(call.request.url).netloc == "api.ultravox.ai"
        query = parse_qs(urlsplit(call.request.url).query)
        assert query.get("cursor", [None])[0] == cursor
        assert query["pageSize"] == ["2"]


def test_list_messages_stops_a_cursor_loop(rsps, client):
    path = f"/api/calls/{CALL_ID}/messages"
    looping = {"next": f"{BASE}{path}?cursor=same", "previous": None, "results": [message(0)]}
    rsps.add_callback(responses.GET, f"{BASE}{path}", callback=answer(200, json_body=looping))

    with pytest.raises(UltravoxServerError, match="cursor repeated"):
        client.list_messages(CALL_ID)
    assert len(rsps.calls) == 2  # the first page, then the one whose cursor repeats


def test_list_messages_stops_after_max_pages(rsps, client, monkeypatch):
    monkeypatch.setattr(ultravox, "MAX_MESSAGE_PAGES", 3)
    path = f"/api/calls/{CALL_ID}/messages"
    counter_ = iter(range(100))

    def callback(request):
        validate_request(request)
        page = {"next": f"{BASE}{path}?cursor=c{next(counter_)}", "results": [message(0)]}
        return 200, {"Content-Type": "application/json"}, json.dumps(page)

    rsps.add_callback(responses.GET, f"{BASE}{path}", callback=callback)

    with pytest.raises(UltravoxServerError, match="more than 3 pages"):
        client.list_messages(CALL_ID)
    assert len(rsps.calls) == 3


def test_list_messages_rejects_a_page_without_results(rsps, client):
    rsps.add_callback(responses.GET, f"{BASE}/api/calls/{CALL_ID}/messages",
                      callback=answer(200, json_body={"next": None}))
    with pytest.raises(UltravoxServerError, match="results"):
        client.list_messages(CALL_ID)


# --------------------------------------------------------------------------- recording


def test_get_recording_redirect_returns_location_without_following(rsps, client):
    rsps.add_callback(responses.GET, f"{BASE}/api/calls/{CALL_ID}/recording",
                      callback=answer(302, headers={"Location": STORAGE_URL,
                                                    "Content-Type": "text/html; charset=utf-8"}))

    recording = client.get_recording(CALL_ID)

    assert recording == Recording(redirect_url=STORAGE_URL, response=None, content_type=None)
    # Only the Ultravox request: the storage host (which must never see X-API-Key) was not contacted.
    assert [urlsplit(c.request.url).netloc for c in rsps.calls] == ["api.ultravox.ai"]


def test_get_recording_200_streams_audio(rsps, client):
    audio = b"RIFF" + bytes(range(256)) * 64
    rsps.add_callback(responses.GET, f"{BASE}/api/calls/{CALL_ID}/recording",
                      callback=answer(200, body=audio, headers={"Content-Type": "audio/wav"}))

    recording = client.get_recording(CALL_ID)

    assert recording.redirect_url is None
    assert recording.content_type == "audio/wav"
    assert rsps.calls[0].request.req_kwargs["stream"] is True
    assert rsps.calls[0].request.headers["Accept"] == "*/*"  # not JSON-only: the answer is audio
    with recording.response as response:
        assert b"".join(response.iter_content(chunk_size=1024)) == audio


def test_get_recording_404(rsps, client):
    rsps.add_callback(responses.GET, f"{BASE}/api/calls/{CALL_ID}/recording",
                      callback=answer(404, json_body={"detail": "Recording not found."}))

    with pytest.raises(UltravoxNotFound) as info:
        client.get_recording(CALL_ID)
    assert info.value.status == 404
    assert info.value.detail == "Recording not found."


def test_get_recording_redirect_without_location_is_a_server_error(rsps, client):
    rsps.add_callback(responses.GET, f"{BASE}/api/calls/{CALL_ID}/recording", callback=answer(302))
    with pytest.raises(UltravoxServerError, match="Location"):
        client.get_recording(CALL_ID)


# --------------------------------------------------------------------------- data messages


def test_send_data_message_204(rsps, client):
    msg = {"type": "forced_agent_message", "text": "One moment please."}
    rsps.add_callback(responses.POST, f"{BASE}/api/calls/{CALL_ID}/send_data_message", callback=answer(204))

    assert client.send_data_message(CALL_ID, msg) is None
    assert sent_json(rsps.calls[0].request) == msg


@pytest.mark.parametrize("spoken, expected", [
    ("Goodbye!", {"type": "hang_up", "message": "Goodbye!"}),
    (None, {"type": "hang_up"}),
])
def test_hang_up_204(rsps, client, spoken, expected):
    rsps.add_callback(responses.POST, f"{BASE}/api/calls/{CALL_ID}/send_data_message", callback=answer(204))

    client.hang_up(CALL_ID, spoken)

    assert sent_json(rsps.calls[0].request) == expected


def test_hang_up_on_inactive_call_422_is_a_client_error_with_detail(rsps, client):
    rsps.add_callback(responses.POST, f"{BASE}/api/calls/{CALL_ID}/send_data_message",
                      callback=answer(422, json_body={"detail": "Call is not active."}))

    with pytest.raises(UltravoxClientError) as info:
        client.hang_up(CALL_ID, "bye")
    error = info.value
    assert type(error) is UltravoxClientError
    assert (error.status, error.detail, error.operation) == (422, "Call is not active.", "hang_up")


def test_send_data_message_requires_a_type(client):
    with pytest.raises(ValueError):
        client.send_data_message(CALL_ID, {"text": "no type"})


# --------------------------------------------------------------------------- HTTP errors


@pytest.mark.parametrize("status", [401, 403])
def test_auth_failures(rsps, client, status):
    rsps.add_callback(responses.GET, f"{BASE}/api/calls/{CALL_ID}",
                      callback=answer(status, json_body={"detail": "Invalid API key"}))

    with pytest.raises(UltravoxAuthError) as info:
        client.get_call(CALL_ID)
    assert isinstance(info.value, UltravoxClientError)
    assert (info.value.status, info.value.detail) == (status, "Invalid API key")


def test_400_validation_error_detail_is_the_raw_json(rsps, client):
    problem = {"medium": ["At most one call medium may be set."]}
    rsps.add_callback(responses.POST, f"{BASE}/api/calls", callback=answer(400, json_body=problem))

    with pytest.raises(UltravoxClientError) as info:
        client.create_call({"medium": {"twilio": {}}})
    assert json.loads(info.value.detail) == problem


def test_429_with_retry_after_seconds(rsps, client):
    rsps.add_callback(responses.POST, f"{BASE}/api/calls",
                      callback=answer(429, json_body={"detail": "Request was throttled."},
                                      headers={"Retry-After": "7"}))

    with pytest.raises(UltravoxRateLimited) as info:
        client.create_call({"medium": {"twilio": {}}})
    assert (info.value.status, info.value.retry_after) == (429, 7.0)
    assert info.value.detail == "Request was throttled."


def test_429_with_retry_after_http_date(rsps, client):
    when = datetime.now(timezone.utc) + timedelta(seconds=120)
    rsps.add_callback(responses.POST, f"{BASE}/api/calls",
                      callback=answer(429, body="Too Many Requests",
                                      headers={"Retry-After": format_datetime(when, usegmt=True)}))

    with pytest.raises(UltravoxRateLimited) as info:
        client.create_call({})
    assert 100 < info.value.retry_after <= 121


@pytest.mark.parametrize("header, expected", [({"Retry-After": "30"}, 30.0), ({}, None),
                                              ({"Retry-After": "soon"}, None)])
def test_503_is_rate_limited(rsps, client, header, expected):
    rsps.add_callback(responses.POST, f"{BASE}/api/agents/{AGENT_ID}/calls",
                      callback=answer(503, body="Service Unavailable", headers=header))

    with pytest.raises(UltravoxRateLimited) as info:
        client.create_agent_call(AGENT_ID, {"templateContext": {}})
    assert (info.value.status, info.value.retry_after) == (503, expected)


def test_500_is_a_server_error_with_truncated_detail(rsps, client):
    html = "<html>" + "x" * 5000 + "</html>"
    rsps.add_callback(responses.GET, f"{BASE}/api/calls/{CALL_ID}",
                      callback=answer(500, body=html, headers={"Content-Type": "text/html"}))

    with pytest.raises(UltravoxServerError) as info:
        client.get_call(CALL_ID)
    assert info.value.status == 500
    assert info.value.detail.startswith("<html>xxx")
    assert len(info.value.detail) <= 510


def test_error_body_with_unknown_charset_still_gives_a_detail(rsps, client):
    rsps.add_callback(responses.GET, f"{BASE}/api/calls/{CALL_ID}",
                      callback=answer(502, body=b"Bad gateway",
                                      headers={"Content-Type": "text/plain; charset=no-such-codec"}))
    with pytest.raises(UltravoxServerError) as info:
        client.get_call(CALL_ID)
    assert info.value.detail == "Bad gateway"


def test_non_json_2xx_is_a_server_error(rsps, client):
    rsps.add_callback(responses.POST, f"{BASE}/api/calls",
                      callback=answer(201, body="<html>ok</html>", headers={"Content-Type": "text/html"}))
    before = counter("create_call", "server_error")

    with pytest.raises(UltravoxServerError, match="not a JSON object"):
        client.create_call({})
    assert counter("create_call", "server_error") == before + 1


def test_unexpected_redirect_on_a_json_endpoint_is_not_followed(rsps, client):
    rsps.add_callback(responses.GET, f"{BASE}/api/calls/{CALL_ID}",
                      callback=answer(302, headers={"Location": "https://elsewhere.example.com/"}))

    with pytest.raises(UltravoxServerError):
        client.get_call(CALL_ID)
    assert len(rsps.calls) == 1


# --------------------------------------------------------------------------- transport errors


@pytest.mark.parametrize("exc", [requests.ConnectTimeout("connect timed out"),
                                 requests.ReadTimeout("read timed out")])
def test_timeouts(rsps, client, exc):
    rsps.add_callback(responses.POST, f"{BASE}/api/calls", callback=answer(exc=exc))
    before = counter("create_call", "timeout")

    with pytest.raises(UltravoxTimeout) as info:
        client.create_call({"medium": {"twilio": {}}})
    assert info.value.status is None
    assert counter("create_call", "timeout") == before + 1


def test_connection_error(rsps, client):
    rsps.add_callback(responses.GET, f"{BASE}/api/calls/{CALL_ID}",
                      callback=answer(exc=requests.ConnectionError("Connection refused")))
    before = counter("get_call", "connection_error")

    with pytest.raises(UltravoxUnavailable) as info:
        client.get_call(CALL_ID)
    assert "Connection refused" in info.value.detail
    assert counter("get_call", "connection_error") == before + 1


# --------------------------------------------------------------------------- secrecy


def assert_no_key(error: BaseException) -> None:
    for text in (str(error), repr(error), repr(error.args), getattr(error, "detail", "")):
        assert API_KEY not in text
    # No chained requests exception (whose .request would hold the X-API-Key header).
    assert error.__cause__ is None and error.__context__ is None


@pytest.mark.parametrize("reply", [
    answer(403, json_body={"detail": f"Invalid API key {API_KEY}"}),
    answer(400, json_body={"X-API-Key": [API_KEY], "medium": ["bad"]}),
    answer(500, body=f"Traceback ... headers={{'X-API-Key': '{API_KEY}'}}"),
    answer(429, body=API_KEY, headers={"Retry-After": "1"}),
    answer(exc=requests.ConnectionError(f"proxy said: bad header {API_KEY}")),
    answer(exc=requests.ReadTimeout(f"timed out talking about {API_KEY}")),
])
def test_api_key_never_appears_in_errors_or_logs(rsps, client, caplog, reply):
    rsps.add_callback(responses.POST, f"{BASE}/api/calls", callback=reply)
    caplog.set_level(logging.DEBUG)

    with pytest.raises(UltravoxError) as info:
        client.create_call({"medium": {"twilio": {}}})

    assert_no_key(info.value)
    assert "[REDACTED]" in info.value.detail
    assert API_KEY not in caplog.text
    assert all(API_KEY not in str(record.args) for record in caplog.records)


def test_errors_survive_pickling_without_the_key():
    error = UltravoxRateLimited("create_call", "slow down", status=429, retry_after=3.0)
    copy = pickle.loads(pickle.dumps(error))
    assert (type(copy), copy.operation, copy.detail, copy.status, copy.retry_after) == \
        (UltravoxRateLimited, "create_call", "slow down", 429, 3.0)
    assert str(copy) == str(error)


def test_malformed_key_is_rejected_without_echoing_it():
    bad = API_KEY + "\n"
    with pytest.raises(ValueError) as info:
        UltravoxClient(bad)
    assert API_KEY not in str(info.value)


def test_client_repr_hides_the_key(client):
    assert API_KEY not in repr(client)


# --------------------------------------------------------------------------- metrics


@pytest.mark.parametrize("status, outcome", [(201, "ok"), (422, "client_error"), (404, "client_error"),
                                             (429, "rate_limited"), (503, "rate_limited"),
                                             (500, "server_error"), (502, "server_error")])
def test_metrics_outcome_by_status(rsps, client, status, outcome):
    reply = CALL if status == 201 else {"detail": "nope"}
    rsps.add_callback(responses.POST, f"{BASE}/api/calls", callback=answer(status, json_body=reply))
    before = counter("create_call", outcome)
    before_ok = counter("create_call", "ok")

    try:
        client.create_call({"medium": {"twilio": {}}})
    except UltravoxError:
        pass

    assert counter("create_call", outcome) == before + 1
    if outcome != "ok":
        assert counter("create_call", "ok") == before_ok


def test_metrics_count_every_message_page_and_hang_up_operation(rsps, client):
    path = f"/api/calls/{CALL_ID}/messages"
    rsps.add_callback(responses.GET, f"{BASE}{path}", callback=answer(
        200, json_body={"next": None, "results": [message(0)]}))
    rsps.add_callback(responses.POST, f"{BASE}/api/calls/{CALL_ID}/send_data_message", callback=answer(204))
    before_pages, before_hang_up = counter("list_messages", "ok"), counter("hang_up", "ok")

    client.list_messages(CALL_ID)
    client.hang_up(CALL_ID)

    assert counter("list_messages", "ok") == before_pages + 1
    assert counter("hang_up", "ok") == before_hang_up + 1


# --------------------------------------------------------------------------- configuration


def test_custom_base_url_and_config_timeouts_are_used(rsps):
    config = Config(database_url="sqlite://", ultravox_api_base="http://127.0.0.1:9100",
                    upstream_connect_timeout=1.5, upstream_read_timeout=4.0)
    client = UltravoxClient.from_config(API_KEY, config)
    rsps.add_callback(responses.GET, f"http://127.0.0.1:9100/api/calls/{CALL_ID}",
                      callback=answer(200, json_body=CALL))

    client.get_call(CALL_ID)

    request = rsps.calls[0].request
    assert request.url == f"http://127.0.0.1:9100/api/calls/{CALL_ID}"
    assert request.req_kwargs["timeout"] == (1.5, 4.0)


def test_trailing_slash_in_base_url_is_ignored(rsps):
    client = UltravoxClient(API_KEY, base_url="http://127.0.0.1:9100/")
    rsps.add_callback(responses.GET, f"http://127.0.0.1:9100/api/calls/{CALL_ID}",
                      callback=answer(200, json_body=CALL))
    client.get_call(CALL_ID)
    assert rsps.calls[0].request.url == f"http://127.0.0.1:9100/api/calls/{CALL_ID}"


@pytest.mark.parametrize("override, expected", [(None, (3.05, 10.0)), (2.5, 2.5), ((1.0, 4.0), (1.0, 4.0))])
def test_per_call_timeout_override_is_passed_to_requests(rsps, client, override, expected):
    rsps.add_callback(responses.POST, f"{BASE}/api/calls", callback=answer(201, json_body=CALL))
    rsps.add_callback(responses.POST, f"{BASE}/api/agents/{AGENT_ID}/calls", callback=answer(201, json_body=CALL))

    client.create_call({}, timeout=override)
    client.create_agent_call(AGENT_ID, {}, timeout=override)

    assert [c.request.req_kwargs["timeout"] for c in rsps.calls] == [expected, expected]


def test_ids_are_quoted_into_one_path_segment(rsps, client):
    seen: list[requests.PreparedRequest] = []

    def callback(request):
        seen.append(request)
        return 404, {"Content-Type": "application/json"}, json.dumps({"detail": "Not found."})

    rsps.add_callback(responses.GET, f"{BASE}/api/calls/..%2Fagents%3Fx%3D1", callback=callback)

    with pytest.raises(UltravoxNotFound):
        client.get_call("../agents?x=1")

    assert urlsplit(seen[0].url).path == "/api/calls/..%2Fagents%3Fx%3D1"
    # The spec helper catches ids that are not UUIDs, as Ultravox would.
    with pytest.raises(AssertionError, match="uuid"):
        validate_request(seen[0])


def test_empty_id_is_rejected(client):
    with pytest.raises(ValueError):
        client.get_call("")


def test_clients_share_one_pooled_session_without_key_in_defaults():
    first, second = UltravoxClient(API_KEY), UltravoxClient("Ab12Cd34.otherkeyotherkeyotherkeyotherkey12")
    session = first._session
    assert session is second._session is ultravox.shared_session()
    adapter = session.get_adapter(BASE)
    assert adapter._pool_maxsize == 100 and adapter._pool_connections == 10
    assert adapter.max_retries.total == 0
    assert "X-API-Key" not in session.headers
    own = requests.Session()
    assert UltravoxClient(API_KEY, session=own)._session is own


def test_requests_go_through_the_given_sessions_adapter_with_its_proxies():
    sent: list[tuple[requests.PreparedRequest, dict]] = []

    class RecordingAdapter(requests.adapters.HTTPAdapter):
        def send(self, request, **kwargs):
            sent.append((request, kwargs))
            response = requests.Response()
            response.status_code, response._content, response.url = 200, json.dumps(CALL).encode(), request.url
            return response

    own = requests.Session()
    own.mount("https://", RecordingAdapter())
    own.proxies = {"https": "http://proxy.internal:3128"}
    assert UltravoxClient(API_KEY, session=own, timeout=(1.5, 4.0)).get_call(CALL_ID) == CALL
    request, options = sent[0]
    assert request.url == f"{BASE}/api/calls/{CALL_ID}" and request.headers["X-API-Key"] == API_KEY
    assert options["proxies"] == {"https": "http://proxy.internal:3128"} and options["timeout"] == (1.5, 4.0)


def test_base_url_is_prepared_once_with_its_path_and_international_host(rsps):
    rsps.add(responses.GET, f"https://xn--bcher-kva.example/ultravox/api/calls/{CALL_ID}", json=CALL)
    assert UltravoxClient(API_KEY, base_url="https://bücher.example/ultravox/").get_call(CALL_ID) == CALL


def test_a_body_json_cannot_encode_is_a_typed_error_without_the_key(rsps, client):
    with pytest.raises(UltravoxError) as caught:
        client.create_call({"maxDuration": float("nan")})
    assert API_KEY not in repr(caught.value) and not rsps.calls


def test_shared_session_refuses_cookies(rsps, client):
    rsps.add_callback(responses.GET, f"{BASE}/api/calls/{CALL_ID}",
                      callback=answer(200, json_body=CALL, headers={"Set-Cookie": "sessionid=abc; Path=/"}))
    client.get_call(CALL_ID)
    assert len(client._session.cookies) == 0


def test_parse_retry_after_edge_cases():
    now = datetime(2025, 1, 1, 12, 0, 0, tzinfo=timezone.utc)
    assert parse_retry_after("120", now=now) == 120.0
    assert parse_retry_after("Wed, 01 Jan 2025 12:00:30 GMT", now=now) == 30.0
    assert parse_retry_after("Wed, 01 Jan 2025 11:00:00 GMT", now=now) == 0.0  # in the past
    for bad in (None, "", "  ", "-5", "nan", "inf", "tomorrow"):
        assert parse_retry_after(bad, now=now) is None


# --------------------------------------------------------------------------- the spec helper itself


def prepared(method: str, path: str, *, body: Any = None, key: str | None = API_KEY,
             base: str = BASE) -> requests.PreparedRequest:
    headers = {"X-API-Key": key} if key is not None else {}
    return requests.Request(method, base + path, json=body, headers=headers).prepare()


def test_spec_helper_accepts_a_valid_request_on_any_host():
    validate_request(prepared("POST", "/api/calls", body={"medium": {"twilio": {}}},
                              base="http://127.0.0.1:9100"))


@pytest.mark.parametrize("request_, message", [
    (prepared("POST", "/api/calls", body={"medium": {"twilio": {}}}, key=None), "X-API-Key"),
    (prepared("POST", "/api/calls", body={"medium": {"twilio": "yes"}}), "not of type 'object'"),
    (prepared("POST", "/api/calls", body={"medium": "twilio"}), "not of type 'object'"),
    (prepared("POST", "/api/calls", body={"metadata": {"agency_id": 42}}), "not of type 'string'"),
    (prepared("POST", "/api/calls", body={"joinTimeout": "30 seconds"}), "does not match"),
    (prepared("POST", "/api/calls", body={"firstSpeakerSetting": {"agent": {}}}), "firstSpeakerSetting"),
    (prepared("POST", "/api/calls", body={"medium": {"twilio": {"outgoing": {"too": "+1"}}}}), "too"),
    (prepared("POST", "/api/calls?bogus=1", body={}), "bogus"),
    (prepared("POST", f"/api/agents/{AGENT_ID}/calls?priorCallId={CALL_ID}", body={}), "priorCallId"),
    (prepared("POST", f"/api/calls/{CALL_ID}/send_data_message", body={"message": "bye"}), "'type'"),
    (prepared("GET", "/api/nope"), "no such operation"),
    (prepared("PUT", f"/api/calls/{CALL_ID}"), "no such operation"),
    (prepared("GET", f"/api/calls/{CALL_ID}/"), "no such operation"),
])
def test_spec_helper_rejects_bad_requests(request_, message):
    with pytest.raises(AssertionError, match=message):
        validate_request(request_)


def test_spec_helper_strict_mode_can_be_relaxed():
    typo = prepared("POST", "/api/calls", body={"firstSpeakerSetting": {"agent": {}}})
    validate_request(typo, strict=False)
