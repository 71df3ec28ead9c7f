"""POST /calls/public/create-web-call (seed 002): a widget starts a web call
with a public key. Every row of the seed's table, plus what the seed's raw
API key lacked: listed agents, allowed origins, a rate limit, revocation."""
from __future__ import annotations

import uuid

import pytest
from sqlalchemy import update

from telephony.models import Agency, CallSource
from tests.test_web_calls import (
    UV_AGENT,
    break_call_insert,
    mock_ultravox,
    setup_agency,
    sim_call,
    sim_failures,
    stored_call,
)

PATH = "/calls/public/create-web-call"
SITE = "https://shop.example.com"
OTHER_AGENT = "8b1f2a4e-5c6d-4e7f-9a0b-1c2d3e4f5a6b"



@pytest.fixture
def uv():
    yield from mock_ultravox()

def make_key(client, tenant, agent_ids: list[str], **fields) -> dict:
    response = client.post("/api/v1/public-keys", headers=tenant.admin(),
                           json={"name": "Widget", "agent_ids": agent_ids, **fields})
    assert response.status_code == 201, response.json
    return response.json


def web_call(client, key: str | None, agent: str | None = UV_AGENT, call_type="WebAudio", origin: str | None = SITE,
             **kwargs):
    headers = {name: value for name, value in (("x-api-access-key", key), ("voicehub-agent-id", agent),
                                               ("Origin", origin)) if value is not None}
    return client.post(PATH, json=kwargs.pop("json", {"type": call_type}), headers=headers, **kwargs)


@pytest.fixture
def frozen_window(monkeypatch):
    """Pin the rate limiter's clock mid-window, so a minute boundary cannot reset a count mid-test."""
    class Clock:
        @staticmethod
        def time() -> float:
            return 1_800_000_030.0

    monkeypatch.setattr("telephony.services.public_keys.time", Clock)


@pytest.fixture
def widget(client, make_tenant):
    """An agency with an Ultravox key, one agent and a public key for it, allowed on SITE."""
    tenant = make_tenant()
    agent = setup_agency(client, tenant)
    key = make_key(client, tenant, [agent["id"]], allowed_origins=[SITE])
    return tenant, agent, key


# -- success --------------------------------------------------------------------------------

@pytest.mark.parametrize("call_type, medium", [("text", "MESSAGE_MEDIUM_TEXT"), ("WebAudio", "MESSAGE_MEDIUM_VOICE"),
                                               ("TextAudio", "MESSAGE_MEDIUM_VOICE")])
def test_creates_a_web_call(client, db, widget, uv, call_type, medium):
    tenant, agent, key = widget
    answer = uv.agent_call()
    response = web_call(client, key["key"], call_type=call_type)
    assert response.status_code == 201, response.json
    assert set(response.json) == {"callId", "webCallSocketPath"}
    assert response.json["webCallSocketPath"] == answer["joinUrl"]
    sent = uv.bodies[0]
    assert sent["medium"] == {"webRtc": {}} and sent["initialOutputMedium"] == medium
    assert sent["metadata"]["public_web_call"] == "true"
    assert sent["metadata"]["telephony.call_id"] == response.json["callId"]
    call = stored_call(db, response.json["callId"])
    assert call.source == CallSource.webrtc and call.direction.value == "outbound"
    assert call.metadata_ == {"public_web_call": True, "public_key_id": key["id"], "type": call_type}
    assert call.agency_id == tenant.agency_id
    # CORS: only the allowed origin is echoed, never "*".
    assert response.headers["Access-Control-Allow-Origin"] == SITE
    assert "Origin" in response.headers["Vary"]


def test_accepts_our_agent_mapping_id_too(client, widget, uv):
    _, agent, key = widget
    uv.agent_call()
    assert web_call(client, key["key"], agent=agent["id"]).status_code == 201


def test_key_without_origins_works_from_anywhere_and_without_origin(client, make_tenant, uv):
    tenant = make_tenant()
    agent = setup_agency(client, tenant)
    key = make_key(client, tenant, [agent["id"]])
    uv.agent_call()
    uv.agent_call()
    anywhere = web_call(client, key["key"], origin="https://anything.example")
    assert anywhere.status_code == 201 and anywhere.headers["Access-Control-Allow-Origin"] == "*"
    assert web_call(client, key["key"], origin=None).status_code == 201


