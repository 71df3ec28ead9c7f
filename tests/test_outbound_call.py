"""POST /api/v1/calls: one outbound call through Ultravox and each carrier's SDK (simulators)."""
from __future__ import annotations

import uuid

import pytest
from sqlalchemy import select

from telephony.models import Call
from telephony.services import idempotency_keys
from tests.outbound_helpers import (
    AGENT_UV_ID,
    CALLEE,
    NUMBERS,
    dial_requests,
    inject,
    seed_agency,
    sim_calls,
    twilio_status,
)


def _post(client, seeded, body, **headers):
    return client.post("/api/v1/calls", json=body, headers=seeded.headers(**headers))


def _call(app, call_id):
    with app.app_context(), app.extensions["telephony.db"].session() as session:
        return session.get(Call, uuid.UUID(str(call_id)))


def test_twilio_call_streams_to_the_join_url_and_reports_status(sim_app, carrier_sim, ultravox_sim):
    seeded = seed_agency(sim_app)
    client = sim_app.test_client()
    response = _post(client, seeded, {"agent_id": AGENT_UV_ID, "to": "+1 415 555 0123"})
    assert response.status_code == 201, response.json
    body = response.json
    [placed] = sim_calls(carrier_sim, "twilio")
    assert placed["id"] == body["carrier_call_id"] and placed["to"] == CALLEE and placed["from"] == NUMBERS["twilio"]
    assert f"/calls/{body['ultravox_call_id']}/" in placed["twiml"] and "<Connect><Stream" in placed["twiml"]
    assert placed["status_callback"].endswith(f"/webhooks/outbound/twilio/status/{body['call_id']}")
    assert placed["status_callback_event"] == ["initiated", "ringing", "answered", "completed"]
    uv = [r for r in __import__("requests").get(f"{ultravox_sim.base_url}/_sim/requests").json()["requests"]
          if r["method"] == "POST"]
    assert uv[-1]["body"]["firstSpeakerSettings"] == {"user": {}} and uv[-1]["body"]["joinTimeout"] == "90s"
    assert twilio_status(client, body["call_id"], body["carrier_call_id"], "completed").status_code == 204
    call = _call(sim_app, body["call_id"])
    assert call.status == "completed" and call.direction.value == "outbound"


def test_telnyx_call_uses_call_control_dial(sim_app, carrier_sim):
    seeded = seed_agency(sim_app, carrier="telnyx")
    response = _post(sim_app.test_client(), seeded, {"agent_id": AGENT_UV_ID, "to": CALLEE})
    assert response.status_code == 201, response.json
    [placed] = sim_calls(carrier_sim, "telnyx")
    assert placed["connection_id"] == "conn-1" and placed["stream_track"] == "inbound_track"
    assert placed["stream_bidirectional_mode"] == "rtp" and placed["stream_codec"] == "L16"
    assert placed["stream_bidirectional_codec"] == "L16" and placed["stream_bidirectional_sampling_rate"] == 16000
    assert placed["stream_bidirectional_target_legs"] == "opposite"
    assert placed["command_id"] == response.json["call_id"]
    assert placed["webhook_url"].endswith(f"/webhooks/outbound/telnyx/call-control/{response.json['call_id']}")


def test_telnyx_call_dials_with_the_configured_codec(config, tmp_path, ultravox_sim, carrier_sim):
    """TELNYX_STREAM_CODEC applies to outbound dials too, equal in both directions."""
    from telephony import create_app
    app = create_app(config.with_overrides(
        ultravox_api_base=ultravox_sim.base_url, telnyx_api_base=f"{carrier_sim.base_url}/v2",
        telnyx_stream_codec="PCMU"), instance_path=str(tmp_path / "pcmu-instance"))
    try:
        seeded = seed_agency(app, carrier="telnyx")
        response = _post(app.test_client(), seeded, {"agent_id": AGENT_UV_ID, "to": CALLEE})
        assert response.status_code == 201, response.json
        [placed] = sim_calls(carrier_sim, "telnyx")
        assert placed["stream_codec"] == placed["stream_bidirectional_codec"] == "PCMU"
        assert placed["stream_bidirectional_sampling_rate"] == 8000
    finally:
        app.extensions["telephony.db"].dispose()


