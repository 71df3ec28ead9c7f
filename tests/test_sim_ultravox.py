"""The Ultravox simulator, driven over real HTTP on 127.0.0.1."""
from __future__ import annotations

import copy
import hashlib
import hmac
import io
import json
import re
import threading
import time
import uuid
import wave
from collections.abc import Iterator
from datetime import datetime, timezone
from typing import Any

import pytest
import requests
from flask import Flask, Response, request

from telephony.sim import ultravox
from telephony.sim.common import ServerHandle, serve_in_thread

API_KEY = "Zk9Ht7Lm.wX7pN9fM3kLj6tRq2bGhA8yE5cZvD4sT"
WEBHOOK_SECRET = "sim-webhook-secret-0123456789"
ISO_Z = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?Z$")


@pytest.fixture
def http() -> Iterator[requests.Session]:
    session = requests.Session()
    session.trust_env = False  # loopback only: never route through an environment proxy
    yield session
    session.close()


@pytest.fixture
def sim() -> Iterator[ServerHandle]:
    with serve_in_thread(ultravox.create_app(api_keys={API_KEY})) as handle:
        yield handle


def _headers() -> dict[str, str]:
    return {"X-API-Key": API_KEY}


def _create(http: requests.Session, sim: ServerHandle, body: dict[str, Any] | None = None) -> dict[str, Any]:
    response = http.post(f"{sim.base_url}/api/calls", json=body or {}, headers=_headers())
    assert response.status_code == 201, response.text
    return response.json()


def _end(http: requests.Session, sim: ServerHandle, call_id: str, **body: Any) -> dict[str, Any]:
    response = http.post(f"{sim.base_url}/_sim/calls/{call_id}/end", json=body)
    assert response.status_code == 200, response.text
    return response.json()


# -- call creation -----------------------------------------------------------------------


def test_create_call_has_the_real_call_shape(http: requests.Session, sim: ServerHandle) -> None:
    body = {
        "systemPrompt": "You are a test agent.",
        "medium": {"twilio": {}},
        "firstSpeakerSettings": {"user": {}},
        "recordingEnabled": True,
        "metadata": {"agency": "acme", "source": "test"},
        "initialOutputMedium": "MESSAGE_MEDIUM_TEXT",
    }
    call = _create(http, sim, body)

    assert str(uuid.UUID(call["callId"])) == call["callId"]
    assert ISO_Z.match(call["created"])
    assert call["joined"] is None and call["ended"] is None and call["endReason"] is None
    assert call["joinUrl"] == f"wss://127.0.0.1:{sim.port}/calls/{call['callId']}/join"
    assert call["medium"] == {"twilio": {}}
    assert call["firstSpeakerSettings"] == {"user": {}}
    assert call["firstSpeaker"] == "FIRST_SPEAKER_USER"
    assert call["recordingEnabled"] is True
    assert call["metadata"] == {"agency": "acme", "source": "test"}
    assert call["initialOutputMedium"] == "MESSAGE_MEDIUM_TEXT"
    assert call["agentId"] is None
    assert call["billingStatus"] == "BILLING_STATUS_PENDING"
    # Every field the OpenAPI spec marks as required on Call is present.
    for name in (
        "agent", "agentId", "billedDuration", "billedSideInputTokens", "billedSideOutputTokens",
        "billingStatus", "callId", "clientVersion", "created", "endReason", "ended",
        "experimentalSettings", "firstSpeaker", "firstSpeakerSettings", "initialOutputMedium",
        "initialState", "joinUrl", "joined", "metadata", "requestContext", "shortSummary",
        "sipDetails", "summary",
    ):  # fmt: skip
        assert name in call

    fetched = http.get(f"{sim.base_url}/api/calls/{call['callId']}", headers=_headers())
    assert fetched.status_code == 200
    assert fetched.json() == call