def test_partial_success_returns_the_ultravox_call_id(client, widget, uv, monkeypatch):
    _, _, key = widget
    answer = uv.agent_call()
    break_call_insert(monkeypatch)
    response = web_call(client, key["key"])
    assert response.status_code == 201
    assert response.json == {"callId": answer["callId"], "webCallSocketPath": answer["joinUrl"]}
    assert uv.bodies[0]["metadata"]["telephony.call_id"]  # our ids still went to Ultravox


# -- 400 misconfigured agent / invalid type ----------------------------------------------------

def test_400_misconfigured_agent(client, make_tenant, widget, uv):
    tenant, agent, key = widget
    other = make_tenant("Other")
    setup_agency(client, other, uv_agent=OTHER_AGENT)
    unlisted = client.post("/api/v1/agents", headers=tenant.admin(),
                           json={"name": "Unlisted", "ultravox_agent_id": "unlisted-agent"})
    assert unlisted.status_code == 201
    answers = [web_call(client, key["key"], agent=ref)
               for ref in (None, "", "no-such-agent", OTHER_AGENT, "unlisted-agent", unlisted.json["id"],
                           str(uuid.uuid4()), "x" * 500, "a\x00b", "unlisted agent")]
    assert {a.status_code for a in answers} == {400}
    assert {a.json["code"] for a in answers} == {"misconfigured_agent"}
    assert uv.bodies == []
    # The error is readable by the allowed page (the key is known by then).
    assert answers[0].headers["Access-Control-Allow-Origin"] == SITE


def test_400_agency_without_ultravox_key(client, make_tenant, uv):
    tenant = make_tenant()
    agent = setup_agency(client, tenant, ultravox_key=None)
    key = make_key(client, tenant, [agent["id"]])
    response = web_call(client, key["key"])
    assert response.status_code == 400 and response.json["code"] == "misconfigured_agent"


@pytest.mark.parametrize("body", [{}, {"type": "video"}, {"type": "TEXT"}, {"type": 1}, {"type": None}, [],
                                  "text"])
def test_400_invalid_type(client, widget, uv, body):
    _, _, key = widget
    response = web_call(client, key["key"], json=body)
    assert response.status_code == 400
    assert response.json["code"] == "invalid_input"
    assert uv.bodies == []


# -- 401 invalid key -------------------------------------------------------------------------

def test_401_invalid_missing_revoked_or_server_key(client, widget, uv):
    tenant, _, key = widget
    server_key = client.post("/api/v1/api-keys", json={"name": "s", "scopes": ["admin", "calls:write"]},
                             headers=tenant.admin()).json["key"]
    assert client.delete(f"/api/v1/public-keys/{key['id']}", headers=tenant.admin()).status_code == 200
    for candidate in (None, "", "pk_nope", server_key, key["key"], "pk_" + "x" * 300):
        response = web_call(client, candidate)
        assert response.status_code == 401, candidate
        assert response.json == {"error": "Invalid or revoked API key", "code": "unauthorized"}
        assert "Access-Control-Allow-Origin" not in response.headers  # nothing exposed without a key
    assert uv.bodies == []


def test_guessing_keys_is_rate_limited_per_client(client, widget, uv, frozen_window):
    from telephony.services.public_keys import INVALID_KEY_ATTEMPTS_PER_MINUTE
    for n in range(INVALID_KEY_ATTEMPTS_PER_MINUTE):
        assert web_call(client, f"pk_guess{n}").status_code == 401
    refused = web_call(client, "pk_guess-once-more")
    assert refused.status_code == 429 and refused.json["code"] == "rate_limited"
    assert refused.headers["Retry-After"] == "30"  # the pinned clock is mid-window
    # A real key still works from the same address: only guesses are limited.
    _, _, key = widget
    uv.agent_call()
    assert web_call(client, key["key"]).status_code == 201


# -- 403 insufficient credits / origin ---------------------------------------------------------

@pytest.mark.parametrize("balance", [0, -5])
def test_403_insufficient_credits(client, db, widget, uv, balance):
    tenant, _, key = widget
    with db.session() as session:
        session.execute(update(Agency).where(Agency.id == tenant.agency_id).values(credit_balance=balance))
    response = web_call(client, key["key"])
    assert response.status_code == 403
    assert response.json == {"error": "Insufficient credits", "code": "insufficient_credits"}
    assert uv.bodies == []


@pytest.mark.parametrize("origin", ["https://evil.example", "http://shop.example.com", "https://shop.example.com:8443",
                                    "null", None])
def test_403_origin_not_allowed(client, widget, uv, origin):
    _, _, key = widget
    response = web_call(client, key["key"], origin=origin)
    assert response.status_code == 403 and response.json["code"] == "origin_not_allowed"
    assert "Access-Control-Allow-Origin" not in response.headers
    assert uv.bodies == []


