"""POST /functions/v1/calls-create (seed 000): every row of the seed's table,
with `responses` (each request checked against Ultravox's OpenAPI spec) and
against the Ultravox simulator.

The helpers at the top are shared with the other web-call test modules."""
from __future__ import annotations

import json
import uuid
from typing import Any, Iterator

import pytest
import requests
import responses
from sqlalchemy import select, text

from telephony.models import Call, CallDirection, CallSource
from tests.conftest import JWT_SECRET
from tests.ultravox_openapi import validate_request

ULTRAVOX_KEY = "Zk9Ht7Lm.wX7pN9fM3kLj6tRq2bGhA8yE5cZvD4sT"
UV_AGENT = "3c90c3cc-0d44-4b50-8888-8dd25736052a"
UV_BASE = "https://api.ultravox.ai"
CREATE = "/functions/v1/calls-create"


# -- shared helpers -----------------------------------------------------------------------

def setup_agency(client, tenant, *, ultravox_key: str | None = ULTRAVOX_KEY, uv_agent: str = UV_AGENT,
                 recording: bool = False) -> dict:
    """Map an agent (and store the Ultravox key) through the management API; returns the agent."""
    if ultravox_key is not None:
        stored = client.put("/api/v1/credentials/ultravox", json={"api_key": ultravox_key}, headers=tenant.admin())
        assert stored.status_code == 200, stored.json
    agent = client.post("/api/v1/agents", headers=tenant.admin(),
                        json={"name": "Front desk", "ultravox_agent_id": uv_agent, "recording_enabled": recording})
    assert agent.status_code == 201, agent.json
    return agent.json


def uv_call(call_id: str | None = None, **overrides: Any) -> dict:
    """An Ultravox Call object as POST /api/agents/{id}/calls returns it."""
    call_id = call_id or str(uuid.uuid4())
    return {"callId": call_id, "joinUrl": f"wss://voice.ultravox.ai/calls/{call_id}/join",
            "created": "2025-01-15T10:30:00Z", "joined": None, "ended": None, "medium": {"webRtc": {}},
            "metadata": {}, **overrides}


class UltravoxMock:
    """`responses` answering the agent-call endpoint; every request is
    validated against the Ultravox spec and kept in `.bodies`."""

    def __init__(self, rsps: responses.RequestsMock) -> None:
        self.rsps = rsps
        self.bodies: list[dict] = []
        self.headers: list[dict] = []

    def agent_call(self, *, status: int = 201, body: dict | None = None, uv_agent: str = UV_AGENT) -> dict:
        answer = body if body is not None else uv_call()

        def callback(request):
            validate_request(request)
            self.bodies.append(json.loads(request.body))
            self.headers.append(dict(request.headers))
            return status, {"Content-Type": "application/json"}, json.dumps(answer)

        self.rsps.add_callback(responses.POST, f"{UV_BASE}/api/agents/{uv_agent}/calls", callback=callback)
        return answer


def mock_ultravox() -> Iterator[UltravoxMock]:
    """Body of the `uv` fixture each web-call test module declares.
    Unmatched URLs raise ConnectionError: a request to any other host fails the test."""
    with responses.RequestsMock(assert_all_requests_are_fired=False) as rsps:
        yield UltravoxMock(rsps)


@pytest.fixture
def uv():
    yield from mock_ultravox()


def sim_failures(sim, *rules: dict) -> None:
    requests.post(f"{sim.base_url}/_sim/failures", json={"failures": list(rules)}, timeout=5).raise_for_status()


def sim_call(sim, call_id: str) -> dict:
    response = requests.get(f"{sim.base_url}/_sim/calls/{call_id}", timeout=5)
    response.raise_for_status()
    return response.json()


def stored_call(db, call_id: str) -> Call:
    with db.session() as session:
        call = session.get(Call, uuid.UUID(call_id))
        assert call is not None
        return call