def test_agent_call_defaults_and_template_context(http: requests.Session, sim: ServerHandle) -> None:
    agent_id = str(uuid.uuid4())
    response = http.post(
        f"{sim.base_url}/api/agents/{agent_id}/calls",
        json={"templateContext": {"customerName": "Jane"}, "medium": {"plivo": {}}},
        headers=_headers(),
    )
    assert response.status_code == 201, response.text
    call = response.json()
    assert call["agentId"] == agent_id
    assert call["agent"]["agentId"] == agent_id
    assert call["initialOutputMedium"] == "MESSAGE_MEDIUM_VOICE"
    assert call["firstSpeakerSettings"] == {"agent": {}}
    assert call["medium"] == {"plivo": {}}
    assert "templateContext" not in call  # not a Call field; kept sim-side
    sim_view = http.get(f"{sim.base_url}/_sim/calls/{call['callId']}").json()
    assert sim_view["templateContext"] == {"customerName": "Jane"}

    default_medium = _create(http, sim)
    assert default_medium["medium"] == {"webRtc": {}}


@pytest.mark.parametrize("key", [None, "wrong.key"])
def test_missing_or_unknown_api_key_is_403(http: requests.Session, sim: ServerHandle, key: str | None) -> None:
    headers = {"X-API-Key": key} if key else {}
    response = http.post(f"{sim.base_url}/api/calls", json={}, headers=headers)
    assert response.status_code == 403
    assert response.json() == {"detail": "Invalid API key"}
    assert http.get(f"{sim.base_url}/api/calls/{uuid.uuid4()}", headers=headers).status_code == 403


def test_invalid_bodies_are_400_with_detail(http: requests.Session, sim: ServerHandle) -> None:
    url = f"{sim.base_url}/api/calls"
    for payload in (b"[1, 2]", b'"text"', b"{not json"):
        response = http.post(url, data=payload, headers={**_headers(), "Content-Type": "application/json"})
        assert response.status_code == 400, payload
        assert isinstance(response.json()["detail"], str)
    response = http.post(url, json={"metadata": {"attempt": 2}}, headers=_headers())
    assert response.status_code == 400
    assert "metadata" in response.json()["detail"]
    response = http.post(url, json={"templateContext": {"a": "b"}}, headers=_headers())
    assert response.status_code == 400  # only agent calls take templateContext


def test_unknown_call_is_404(http: requests.Session, sim: ServerHandle) -> None:
    response = http.get(f"{sim.base_url}/api/calls/{uuid.uuid4()}", headers=_headers())
    assert response.status_code == 404
    assert response.json() == {"detail": "Not found."}


def test_responses_conform_to_the_openapi_spec(http: requests.Session, sim: ServerHandle) -> None:
    """Sim responses validate against tests/fixtures/ultravox-openapi.yaml (openapi-core)."""
    openapi_core = pytest.importorskip("openapi_core")
    from openapi_core.contrib.requests import RequestsOpenAPIRequest, RequestsOpenAPIResponse

    from tests.ultravox_openapi import load_spec

    spec = copy.deepcopy(load_spec())  # load_spec is cached: never mutate its dict
    properties = spec["components"]["schemas"]["Call"]["properties"]
    # Known spec defect: `agent` is required and not nullable, yet a call created without
    # an agent has none; DRF renders that as null.
    properties["agent"]["nullable"] = True
    # drf-spectacular writes nullable objects as {nullable: true, allOf: [$ref]}; in OAS
    # 3.0 the allOf member still rejects null, so spell out "the object or null".
    for prop in properties.values():
        if prop.get("nullable") and len(prop.get("allOf", [])) == 1:
            prop["oneOf"] = [prop.pop("allOf")[0], {"$ref": "#/components/schemas/NullEnum"}]
    api = openapi_core.OpenAPI.from_dict(spec)

    def check(response: requests.Response) -> None:
        prepared = response.request.copy()
        prepared.url = str(prepared.url).replace(sim.base_url, "https://api.ultravox.ai")
        api.validate_response(RequestsOpenAPIRequest(prepared), RequestsOpenAPIResponse(response))

    created = http.post(
        f"{sim.base_url}/api/calls",
        json={"medium": {"twilio": {}}, "recordingEnabled": True, "metadata": {"a": "b"}},
        headers=_headers(),
    )
    check(created)
    check(http.post(f"{sim.base_url}/api/agents/{uuid.uuid4()}/calls", json={}, headers=_headers()))
    call_id = created.json()["callId"]
    http.post(f"{sim.base_url}/_sim/calls/{call_id}/join").raise_for_status()
    _end(http, sim, call_id)
    check(http.get(f"{sim.base_url}/api/calls/{call_id}", headers=_headers()))
    check(http.get(f"{sim.base_url}/api/calls/{call_id}/messages?pageSize=2", headers=_headers()))
    check(http.get(f"{sim.base_url}/api/calls/{call_id}/recording", headers=_headers(), allow_redirects=False))


