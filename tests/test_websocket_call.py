"""POST /api/v1/calls/websocket (seed 004): a server-to-server call on
Ultravox's serverWebSocket medium, for an agency API key or user."""
from __future__ import annotations

import pytest
from sqlalchemy import select

from telephony.models import Call, CallSource
from tests.test_web_calls import (
    ULTRAVOX_KEY,
    UV_AGENT,
    mock_ultravox,
    setup_agency,
    sim_call,
    sim_failures,
    stored_call,
)

PATH = "/api/v1/calls/websocket"



@pytest.fixture
def uv():
    yield from mock_ultravox()

def api_key(client, tenant, *scopes: str) -> dict[str, str]:
    key = client.post("/api/v1/api-keys", json={"name": "server", "scopes": list(scopes)}, headers=tenant.admin())
    assert key.status_code == 201
    return {"X-API-Key": key.json["key"]}


def test_creates_a_server_websocket_call(client, db, make_tenant, uv):
    tenant = make_tenant()
    agent = setup_agency(client, tenant)
    answer = uv.agent_call()
    response = client.post(PATH, headers=api_key(client, tenant, "calls:write"),
                           json={"agent_id": UV_AGENT, "inputSampleRate": 16000, "outputSampleRate": 24000,
                                 "clientBufferSizeMs": 30000})
    assert response.status_code == 201, response.json
    assert response.json["join_url"] == answer["joinUrl"]
    assert response.json["ultravox_call_id"] == answer["callId"]
    sent = uv.bodies[0]  # validated against the Ultravox spec by the mock
    assert sent["medium"] == {"serverWebSocket": {"inputSampleRate": 16000, "outputSampleRate": 24000,
                                                  "clientBufferSizeMs": 30000}}
    assert sent["metadata"]["telephony.source"] == "websocket"
    call = stored_call(db, response.json["call_id"])
    assert call.source == CallSource.websocket and str(call.agent_id) == agent["id"]
    assert call.metadata_ == {"server_websocket": sent["medium"]["serverWebSocket"]}


def test_optional_fields_are_left_to_ultravox_defaults_and_a_user_token_works(client, make_tenant, uv):
    tenant = make_tenant()
    setup_agency(client, tenant)
    uv.agent_call()
    response = client.post(PATH, headers=tenant.member(), json={"agent_id": UV_AGENT, "inputSampleRate": 8000})
    assert response.status_code == 201
    assert uv.bodies[0]["medium"] == {"serverWebSocket": {"inputSampleRate": 8000}}


@pytest.mark.parametrize("body, field", [
    ({"agent_id": UV_AGENT}, "inputSampleRate"),
    ({"agent_id": UV_AGENT, "inputSampleRate": "16000"}, "inputSampleRate"),
    ({"agent_id": UV_AGENT, "inputSampleRate": True}, "inputSampleRate"),
    ({"agent_id": UV_AGENT, "inputSampleRate": 16000.5}, "inputSampleRate"),
    ({"agent_id": UV_AGENT, "inputSampleRate": 0}, "inputSampleRate"),
    ({"agent_id": UV_AGENT, "inputSampleRate": -16000}, "inputSampleRate"),
    ({"agent_id": UV_AGENT, "inputSampleRate": 192000}, "inputSampleRate"),
    ({"agent_id": UV_AGENT, "inputSampleRate": 2**40}, "inputSampleRate"),
    ({"agent_id": UV_AGENT, "inputSampleRate": 16000, "outputSampleRate": 100}, "outputSampleRate"),
    ({"agent_id": UV_AGENT, "inputSampleRate": 16000, "clientBufferSizeMs": 0}, "clientBufferSizeMs"),
    ({"agent_id": UV_AGENT, "inputSampleRate": 16000, "clientBufferSizeMs": 10**9}, "clientBufferSizeMs"),
    ({"inputSampleRate": 16000}, "agent_id"),
    ({"agent_id": 5, "inputSampleRate": 16000}, "agent_id"),
    ({"agent_id": UV_AGENT, "inputSampleRate": 16000, "medium": {}}, "medium"),
])
def test_400_invalid_input_names_the_field(client, make_tenant, uv, body, field):
    tenant = make_tenant()
    setup_agency(client, tenant)
    response = client.post(PATH, headers=tenant.member(), json=body)
    assert response.status_code == 400
    assert field in response.json["fields"] and response.json["error"].startswith(field)
    assert uv.bodies == []