def break_call_insert(monkeypatch) -> None:
    """Make start_call's insert fail the way a database outage does."""
    from sqlalchemy.exc import OperationalError

    def failing_call(**_kwargs):
        raise OperationalError("INSERT INTO calls", {}, Exception("database is down"))

    monkeypatch.setattr("telephony.services.calls.Call", failing_call)


# -- success ------------------------------------------------------------------------------------

def test_creates_a_webrtc_call_and_records_it(client, db, make_tenant, uv):
    tenant = make_tenant()
    agent = setup_agency(client, tenant)
    answer = uv.agent_call()
    response = client.post(CREATE, json={"agent_id": UV_AGENT}, headers=tenant.member())
    assert response.status_code == 201, response.json
    body = response.json
    assert list(body) == ["call_id", "ultravox_call_id", "join_url", "created_at"]
    assert body["ultravox_call_id"] == answer["callId"] and body["join_url"] == answer["joinUrl"]
    assert body["created_at"] == "2025-01-15T10:30:00Z"

    sent = uv.bodies[0]
    assert sent["medium"] == {"webRtc": {}}
    assert sent["firstSpeakerSettings"] == {"agent": {}}
    assert sent["metadata"] == {"test_call": "true", "telephony.call_id": body["call_id"],
                                "telephony.agency_id": str(tenant.agency_id), "telephony.agent_id": agent["id"],
                                "telephony.source": "webrtc", "telephony.direction": "outbound"}
    assert uv.headers[0]["X-API-Key"] == ULTRAVOX_KEY

    call = stored_call(db, body["call_id"])
    assert (call.source, call.direction) == (CallSource.webrtc, CallDirection.outbound)
    assert call.metadata_ == {"test_call": True}
    assert call.agency_id == tenant.agency_id and str(call.agent_id) == agent["id"]
    assert call.ultravox_call_id == answer["callId"]


def test_partial_success_when_the_insert_fails_still_sends_our_ids(client, db, make_tenant, uv):
    tenant, other = make_tenant(), make_tenant("Other")
    setup_agency(client, tenant)
    answer = uv.agent_call()
    # A row already holding this Ultravox call id makes our insert fail (unique constraint).
    with db.session() as session:
        session.add(Call(agency_id=other.agency_id, ultravox_call_id=answer["callId"], source=CallSource.webrtc,
                         direction=CallDirection.outbound))
    response = client.post(CREATE, json={"agent_id": UV_AGENT}, headers=tenant.member())
    assert response.status_code == 201
    assert response.json == {"call_id": None, "ultravox_call_id": answer["callId"], "join_url": answer["joinUrl"],
                              "created_at": "2025-01-15T10:30:00Z",
                              "warning": "Call created but failed to save to database"}
    # Nothing is lost: Ultravox holds our call id, agency and agent, for the webhook ingest to rebuild the row.
    metadata = uv.bodies[0]["metadata"]
    assert uuid.UUID(metadata["telephony.call_id"])
    assert metadata["telephony.agency_id"] == str(tenant.agency_id)
    with db.session() as session:
        assert session.scalar(select(Call).where(Call.agency_id == tenant.agency_id)) is None


def test_unknown_fields_are_ignored_like_the_edge_function_did(client, make_tenant, uv):
    tenant = make_tenant()
    setup_agency(client, tenant)
    uv.agent_call()
    response = client.post(CREATE, json={"agent_id": UV_AGENT, "agent_name": "x"}, headers=tenant.member())
    assert response.status_code == 201


# -- errors, in the seed's order -----------------------------------------------------------------

@pytest.mark.parametrize("body", [{}, {"agent_id": ""}, {"agent_id": None}, {"agent_id": 5}, {"agent_id": "a b"},
                                  {"agent_id": "x" * 65}])
def test_400_agent_id_missing_or_invalid(client, make_tenant, body):
    tenant = make_tenant()
    response = client.post(CREATE, json=body, headers=tenant.member())
    assert response.status_code == 400
    assert "agent_id" in response.json["fields"] and response.json["error"].startswith("agent_id")