# -- transcript ---------------------------------------------------------------------------


def test_messages_cursor_pagination(http: requests.Session, sim: ServerHandle) -> None:
    call_id = _create(http, sim)["callId"]
    url = f"{sim.base_url}/api/calls/{call_id}/messages"
    empty = http.get(url, headers=_headers()).json()
    assert empty == {"next": None, "previous": None, "results": [], "total": 0}

    _end(http, sim, call_id, messageCount=5)
    everything = http.get(url, headers=_headers()).json()  # default pageSize 100
    assert everything["total"] == 5 and len(everything["results"]) == 5 and everything["next"] is None

    pages = []
    next_url: str | None = f"{url}?pageSize=2"
    while next_url:
        page = http.get(next_url, headers=_headers()).json()
        pages.append(page)
        next_url = page["next"]
        if next_url:
            assert next_url.startswith(f"{url}?") and "cursor=" in next_url and "pageSize=2" in next_url
    assert [len(p["results"]) for p in pages] == [2, 2, 1]
    assert all(p["total"] == 5 for p in pages)
    assert pages[0]["previous"] is None and pages[1]["previous"] is not None
    assert [m for p in pages for m in p["results"]] == everything["results"]
    first = everything["results"][0]
    assert first["role"] == "MESSAGE_ROLE_AGENT" and first["medium"] == "MESSAGE_MEDIUM_VOICE"

    bad = http.get(f"{url}?cursor=not-a-cursor", headers=_headers())
    assert bad.status_code == 404


# -- recording ----------------------------------------------------------------------------


def _assert_wav(content: bytes) -> None:
    with wave.open(io.BytesIO(content)) as wav:
        assert wav.getnframes() > 0 and wav.getsampwidth() == 2


def test_recording_redirect_to_storage_without_api_key(http: requests.Session, sim: ServerHandle) -> None:
    not_recorded = _create(http, sim)["callId"]
    call_id = _create(http, sim, {"recordingEnabled": True})["callId"]
    url = f"{sim.base_url}/api/calls/{call_id}/recording"

    early = http.get(url, headers=_headers(), allow_redirects=False)
    assert early.status_code == 404 and "detail" in early.json()

    _end(http, sim, call_id)
    _end(http, sim, not_recorded)
    disabled = http.get(f"{sim.base_url}/api/calls/{not_recorded}/recording", headers=_headers())
    assert disabled.status_code == 404 and "detail" in disabled.json()

    redirect = http.get(url, headers=_headers(), allow_redirects=False)
    assert redirect.status_code == 302
    location = redirect.headers["Location"]
    assert location.startswith(f"{sim.base_url}/_sim/storage/{call_id}.wav?")
    assert "signature=" in location

    # Correct client behaviour: fetch the signed URL without the key.
    audio = http.get(location)
    assert audio.status_code == 200 and audio.headers["Content-Type"] == "audio/wav"
    _assert_wav(audio.content)
    # The leak this endpoint exists to catch: requests re-sends custom headers on redirect.
    leaky = http.get(url, headers=_headers())
    assert leaky.status_code == 200

    storage = http.get(f"{sim.base_url}/_sim/storage-requests").json()["requests"]
    assert [r["had_api_key"] for r in storage] == [False, True]
    assert all(r["signature_valid"] for r in storage)
    forged = http.get(f"{sim.base_url}/_sim/storage/{call_id}.wav?expires=9999999999&signature=00")
    assert forged.status_code == 403