def test_origin_comparison_is_normalized(client, widget, uv):
    _, _, key = widget
    uv.agent_call()
    response = web_call(client, key["key"], origin="HTTPS://Shop.Example.com:443")
    assert response.status_code == 201


# -- 405 ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("method", ["get", "put", "delete", "patch"])
def test_405(client, widget, method):
    _, _, key = widget
    response = getattr(client, method)(PATH, headers={"x-api-access-key": key["key"]})
    assert response.status_code == 405


# -- 429 ------------------------------------------------------------------------------------------

def test_429_rate_limit_per_key(client, make_tenant, uv, frozen_window):
    tenant = make_tenant()
    agent = setup_agency(client, tenant)
    limited = make_key(client, tenant, [agent["id"]], rate_limit_per_minute=2)
    other = make_key(client, tenant, [agent["id"]], rate_limit_per_minute=2)
    for _ in range(3):
        uv.agent_call()
    assert [web_call(client, limited["key"]).status_code for _ in range(2)] == [201, 201]
    refused = web_call(client, limited["key"])
    assert refused.status_code == 429 and refused.json["code"] == "rate_limited"
    assert refused.headers["Retry-After"] == "30"
    assert "Retry-After" in refused.headers["Access-Control-Expose-Headers"]
    assert web_call(client, other["key"]).status_code == 201  # each key has its own budget
    assert len(uv.bodies) == 3


# -- 502 ------------------------------------------------------------------------------------------

def test_502_hides_ultravox_details_from_the_public(client, widget, uv):
    _, _, key = widget
    uv.agent_call(status=400, body={"detail": "internal agent config detail"})
    response = web_call(client, key["key"])
    assert response.status_code == 502
    assert "internal agent config" not in response.get_data(as_text=True)


# -- CORS preflight --------------------------------------------------------------------------------

def test_preflight_is_permissive_but_exposes_nothing(client):
    response = client.options(PATH, headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "POST",
                                             "Access-Control-Request-Headers": "x-api-access-key, voicehub-agent-id, "
                                                                               "content-type"})
    assert response.status_code == 204 and response.data == b""
    assert response.headers["Access-Control-Allow-Origin"] == "*"
    allowed = {h.strip().lower() for h in response.headers["Access-Control-Allow-Headers"].split(",")}
    assert {"x-api-access-key", "voicehub-agent-id", "content-type"} <= allowed
    assert "POST" in response.headers["Access-Control-Allow-Methods"]
    assert "Access-Control-Allow-Credentials" not in response.headers


# -- against the Ultravox simulator ------------------------------------------------------------------

def test_sim_text_call(sim_app, ultravox_sim, make_tenant):
    client = sim_app.test_client()
    tenant = make_tenant()
    agent = setup_agency(client, tenant)
    key = make_key(client, tenant, [agent["id"]], allowed_origins=[SITE])
    response = web_call(client, key["key"], call_type="text")
    assert response.status_code == 201, response.json
    call = stored_call(sim_app.extensions["telephony.db"], response.json["callId"])
    seen = sim_call(ultravox_sim, call.ultravox_call_id)["call"]
    assert seen["initialOutputMedium"] == "MESSAGE_MEDIUM_TEXT" and seen["medium"] == {"webRtc": {}}
    assert seen["joinUrl"] == response.json["webCallSocketPath"]
    assert seen["metadata"]["public_web_call"] == "true"


def test_sim_error_rows(sim_app, ultravox_sim, make_tenant, frozen_window):
    client = sim_app.test_client()
    tenant = make_tenant()
    agent = setup_agency(client, tenant)
    key = make_key(client, tenant, [agent["id"]], rate_limit_per_minute=3)
    assert web_call(client, "pk_wrong").status_code == 401
    assert web_call(client, key["key"], agent="nope").status_code == 400
    sim_failures(ultravox_sim, {"method": "POST", "path_prefix": "/api/agents", "mode": "error", "status": 500,
                                "count": 1})
    assert web_call(client, key["key"]).status_code == 502
    with sim_app.extensions["telephony.db"].session() as session:
        session.execute(update(Agency).where(Agency.id == tenant.agency_id).values(credit_balance=0))
    assert web_call(client, key["key"]).status_code == 403
    assert web_call(client, key["key"]).status_code == 429  # the 4th call of this key in the window
    assert client.get(PATH).status_code == 405