@pytest.mark.parametrize("data", ["", "not json", "[1]", "null"])
def test_400_body_not_a_json_object(client, make_tenant, data):
    tenant = make_tenant()
    response = client.post(CREATE, data=data, content_type="application/json", headers=tenant.member())
    assert response.status_code == 400 and response.json["code"] == "invalid_input"


def test_400_no_ultravox_key(client, make_tenant, uv):
    tenant = make_tenant()
    setup_agency(client, tenant, ultravox_key=None)
    response = client.post(CREATE, json={"agent_id": UV_AGENT}, headers=tenant.member())
    assert response.status_code == 400
    assert response.json == {"error": "Ultravox API key not configured for the agency",
                             "code": "ultravox_key_missing"}
    assert uv.bodies == []


def test_400_malformed_stored_ultravox_key(client, make_tenant, uv):
    tenant = make_tenant()
    setup_agency(client, tenant, ultravox_key="has a space in it")
    response = client.post(CREATE, json={"agent_id": UV_AGENT}, headers=tenant.member())
    assert response.status_code == 400 and response.json["code"] == "ultravox_key_invalid"
    assert "has a space" not in response.get_data(as_text=True)


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer"}, {"Authorization": "Basic abc"},
                                     {"Authorization": "Bearer not.a.jwt"}])
def test_401_missing_or_invalid_authorization(client, headers):
    response = client.post(CREATE, json={"agent_id": UV_AGENT}, headers=headers)
    assert response.status_code == 401 and response.json["code"] == "unauthorized"


def test_401_for_an_expired_token_and_for_server_api_keys(client, make_tenant):
    from telephony.auth import mint_token
    tenant = make_tenant()
    expired = mint_token(JWT_SECRET, tenant.member_subject, ttl_seconds=-60)
    assert client.post(CREATE, json={"agent_id": UV_AGENT},
                       headers={"Authorization": f"Bearer {expired}"}).status_code == 401
    key = client.post("/api/v1/api-keys", json={"name": "s", "scopes": ["admin"]}, headers=tenant.admin()).json
    # The seed's endpoint takes a dashboard JWT only.
    assert client.post(CREATE, json={"agent_id": UV_AGENT}, headers={"X-API-Key": key["key"]}).status_code == 401


def test_403_user_without_agency(client, db):
    from telephony.auth import mint_token
    from telephony.services.agencies import add_user
    with db.session() as session:
        add_user(session, auth_subject="lonely", agency_id=None)
    response = client.post(CREATE, json={"agent_id": UV_AGENT},
                           headers={"Authorization": f"Bearer {mint_token(JWT_SECRET, 'lonely')}"})
    assert response.status_code == 403 and response.json["code"] == "no_agency"


def test_404_unknown_agent_and_another_agencys_agent(client, make_tenant, uv):
    tenant, other = make_tenant(), make_tenant("Other")
    setup_agency(client, tenant)
    setup_agency(client, other, uv_agent="8b1f2a4e-5c6d-4e7f-9a0b-1c2d3e4f5a6b")
    unknown = client.post(CREATE, json={"agent_id": "no-such-agent"}, headers=tenant.member())
    foreign = client.post(CREATE, json={"agent_id": "8b1f2a4e-5c6d-4e7f-9a0b-1c2d3e4f5a6b"}, headers=tenant.member())
    assert unknown.status_code == foreign.status_code == 404
    assert unknown.json == foreign.json  # indistinguishable
    assert uv.bodies == []


@pytest.mark.parametrize("method", ["get", "put", "patch", "delete"])
def test_405_other_methods(client, make_tenant, method):
    tenant = make_tenant()
    response = getattr(client, method)(CREATE, headers=tenant.member())
    assert response.status_code == 405 and response.json["code"] == "method_not_allowed"
    assert "POST" in response.headers["Allow"]