def test_plivo_call_answer_url_returns_the_same_stream_every_time(sim_app, carrier_sim):
    from tests.inbound_helpers import plivo_headers
    seeded = seed_agency(sim_app, carrier="plivo")
    client = sim_app.test_client()
    response = _post(client, seeded, {"agent_id": AGENT_UV_ID, "to": CALLEE})
    assert response.status_code == 201, response.json
    [placed] = sim_calls(carrier_sim, "plivo")
    path = f"/webhooks/outbound/plivo/answer/{response.json['call_id']}"
    assert placed["answer_url"].endswith(path) and placed["hangup_url"].endswith(
        f"/webhooks/outbound/plivo/hangup/{response.json['call_id']}")
    params = {"CallUUID": "plivo-call-uuid-1", "CallStatus": "in-progress", "Direction": "outbound"}
    answers = []
    for _ in range(2):  # Plivo may POST the answer_url again: same stream, no new call
        answer = client.post(path, data=params, headers=plivo_headers("https://voice.example.test" + path, params))
        assert answer.status_code == 200
        answers.append(answer.data)
    assert answers[0] == answers[1] and b"<Stream" in answers[0]
    assert _call(sim_app, response.json["call_id"]).carrier_call_id == "plivo-call-uuid-1"
    bad = client.post(path, data=params, headers={"X-Plivo-Signature-V3": "x", "X-Plivo-Signature-V3-Nonce": "1"})
    assert bad.status_code == 403


def test_invalid_numbers_are_400_and_nothing_is_dialled(sim_app, carrier_sim):
    seeded = seed_agency(sim_app)
    client = sim_app.test_client()
    assert _post(client, seeded, {"agent_id": AGENT_UV_ID, "to": "4155550123"}).status_code == 400
    assert _post(client, seeded, {"agent_id": AGENT_UV_ID, "to": CALLEE, "from": "+14155550999"}).status_code == 400
    assert _post(client, seeded, {"agent_id": "unknown-agent", "to": CALLEE}).status_code == 404
    assert sim_calls(carrier_sim) == []


def test_carrier_rejection_is_422_and_the_call_is_failed(sim_app, carrier_sim):
    seeded = seed_agency(sim_app)
    inject(carrier_sim, {"path_prefix": "/2010-04-01/", "method": "POST", "status": 400})
    response = _post(sim_app.test_client(), seeded, {"agent_id": AGENT_UV_ID, "to": CALLEE})
    assert response.status_code == 422 and response.json["code"] == "carrier_rejected"
    assert "twilio" in response.json["error"]
    with sim_app.app_context(), sim_app.extensions["telephony.db"].session() as session:
        [call] = session.scalars(select(Call)).all()
        assert call.status == "failed" and call.end_reason == "carrier_rejected"


def test_carrier_server_error_is_502_and_never_retried(sim_app, carrier_sim):
    seeded = seed_agency(sim_app)
    inject(carrier_sim, {"path_prefix": "/2010-04-01/", "method": "POST", "status": 500})
    response = _post(sim_app.test_client(), seeded, {"agent_id": AGENT_UV_ID, "to": CALLEE})
    assert response.status_code == 502 and response.json["code"] == "carrier_error"
    assert len(dial_requests(carrier_sim)) == 1