def test_400_no_ultravox_key(client, make_tenant):
    tenant = make_tenant()
    setup_agency(client, tenant, ultravox_key=None)
    response = client.post(PATH, headers=tenant.member(), json={"agent_id": UV_AGENT, "inputSampleRate": 16000})
    assert response.status_code == 400 and response.json["code"] == "ultravox_key_missing"


def test_401_and_403(client, make_tenant):
    tenant = make_tenant()
    setup_agency(client, tenant)
    body = {"agent_id": UV_AGENT, "inputSampleRate": 16000}
    assert client.post(PATH, json=body).status_code == 401
    assert client.post(PATH, json=body, headers={"X-API-Key": "tk_wrong"}).status_code == 401
    read_only = client.post(PATH, json=body, headers=api_key(client, tenant, "calls:read"))
    assert read_only.status_code == 403 and read_only.json["code"] == "insufficient_scope"


def test_404_for_another_agencys_agent(client, db, make_tenant, uv):
    tenant, other = make_tenant(), make_tenant("Other")
    setup_agency(client, tenant)
    setup_agency(client, other, uv_agent="8b1f2a4e-5c6d-4e7f-9a0b-1c2d3e4f5a6b")
    response = client.post(PATH, headers=tenant.member(),
                           json={"agent_id": "8b1f2a4e-5c6d-4e7f-9a0b-1c2d3e4f5a6b", "inputSampleRate": 16000})
    assert response.status_code == 404
    assert uv.bodies == []


def test_405(client, make_tenant):
    assert client.get(PATH, headers=make_tenant().member()).status_code == 405


def test_502_passes_ultravox_message_without_key(client, make_tenant, uv):
    tenant = make_tenant()
    setup_agency(client, tenant)
    uv.agent_call(status=400, body={"detail": f"inputSampleRate unsupported for {ULTRAVOX_KEY}"})
    response = client.post(PATH, headers=tenant.member(), json={"agent_id": UV_AGENT, "inputSampleRate": 16000})
    assert response.status_code == 502 and "inputSampleRate unsupported" in response.json["error"]
    assert ULTRAVOX_KEY not in response.get_data(as_text=True)


def test_preflight(client):
    response = client.options(PATH, headers={"Origin": "https://app.example.com",
                                             "Access-Control-Request-Method": "POST"})
    assert response.status_code == 204 and response.headers["Access-Control-Allow-Origin"] == "*"
    # Server API keys do not belong in browsers: X-API-Key is not an allowed CORS header.
    assert "x-api-key" not in response.headers["Access-Control-Allow-Headers"].lower()


def test_sim_websocket_call(sim_app, ultravox_sim, make_tenant):
    client = sim_app.test_client()
    tenant = make_tenant()
    setup_agency(client, tenant)
    response = client.post(PATH, headers=api_key(client, tenant, "calls:write"),
                           json={"agent_id": UV_AGENT, "inputSampleRate": 48000, "clientBufferSizeMs": 30000})
    assert response.status_code == 201, response.json
    seen = sim_call(ultravox_sim, response.json["ultravox_call_id"])["call"]
    assert seen["medium"] == {"serverWebSocket": {"inputSampleRate": 48000, "clientBufferSizeMs": 30000}}
    assert seen["metadata"]["telephony.call_id"] == response.json["call_id"]
    sim_failures(ultravox_sim, {"method": "POST", "path_prefix": "/api/agents", "mode": "unavailable",
                                "status": 503, "count": 1})
    failed = client.post(PATH, headers=tenant.member(), json={"agent_id": UV_AGENT, "inputSampleRate": 16000})
    assert failed.status_code == 502
    with sim_app.extensions["telephony.db"].session() as session:
        assert len(session.scalars(select(Call)).all()) == 1