def test_recording_direct_mode(http: requests.Session) -> None:
    with serve_in_thread(ultravox.create_app(recording_mode="direct")) as sim:
        call_id = _create(http, sim, {"recordingEnabled": True})["callId"]
        _end(http, sim, call_id)
        response = http.get(f"{sim.base_url}/api/calls/{call_id}/recording", allow_redirects=False)
        assert response.status_code == 200
        assert response.headers["Content-Type"] == "audio/wav"
        _assert_wav(response.content)
        # Switchable at runtime too.
        http.post(f"{sim.base_url}/_sim/config", json={"recording_mode": "redirect"}).raise_for_status()
        response = http.get(f"{sim.base_url}/api/calls/{call_id}/recording", allow_redirects=False)
        assert response.status_code == 302


# -- send_data_message --------------------------------------------------------------------


def test_hang_up_ends_the_call_then_422(http: requests.Session, sim: ServerHandle) -> None:
    call_id = _create(http, sim)["callId"]
    http.post(f"{sim.base_url}/_sim/calls/{call_id}/join").raise_for_status()
    url = f"{sim.base_url}/api/calls/{call_id}/send_data_message"

    response = http.post(url, json={"type": "hang_up", "message": "Goodbye!"}, headers=_headers())
    assert response.status_code == 204 and response.content == b""

    call = http.get(f"{sim.base_url}/api/calls/{call_id}", headers=_headers()).json()
    assert ISO_Z.match(call["ended"]) and ISO_Z.match(call["joined"])
    assert call["endReason"] == "agent_hangup"
    assert call["billedDuration"].endswith("s")
    assert call["billingStatus"].startswith("BILLING_STATUS_")
    assert call["summary"] and call["shortSummary"]

    again = http.post(url, json={"type": "hang_up"}, headers=_headers())
    assert again.status_code == 422 and "detail" in again.json()


def test_sim_end_sets_reason_and_billing(http: requests.Session, sim: ServerHandle) -> None:
    call_id = _create(http, sim)["callId"]
    ended = _end(http, sim, call_id, endReason="hangup", billedDuration="42s")
    assert ended["endReason"] == "hangup"
    assert ended["billedDuration"] == "42s"
    assert ended["billingStatus"] == "BILLING_STATUS_BILLED"
    assert http.post(f"{sim.base_url}/_sim/calls/{call_id}/end", json={}).status_code == 409


# -- injection ----------------------------------------------------------------------------


def test_latency_injection_delays_api_requests(http: requests.Session, sim: ServerHandle) -> None:
    http.post(f"{sim.base_url}/_sim/config", json={"latency_ms": 300}).raise_for_status()
    started = time.monotonic()
    _create(http, sim)
    assert time.monotonic() - started >= 0.3

    with serve_in_thread(ultravox.create_app(latency_ms=200)) as slow:
        started = time.monotonic()
        _create(http, slow)
        assert time.monotonic() - started >= 0.2


def test_request_log_holds_status_and_time_taken(http: requests.Session, sim: ServerHandle) -> None:
    # Benchmarks subtract the simulator's own time per request from the service's.
    http.post(f"{sim.base_url}/_sim/config", json={"latency_ms": 120}).raise_for_status()
    _create(http, sim)
    http.post(f"{sim.base_url}/api/calls", json=[], headers=_headers())  # 400: not an object
    created, rejected = http.get(f"{sim.base_url}/_sim/requests").json()["requests"][-2:]
    assert created["status"] == 201 and 120 <= created["duration_ms"] < 1000
    assert rejected["status"] == 400 and rejected["duration_ms"] >= 120


def _inject(http: requests.Session, sim: ServerHandle, **rule: Any) -> None:
    response = http.post(f"{sim.base_url}/_sim/failures", json={"failures": [rule]})
    assert response.status_code == 200, response.text