@pytest.mark.parametrize("failure, status, code, retry_after", [
    ({"mode": "rate_limit", "retry_after": 7}, 429, "upstream_rate_limited", "7"),
    ({"mode": "unavailable", "retry_after": 3}, 429, "upstream_rate_limited", "3"),
    ({"mode": "error", "status": 500}, 502, "ultravox_error", None),
])
def test_ultravox_refusing_is_answered_and_nothing_is_dialled(sim_app, carrier_sim, ultravox_sim, failure, status,
                                                              code, retry_after):
    seeded = seed_agency(sim_app)
    client = sim_app.test_client()
    inject(ultravox_sim, {"path_prefix": "/api/agents/", "method": "POST", **failure})
    body = {"agent_id": AGENT_UV_ID, "to": CALLEE}
    response = _post(client, seeded, body, **{"Idempotency-Key": "k-uv"})
    assert response.status_code == status and response.json["code"] == code
    assert response.headers.get("Retry-After") == retry_after
    assert sim_calls(carrier_sim) == []
    # Nothing was dialled, so the key is free: the same request goes through now.
    assert _post(client, seeded, body, **{"Idempotency-Key": "k-uv"}).status_code == 201
    assert len(dial_requests(carrier_sim)) == 1


def test_do_not_call_blocks_a_single_call(sim_app, carrier_sim):
    seeded = seed_agency(sim_app)
    client = sim_app.test_client()
    assert client.post("/api/v1/do-not-call", json={"phones": [CALLEE]}, headers=seeded.headers()).status_code == 200
    response = _post(client, seeded, {"agent_id": AGENT_UV_ID, "to": CALLEE})
    assert response.status_code == 422 and response.json["code"] == "do_not_call"
    assert sim_calls(carrier_sim) == []


def test_idempotency_key_replays_the_first_result(sim_app, carrier_sim):
    seeded = seed_agency(sim_app)
    client = sim_app.test_client()
    body = {"agent_id": AGENT_UV_ID, "to": CALLEE}
    first = _post(client, seeded, body, **{"Idempotency-Key": "k-1"})
    second = _post(client, seeded, body, **{"Idempotency-Key": "k-1"})
    assert first.status_code == second.status_code == 201
    assert first.json == second.json and second.headers["Idempotent-Replayed"] == "true"
    assert len(dial_requests(carrier_sim)) == 1
    other = _post(client, seeded, {**body, "to": "+14155550124"}, **{"Idempotency-Key": "k-1"})
    assert other.status_code == 422
    assert len(dial_requests(carrier_sim)) == 1


def test_idempotency_key_replays_a_carrier_failure_without_redialling(sim_app, carrier_sim):
    seeded = seed_agency(sim_app)
    client = sim_app.test_client()
    inject(carrier_sim, {"path_prefix": "/2010-04-01/", "method": "POST", "status": 503})
    body = {"agent_id": AGENT_UV_ID, "to": CALLEE}
    assert _post(client, seeded, body, **{"Idempotency-Key": "k-2"}).status_code == 502
    assert _post(client, seeded, body, **{"Idempotency-Key": "k-2"}).status_code == 502
    assert len(dial_requests(carrier_sim)) == 1


def test_carrier_rate_limit_is_not_stored_under_the_idempotency_key(sim_app, carrier_sim):
    """A carrier 429 was never processed: it is answered with Retry-After and the key stays
    free, so the same request goes through once the limit has passed (not replayed for 24 h)."""
    seeded = seed_agency(sim_app)
    client = sim_app.test_client()
    inject(carrier_sim, {"path_prefix": "/2010-04-01/", "method": "POST", "status": 429})
    body = {"agent_id": AGENT_UV_ID, "to": CALLEE}
    limited = _post(client, seeded, body, **{"Idempotency-Key": "k-429"})
    assert limited.status_code == 429 and limited.headers["Retry-After"] == "1"
    again = _post(client, seeded, body, **{"Idempotency-Key": "k-429"})
    assert again.status_code == 201 and "Idempotent-Replayed" not in again.headers
    assert [r["status"] for r in dial_requests(carrier_sim)] == [429, 201]