def test_500_credentials_cannot_be_read(client, db, make_tenant, uv):
    tenant = make_tenant()
    setup_agency(client, tenant)
    with db.session() as session:
        session.execute(text("UPDATE agency_credentials SET ciphertext = 'tampered'"))
    response = client.post(CREATE, json={"agent_id": UV_AGENT}, headers=tenant.member())
    assert response.status_code == 500
    assert response.json == {"error": "Failed to retrieve API credentials", "code": "credentials_unavailable"}
    assert uv.bodies == []


def test_500_unexpected_error(client, make_tenant, monkeypatch):
    tenant = make_tenant()
    setup_agency(client, tenant)

    def explode(*_args, **_kwargs):
        raise RuntimeError("boom with a secret in it")

    monkeypatch.setattr("telephony.services.calls.start_call", explode)
    response = client.post(CREATE, json={"agent_id": UV_AGENT}, headers=tenant.member())
    assert response.status_code == 500
    assert response.json == {"error": "Unexpected server error", "code": "internal_error"}


@pytest.mark.parametrize("status", [400, 401, 422, 429, 500, 503])
def test_502_ultravox_error_passes_its_message_but_never_our_key(client, db, make_tenant, uv, status):
    tenant = make_tenant()
    setup_agency(client, tenant)
    uv.agent_call(status=status, body={"detail": f"Agent is paused (key {ULTRAVOX_KEY})"})
    response = client.post(CREATE, json={"agent_id": UV_AGENT}, headers=tenant.member())
    assert response.status_code == 502
    assert response.json["code"] == "upstream_error"
    assert "Agent is paused" in response.json["error"]
    assert ULTRAVOX_KEY not in response.get_data(as_text=True)
    with db.session() as session:  # nothing recorded for a call that does not exist
        assert session.scalar(select(Call)) is None


def test_502_when_ultravox_is_unreachable(client, make_tenant, uv):
    tenant = make_tenant()
    setup_agency(client, tenant)
    uv.rsps.add(responses.POST, f"{UV_BASE}/api/agents/{UV_AGENT}/calls",
                body=requests.ConnectionError("connection refused"))
    response = client.post(CREATE, json={"agent_id": UV_AGENT}, headers=tenant.member())
    assert response.status_code == 502 and response.json["code"] == "upstream_error"


# -- CORS ---------------------------------------------------------------------------------------

def test_preflight_and_cors_headers(client, make_tenant, uv):
    preflight = client.options(CREATE, headers={"Origin": "https://app.example.com",
                                                "Access-Control-Request-Method": "POST",
                                                "Access-Control-Request-Headers": "authorization, content-type"})
    assert preflight.status_code == 204
    assert preflight.headers["Access-Control-Allow-Origin"] == "*"
    assert "POST" in preflight.headers["Access-Control-Allow-Methods"]
    assert {"authorization", "content-type"} <= {
        h.strip().lower() for h in preflight.headers["Access-Control-Allow-Headers"].split(",")}
    assert int(preflight.headers["Access-Control-Max-Age"]) > 0
    assert "Access-Control-Allow-Credentials" not in preflight.headers
    tenant = make_tenant()
    setup_agency(client, tenant)
    uv.agent_call()
    created = client.post(CREATE, json={"agent_id": UV_AGENT},
                          headers={**tenant.member(), "Origin": "https://app.example.com"})
    assert created.status_code == 201 and created.headers["Access-Control-Allow-Origin"] == "*"
    denied = client.post(CREATE, json={"agent_id": UV_AGENT}, headers={"Origin": "https://app.example.com"})
    assert denied.status_code == 401 and denied.headers["Access-Control-Allow-Origin"] == "*"


# -- against the Ultravox simulator ---------------------------------------------------------------