def test_injected_error_then_recovers(http: requests.Session, sim: ServerHandle) -> None:
    _inject(http, sim, method="POST", path_prefix="/api/calls", mode="error", status=500, count=1)
    failed = http.post(f"{sim.base_url}/api/calls", json={}, headers=_headers())
    assert failed.status_code == 500 and "detail" in failed.json()
    assert http.post(f"{sim.base_url}/api/calls", json={}, headers=_headers()).status_code == 201

    log = http.get(f"{sim.base_url}/_sim/requests").json()["requests"]
    assert [(r["method"], r["path"], r["had_api_key"]) for r in log] == [("POST", "/api/calls", True)] * 2
    assert API_KEY not in json.dumps(log)  # booleans only, never the key


def test_injected_rate_limit_and_unavailable_carry_retry_after(
    http: requests.Session, sim: ServerHandle
) -> None:
    _inject(http, sim, path_prefix="/api/calls", mode="rate_limit", retry_after=2, count=1)
    _inject(http, sim, path_prefix="/api/calls", mode="unavailable", retry_after=3, count=1)
    limited = http.post(f"{sim.base_url}/api/calls", json={}, headers=_headers())
    assert limited.status_code == 429 and limited.headers["Retry-After"] == "2"
    assert "detail" in limited.json()
    unavailable = http.post(f"{sim.base_url}/api/calls", json={}, headers=_headers())
    assert unavailable.status_code == 503 and unavailable.headers["Retry-After"] == "3"
    assert http.post(f"{sim.base_url}/api/calls", json={}, headers=_headers()).status_code == 201


def test_failure_method_filter_and_until_reset(http: requests.Session, sim: ServerHandle) -> None:
    call_id = _create(http, sim)["callId"]
    _inject(http, sim, method="GET", path_prefix="/api/calls/", mode="error", status=502, count=None)
    for _ in range(3):
        assert http.get(f"{sim.base_url}/api/calls/{call_id}", headers=_headers()).status_code == 502
    assert _create(http, sim)["callId"]  # POST does not match the GET rule
    http.post(f"{sim.base_url}/_sim/reset").raise_for_status()
    assert http.get(f"{sim.base_url}/_sim/requests").json()["requests"] == []
    assert http.get(f"{sim.base_url}/api/calls/{call_id}", headers=_headers()).status_code == 404


def test_injected_timeout_trips_the_client_read_timeout(http: requests.Session, sim: ServerHandle) -> None:
    _inject(http, sim, path_prefix="/api/calls", mode="timeout", delay_s=5, count=1)
    with pytest.raises(requests.exceptions.ReadTimeout):
        http.post(f"{sim.base_url}/api/calls", json={}, headers=_headers(), timeout=(2, 0.3))
    # Reset releases the parked request; the next one is served normally.
    http.post(f"{sim.base_url}/_sim/reset").raise_for_status()
    assert http.post(f"{sim.base_url}/api/calls", json={}, headers=_headers(), timeout=5).status_code == 201


def test_bad_failure_rule_is_rejected(http: requests.Session, sim: ServerHandle) -> None:
    response = http.post(f"{sim.base_url}/_sim/failures", json={"failures": [{"mode": "explode"}]})
    assert response.status_code == 400


# -- webhooks -----------------------------------------------------------------------------


class _Receiver:
    """A tiny WSGI app that records raw webhook deliveries; fails the first one."""

    def __init__(self) -> None:
        self.deliveries: list[tuple[bytes, dict[str, str]]] = []
        self.lock = threading.Lock()
        self.app = Flask("webhook-receiver")
        self.app.add_url_rule("/hook", view_func=self._hook, methods=["POST"])

    def _hook(self) -> Response:
        with self.lock:
            self.deliveries.append((request.get_data(), dict(request.headers)))
            first = len(self.deliveries) == 1
        return Response(status=500 if first else 204)

    def wait_for(self, count: int, timeout_s: float = 10.0) -> list[tuple[bytes, dict[str, str]]]:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            with self.lock:
                if len(self.deliveries) >= count:
                    return list(self.deliveries)
            time.sleep(0.02)
        raise AssertionError(f"expected {count} deliveries, got {len(self.deliveries)}")


