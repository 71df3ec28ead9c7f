"""Inbound Telnyx calls: TeXML (POST /webhooks/telnyx/texml, the shared contract) and
Call Control (POST /webhooks/telnyx/call-control, answered through the REST API, checked
against the carriers simulator)."""
from __future__ import annotations

import base64
import json
import time
import uuid
from datetime import datetime, timedelta, timezone
from typing import Any
from urllib.parse import urlencode

import requests
import responses

from telephony.carriers.telnyx import TelnyxTexmlAdapter
from telephony.services import inbound as inbound_service
from tests.inbound_helpers import (
    CALLER,
    FALLBACK,
    JOIN_URL,
    NUMBER,
    InboundContract,
    TelnyxTexmlCase,
    UltravoxMock,
    calls,
    seed,
    sim_calls_for,
    telnyx_headers,
)

CALL_CONTROL = "/webhooks/telnyx/call-control"


class TestTelnyxTexmlInbound(InboundContract):
    case = TelnyxTexmlCase()
    expected_stream_xml = ('<?xml version="1.0" encoding="UTF-8"?><Response><Connect><Stream '
                           'bidirectionalCodec="L16" bidirectionalMode="rtp" bidirectionalSamplingRate="16000" '
                           f'codec="L16" url="{JOIN_URL}" /></Connect></Response>')


def test_replayed_webhook_outside_the_tolerance_is_refused(app, client):
    seed(app, carrier="telnyx")
    case = TelnyxTexmlCase()
    form = case.inbound_form(case.call_id())
    body = urlencode(form).encode()
    old = telnyx_headers(body, timestamp=int(time.time()) - 301)
    with responses.RequestsMock(assert_all_requests_are_fired=False) as rsps:
        UltravoxMock().answer_with(rsps)
        response = case.post(client, case.voice_path, form, signed=False, headers=old)
        assert len(rsps.calls) == 0
    assert response.status_code == 403 and calls(app) == []


def test_stream_codec_is_configurable_and_both_directions_match():
    xml = TelnyxTexmlAdapter(codec="PCMU", sampling_rate=8000).stream_response("wss://example.test/s")
    assert 'codec="PCMU"' in xml and 'bidirectionalCodec="PCMU"' in xml
    assert 'bidirectionalSamplingRate="8000"' in xml and 'bidirectionalMode="rtp"' in xml


# -- Call Control ----------------------------------------------------------------------------


def _event(event_type: str, call_control_id: str, *, to: str = NUMBER, direction: str = "incoming",
           client_state: str | None = None, event_id: str | None = None, **payload: Any) -> dict[str, Any]:
    now = datetime.now(timezone.utc)
    body = {"call_control_id": call_control_id, "call_leg_id": str(uuid.uuid4()),
            "call_session_id": str(uuid.uuid4()), "connection_id": "1234567890", "from": CALLER, "to": to,
            "direction": direction, "state": "parked", "start_time": (now - timedelta(seconds=42)).isoformat(),
            **payload}
    if client_state is not None:
        body["client_state"] = client_state
    return {"data": {"record_type": "event", "event_type": event_type, "id": event_id or str(uuid.uuid4()),
                     "occurred_at": now.isoformat(), "payload": body},
            "meta": {"attempt": 1, "delivered_to": "https://voice.example.test" + CALL_CONTROL}}


def _post(client: Any, event: dict[str, Any], *, signed: bool = True) -> Any:
    body = json.dumps(event).encode()
    headers = telnyx_headers(body) if signed else {}
    return client.post(CALL_CONTROL, data=body, content_type="application/json", headers=headers)


def _commands(carrier_sim: Any, call_control_id: str) -> list[dict[str, Any]]:
    every = requests.get(f"{carrier_sim.base_url}/_sim/calls", params={"carrier": "telnyx"}, timeout=5).json()
    return [update for call in every["calls"] if call["id"] == call_control_id for update in call["updates"]]


def _fail_ultravox(ultravox_sim: Any) -> None:
    requests.post(f"{ultravox_sim.base_url}/_sim/failures", timeout=5, json={"failures": [
        {"method": "POST", "path_prefix": "/api/agents", "mode": "unavailable", "count": 5}]})


def _call_control_id() -> str:
    return "v3:" + base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")


def test_call_control_answers_with_a_bidirectional_stream(sim_app, ultravox_sim, carrier_sim):
    seeded = seed(sim_app, carrier="telnyx")
    client = sim_app.test_client()
    ccid = _call_control_id()
    response = _post(client, _event("call.initiated", ccid))
    assert response.status_code == 200
    [sim_call] = sim_calls_for(ultravox_sim, ccid)
    assert sim_call["call"]["medium"] == {"telnyx": {}}
    [answer] = _commands(carrier_sim, ccid)
    assert answer["action"] == "answer"
    params = answer["params"]
    assert params["stream_url"] == sim_call["call"]["joinUrl"]
    assert (params["stream_bidirectional_mode"], params["stream_codec"], params["stream_bidirectional_codec"],
            params["stream_bidirectional_sampling_rate"], params["stream_track"]) == ("rtp", "L16", "L16", 16000,
                                                                                      "inbound_track")
    [call] = calls(sim_app)
    assert (call.source.value, call.carrier_call_id, call.agency_id) == ("telnyx", ccid, seeded.agency_id)
    assert call.join_url == sim_call["call"]["joinUrl"]

    # A repeated call.initiated repeats the same command id: Telnyx ignores it.
    assert _post(client, _event("call.initiated", ccid)).status_code == 200
    assert len(_commands(carrier_sim, ccid)) == 1
    assert len(sim_calls_for(ultravox_sim, ccid)) == 1 and len(calls(sim_app)) == 1