def test_sim_creates_a_call(sim_app, ultravox_sim, make_tenant):
    client = sim_app.test_client()
    tenant = make_tenant()
    agent = setup_agency(client, tenant)
    response = client.post(CREATE, json={"agent_id": UV_AGENT}, headers=tenant.member())
    assert response.status_code == 201, response.json
    body = response.json
    assert body["join_url"].startswith("wss://")
    seen = sim_call(ultravox_sim, body["ultravox_call_id"])["call"]
    assert seen["medium"] == {"webRtc": {}} and seen["agentId"] == UV_AGENT
    assert seen["metadata"]["telephony.call_id"] == body["call_id"]
    assert seen["metadata"]["telephony.agent_id"] == agent["id"]
    assert seen["firstSpeakerSettings"] == {"agent": {}}
    call = stored_call(sim_app.extensions["telephony.db"], body["call_id"])
    assert call.source == CallSource.webrtc and call.metadata_ == {"test_call": True}


def test_sim_partial_success(sim_app, ultravox_sim, make_tenant, monkeypatch):
    client = sim_app.test_client()
    tenant = make_tenant()
    setup_agency(client, tenant)
    break_call_insert(monkeypatch)
    response = client.post(CREATE, json={"agent_id": UV_AGENT}, headers=tenant.member())
    assert response.status_code == 201
    assert response.json["call_id"] is None
    assert response.json["warning"] == "Call created but failed to save to database"
    metadata = sim_call(ultravox_sim, response.json["ultravox_call_id"])["call"]["metadata"]
    assert metadata["telephony.agency_id"] == str(tenant.agency_id) and metadata["telephony.call_id"]


@pytest.mark.parametrize("rule, detail", [
    ({"mode": "error", "status": 500}, "Simulated error"),
    ({"mode": "rate_limit", "status": 429, "retry_after": 3}, "throttled"),
])
def test_sim_502(sim_app, ultravox_sim, make_tenant, rule, detail):
    client = sim_app.test_client()
    tenant = make_tenant()
    setup_agency(client, tenant)
    sim_failures(ultravox_sim, {"method": "POST", "path_prefix": "/api/agents", "count": 1, **rule})
    response = client.post(CREATE, json={"agent_id": UV_AGENT}, headers=tenant.member())
    assert response.status_code == 502 and detail in response.json["error"]


def test_sim_404_and_400(sim_app, ultravox_sim, make_tenant):
    client = sim_app.test_client()
    tenant = make_tenant()
    setup_agency(client, tenant, ultravox_key=None)
    assert client.post(CREATE, json={"agent_id": "other"}, headers=tenant.member()).status_code == 404
    assert client.post(CREATE, json={"agent_id": UV_AGENT}, headers=tenant.member()).status_code == 400
    assert client.post(CREATE, json={}, headers=tenant.member()).status_code == 400
    requests_seen = requests.get(f"{ultravox_sim.base_url}/_sim/requests", timeout=5).json()["requests"]
    assert requests_seen == []


def test_sim_every_other_row_of_the_seed_table(sim_app, ultravox_sim, make_tenant):
    """The rows that never reach Ultravox, on the simulator-backed app too."""
    from telephony.services.agencies import add_user
    client, db = sim_app.test_client(), sim_app.extensions["telephony.db"]
    tenant = make_tenant()
    setup_agency(client, tenant)
    with db.session() as session:
        add_user(session, auth_subject="sim-lonely", agency_id=None)
    from telephony.auth import mint_token
    lonely = {"Authorization": f"Bearer {mint_token(JWT_SECRET, 'sim-lonely')}"}
    body = {"agent_id": UV_AGENT}
    assert client.post(CREATE, json=body).status_code == 401
    assert client.post(CREATE, json=body, headers=lonely).status_code == 403
    assert client.get(CREATE, headers=tenant.member()).status_code == 405
    with db.session() as session:
        session.execute(text("UPDATE agency_credentials SET ciphertext = 'tampered'"))
    assert client.post(CREATE, json=body, headers=tenant.member()).status_code == 500
    assert requests.get(f"{ultravox_sim.base_url}/_sim/requests", timeout=5).json()["requests"] == []