def test_carrier_timeout_leaves_the_call_unknown_for_its_callbacks_to_settle(sim_app, carrier_sim):
    seeded = seed_agency(sim_app)
    client = sim_app.test_client()
    inject(carrier_sim, {"path_prefix": "/2010-04-01/", "method": "POST", "status": 500})
    response = _post(client, seeded, {"agent_id": AGENT_UV_ID, "to": CALLEE})
    assert response.status_code == 502
    db = sim_app.extensions["telephony.db"]
    with db.session() as session:
        [call] = session.scalars(select(Call)).all()
        assert call.status == "unknown" and call.end_reason == "carrier_error"
        call_id = call.id
    # The carrier did place it after all: its signed callbacks move the call on.
    assert twilio_status(client, call_id, "CA" + "5" * 32, "in-progress").status_code == 204
    with db.session() as session:
        call = session.get(Call, call_id)
        assert call is not None and call.status == "in-progress" and call.carrier_call_id == "CA" + "5" * 32


def test_idempotency_key_in_flight_is_409(sim_app, carrier_sim):
    seeded = seed_agency(sim_app)
    body = {"agent_id": AGENT_UV_ID, "to": CALLEE}
    with sim_app.app_context(), sim_app.extensions["telephony.db"].session() as session:
        # Another request holds the key (it has begun and not finished).
        assert idempotency_keys.begin(session, seeded.agency_id, "k-3", idempotency_keys.fingerprint(
            {"agent_id": AGENT_UV_ID, "to": CALLEE, "from": None, "template_context": None, "metadata": None})) is None
    response = _post(sim_app.test_client(), seeded, body, **{"Idempotency-Key": "k-3"})
    assert response.status_code == 409
    assert sim_calls(carrier_sim) == []


def test_concurrent_requests_with_one_key_dial_once(sim_app, carrier_sim):
    import threading
    seeded = seed_agency(sim_app)
    requests_ = __import__("requests")
    requests_.post(f"{carrier_sim.base_url}/_sim/config", json={"latency_ms": 300}, timeout=5)
    statuses: list[int] = []

    def go():
        statuses.append(_post(sim_app.test_client(), seeded, {"agent_id": AGENT_UV_ID, "to": CALLEE},
                              **{"Idempotency-Key": "k-4"}).status_code)

    threads = [threading.Thread(target=go) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert statuses.count(201) >= 1 and set(statuses) <= {201, 409}
    assert len(dial_requests(carrier_sim)) == 1


def test_calls_write_scope_is_required(sim_app, carrier_sim):
    seed_agency(sim_app)
    response = sim_app.test_client().post("/api/v1/calls", json={"agent_id": AGENT_UV_ID, "to": CALLEE})
    assert response.status_code == 401


DIAL_PATHS = {"twilio": "/2010-04-01/", "telnyx": "/v2/calls", "plivo": "/v1/Account/"}


@pytest.mark.parametrize("carrier", sorted(DIAL_PATHS))
@pytest.mark.parametrize(("carrier_status", "status", "code"), [
    (400, 422, "carrier_rejected"), (429, 429, "carrier_rate_limited"), (500, 502, "carrier_error")])
def test_each_carriers_errors_mean_the_same(sim_app, carrier_sim, carrier, carrier_status, status, code):
    """Every dialer maps its SDK's errors alike: refused (no call exists), rate limited
    (documented as never processed), or unavailable (the call may exist), sent once."""
    seeded = seed_agency(sim_app, carrier=carrier)
    inject(carrier_sim, {"path_prefix": DIAL_PATHS[carrier], "method": "POST", "status": carrier_status})
    response = _post(sim_app.test_client(), seeded, {"agent_id": AGENT_UV_ID, "to": CALLEE})
    assert (response.status_code, response.json["code"]) == (status, code), response.json
    assert carrier in response.json["error"]
    assert len(dial_requests(carrier_sim)) == 1