def test_call_control_forged_event_is_refused(sim_app, ultravox_sim, carrier_sim):
    seed(sim_app, carrier="telnyx")
    ccid = _call_control_id()
    event = _event("call.initiated", ccid)
    body = json.dumps(event).encode()
    headers = telnyx_headers(body + b" ")  # signed over other bytes
    response = sim_app.test_client().post(CALL_CONTROL, data=body, content_type="application/json", headers=headers)
    assert response.status_code == 403
    assert _post(sim_app.test_client(), event, signed=False).status_code == 403
    assert calls(sim_app) == [] and _commands(carrier_sim, ccid) == [] and sim_calls_for(ultravox_sim, ccid) == []


def test_call_control_unknown_number_is_left_alone(sim_app, ultravox_sim, carrier_sim):
    seed(sim_app, carrier="telnyx")
    ccid = _call_control_id()
    assert _post(sim_app.test_client(), _event("call.initiated", ccid, to="+14155550177")).status_code == 200
    assert calls(sim_app) == [] and _commands(carrier_sim, ccid) == []


def test_call_control_outgoing_legs_are_not_answered(sim_app, ultravox_sim, carrier_sim):
    seed(sim_app, carrier="telnyx")
    ccid = _call_control_id()
    assert _post(sim_app.test_client(), _event("call.initiated", ccid, direction="outgoing")).status_code == 200
    assert calls(sim_app) == [] and _commands(carrier_sim, ccid) == []


def test_call_control_ultravox_failure_transfers_to_the_fallback(sim_app, ultravox_sim, carrier_sim):
    seed(sim_app, carrier="telnyx", fallback=FALLBACK)
    _fail_ultravox(ultravox_sim)
    ccid = _call_control_id()
    assert _post(sim_app.test_client(), _event("call.initiated", ccid)).status_code == 200
    [transfer] = _commands(carrier_sim, ccid)
    assert transfer["action"] == "transfer" and transfer["params"]["to"] == FALLBACK


def test_call_control_apology_is_answered_spoken_then_hung_up(sim_app, ultravox_sim, carrier_sim):
    seed(sim_app, carrier="telnyx")
    _fail_ultravox(ultravox_sim)
    client = sim_app.test_client()
    ccid = _call_control_id()
    assert _post(client, _event("call.initiated", ccid)).status_code == 200
    [answer] = _commands(carrier_sim, ccid)
    assert answer["action"] == "answer" and "stream_url" not in answer["params"]
    state = answer["params"]["client_state"]
    # Telnyx echoes client_state on the events that follow.
    assert _post(client, _event("call.answered", ccid, client_state=state)).status_code == 200
    assert _post(client, _event("call.speak.ended", ccid, client_state=state, status="completed")).status_code == 200
    actions = _commands(carrier_sim, ccid)
    assert [a["action"] for a in actions] == ["answer", "speak", "hangup"]
    assert actions[1]["params"]["payload"] == inbound_service.APOLOGY


def test_call_control_unassigned_number_hears_not_in_service(sim_app, ultravox_sim, carrier_sim):
    seed(sim_app, carrier="telnyx", with_agent=False)
    client = sim_app.test_client()
    ccid = _call_control_id()
    assert _post(client, _event("call.initiated", ccid)).status_code == 200
    [answer] = _commands(carrier_sim, ccid)
    state = answer["params"]["client_state"]
    assert _post(client, _event("call.answered", ccid, client_state=state)).status_code == 200
    speak = _commands(carrier_sim, ccid)[1]
    assert speak["action"] == "speak" and speak["params"]["payload"] == inbound_service.NOT_IN_SERVICE
    assert calls(sim_app) == []  # nothing recorded for a number without an agent


def test_call_control_forged_follow_up_event_is_refused(sim_app, ultravox_sim, carrier_sim):
    seed(sim_app, carrier="telnyx", with_agent=False)
    client = sim_app.test_client()
    ccid = _call_control_id()
    _post(client, _event("call.initiated", ccid))
    state = _commands(carrier_sim, ccid)[0]["params"]["client_state"]
    assert _post(client, _event("call.answered", ccid, client_state=state), signed=False).status_code == 403
    assert len(_commands(carrier_sim, ccid)) == 1


def test_call_control_status_events_update_the_call(sim_app, ultravox_sim, carrier_sim):
    seed(sim_app, carrier="telnyx")
    client = sim_app.test_client()
    ccid = _call_control_id()
    _post(client, _event("call.initiated", ccid))
    answered = _event("call.answered", ccid)
    assert _post(client, answered).status_code == 200
    assert calls(sim_app)[0].status == "in-progress"
    hangup = _event("call.hangup", ccid, hangup_cause="normal_clearing", hangup_source="caller")
    assert _post(client, hangup).status_code == 200
    [call] = calls(sim_app)
    assert call.status == "completed" and call.duration_seconds == 42 and call.ended_at is not None
    # A late or repeated event never moves the call back.
    assert _post(client, _event("call.answered", ccid)).status_code == 200
    assert _post(client, hangup).status_code == 200
    assert calls(sim_app)[0].status == "completed"


def test_call_control_busy_hangup_maps_to_busy(sim_app, ultravox_sim, carrier_sim):
    seed(sim_app, carrier="telnyx")
    client = sim_app.test_client()
    ccid = _call_control_id()
    _post(client, _event("call.initiated", ccid))
    _post(client, _event("call.hangup", ccid, hangup_cause="user_busy"))
    assert calls(sim_app)[0].status == "busy"