def _verify(body: bytes, headers: dict[str, str], secret: str) -> bool:
    """Independent implementation of Ultravox's scheme: hex HMAC-SHA256 over
    raw body bytes followed by the timestamp header, any of comma-separated signatures."""
    timestamp = headers["X-Ultravox-Webhook-Timestamp"]
    expected = hmac.new(secret.encode(), body + timestamp.encode(), hashlib.sha256).hexdigest()
    return any(hmac.compare_digest(expected, s.strip()) for s in headers["X-Ultravox-Webhook-Signature"].split(","))


def _wait_for_attempts(
    http: requests.Session, sim: ServerHandle, count: int, timeout_s: float = 10.0
) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout_s
    while True:
        attempts = http.get(f"{sim.base_url}/_sim/webhooks").json()["attempts"]
        if len(attempts) >= count or time.monotonic() > deadline:
            return attempts
        time.sleep(0.02)


def test_signed_call_ended_and_billed_webhooks(http: requests.Session) -> None:
    receiver = _Receiver()
    with serve_in_thread(receiver.app) as hook_server:
        app = ultravox.create_app(webhook_url=f"{hook_server.base_url}/hook", webhook_secret=WEBHOOK_SECRET)
        with serve_in_thread(app) as sim:
            call_id = _create(http, sim)["callId"]
            http.post(f"{sim.base_url}/_sim/calls/{call_id}/join").raise_for_status()
            _end(http, sim, call_id, endReason="hangup", billedDuration="42s")

            # First delivery gets 500, so: ended (failed), ended (retried), billed.
            deliveries = receiver.wait_for(3)
            events = []
            for body, headers in deliveries:
                assert headers["Content-Type"] == "application/json"
                timestamp = headers["X-Ultravox-Webhook-Timestamp"]
                assert ISO_Z.match(timestamp)
                sent = datetime.fromisoformat(timestamp.replace("Z", "+00:00"))
                assert abs((datetime.now(timezone.utc) - sent).total_seconds()) < 60
                assert _verify(body, headers, WEBHOOK_SECRET)
                assert not _verify(body + b" ", headers, WEBHOOK_SECRET)
                assert not _verify(body, headers, "another-secret")
                payload = json.loads(body)
                events.append(payload["event"])
                assert payload["call"]["callId"] == call_id
                assert payload["call"]["endReason"] == "hangup"
                assert payload["call"]["billedDuration"] == "42s"
            assert events == ["call.ended", "call.ended", "call.billed"]

            # The sim logs an attempt after the receiver answered: poll, do not race it.
            attempts = _wait_for_attempts(http, sim, 3)
            assert [(a["event"], a["attempt"], a["status"]) for a in attempts] == [
                ("call.ended", 1, 500),
                ("call.ended", 2, 204),
                ("call.billed", 1, 204),
            ]
            assert WEBHOOK_SECRET not in json.dumps(attempts)


def test_call_started_webhook_when_enabled_via_config(http: requests.Session, sim: ServerHandle) -> None:
    receiver = _Receiver()
    receiver.deliveries.append((b"", {}))  # so the first real delivery is not failed
    with serve_in_thread(receiver.app) as hook_server:
        http.post(
            f"{sim.base_url}/_sim/config",
            json={
                "webhook_url": f"{hook_server.base_url}/hook",
                "webhook_secrets": ["old-secret", WEBHOOK_SECRET],
                "emit_started": True,
            },
        ).raise_for_status()
        call_id = _create(http, sim)["callId"]
        body, headers = receiver.wait_for(2)[1]
        assert json.loads(body)["event"] == "call.started"
        assert json.loads(body)["call"]["callId"] == call_id
        assert len(headers["X-Ultravox-Webhook-Signature"].split(",")) == 2  # key rotation
        assert _verify(body, headers, WEBHOOK_SECRET) and _verify(body, headers, "old-secret")


def test_serve_in_thread_shuts_down(http: requests.Session) -> None:
    with serve_in_thread(ultravox.create_app()) as sim:
        base = sim.base_url
        assert sim.port > 0
        assert http.get(f"{base}/_sim/requests").status_code == 200
    with pytest.raises(requests.exceptions.ConnectionError):
        http.get(f"{base}/_sim/requests", timeout=1)
