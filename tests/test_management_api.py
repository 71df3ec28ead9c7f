"""The agency-scoped management API: CRUD, validation, write-only secrets, tenancy."""
import uuid

import pytest

AGENT_ID = "3c90c3cc-0d44-4b50-8888-8dd25736052a"


def _agent(client, tenant, **overrides):
    body = {"name": "Front desk", "ultravox_agent_id": AGENT_ID, **overrides}
    return client.post("/api/v1/agents", json=body, headers=tenant.admin())


def test_agent_crud(client, make_tenant):
    tenant = make_tenant()
    created = _agent(client, tenant, recording_enabled=True)
    assert created.status_code == 201
    agent = created.json
    assert agent["name"] == "Front desk" and agent["recording_enabled"] is True
    assert client.get("/api/v1/agents", headers=tenant.admin()).json["agents"] == [agent]
    patched = client.patch(f"/api/v1/agents/{agent['id']}", json={"name": "Reception"}, headers=tenant.admin())
    assert patched.status_code == 200 and patched.json["name"] == "Reception"
    assert patched.json["ultravox_agent_id"] == AGENT_ID
    assert _agent(client, tenant).status_code == 409  # the same Ultravox agent twice
    assert client.delete(f"/api/v1/agents/{agent['id']}", headers=tenant.admin()).status_code == 204
    assert client.get(f"/api/v1/agents/{agent['id']}", headers=tenant.admin()).status_code == 404


@pytest.mark.parametrize("body, field", [
    ({"ultravox_agent_id": AGENT_ID}, "name"),
    ({"name": "x"}, "ultravox_agent_id"),
    ({"name": 5, "ultravox_agent_id": AGENT_ID}, "name"),
    ({"name": "x" * 201, "ultravox_agent_id": AGENT_ID}, "name"),
    ({"name": "", "ultravox_agent_id": AGENT_ID}, "name"),
    ({"name": "x", "ultravox_agent_id": "has spaces"}, "ultravox_agent_id"),
    ({"name": "x", "ultravox_agent_id": AGENT_ID, "recording_enabled": "yes"}, "recording_enabled"),
    ({"name": "x", "ultravox_agent_id": AGENT_ID, "surprise": 1}, "surprise"),
])
def test_invalid_agent_input_is_400_naming_the_field(client, make_tenant, body, field):
    tenant = make_tenant()
    response = client.post("/api/v1/agents", json=body, headers=tenant.admin())
    assert response.status_code == 400
    assert field in response.json["fields"]
    assert response.json["error"].startswith(field)


@pytest.mark.parametrize("data, content_type", [
    ("not json", "application/json"), ("[1, 2]", "application/json"), ("", "application/json"),
    ('"text"', "application/json"), ("null", "application/json"),
])
def test_malformed_bodies_are_400(client, make_tenant, data, content_type):
    tenant = make_tenant()
    response = client.post("/api/v1/agents", data=data, content_type=content_type, headers=tenant.admin())
    assert response.status_code == 400
    assert response.json["code"] == "invalid_input"


def test_oversized_body_is_413(client, make_tenant):
    tenant = make_tenant()
    response = client.post("/api/v1/agents", data='{"name": "' + "x" * 70_000 + '"}',
                           content_type="application/json", headers=tenant.admin())
    assert response.status_code == 413
    assert response.json["code"] == "payload_too_large"


def test_phone_number_crud_and_validation(client, make_tenant):
    tenant = make_tenant()
    agent = _agent(client, tenant).json
    created = client.post("/api/v1/phone-numbers", headers=tenant.admin(), json={
        "e164": "+1 (415) 555-0100", "carrier": "twilio", "agent_id": agent["id"], "fallback_number": "+14155550199",
        "configure_carrier": False})
    assert created.status_code == 201, created.json
    number = created.json
    assert number["e164"] == "+14155550100" and number["agent_id"] == agent["id"]
    bad = client.post("/api/v1/phone-numbers", headers=tenant.admin(), json={"e164": "4155550100", "carrier": "twilio"})
    assert bad.status_code == 400 and "e164" in bad.json["fields"]
    bad_carrier = client.post("/api/v1/phone-numbers", headers=tenant.admin(),
                              json={"e164": "+14155550101", "carrier": "vonage", "configure_carrier": False})
    assert bad_carrier.status_code == 400 and "carrier" in bad_carrier.json["fields"]
    unknown_agent = client.post("/api/v1/phone-numbers", headers=tenant.admin(), json={
        "e164": "+14155550102", "carrier": "telnyx", "agent_id": str(uuid.uuid4()), "configure_carrier": False})
    assert unknown_agent.status_code == 404
    cleared = client.patch(f"/api/v1/phone-numbers/{number['id']}", headers=tenant.admin(),
                           json={"agent_id": None, "fallback_number": None})
    assert cleared.status_code == 200
    assert cleared.json["agent_id"] is None and cleared.json["fallback_number"] is None
    assert cleared.json["carrier"] == "twilio"


def test_a_number_belongs_to_one_agency_only(client, make_tenant):
    a, b = make_tenant("A"), make_tenant("B")
    body = {"e164": "+442071838750", "carrier": "plivo", "configure_carrier": False}
    assert client.post("/api/v1/phone-numbers", json=body, headers=a.admin()).status_code == 201
    own = client.post("/api/v1/phone-numbers", json=body, headers=a.admin())
    assert own.status_code == 409 and "already has" in own.json["error"]
    held = client.post("/api/v1/phone-numbers", json=body, headers=b.admin())
    assert held.status_code == 422 and held.json["code"] == "number_not_registrable"
    assert client.get("/api/v1/phone-numbers", headers=b.admin()).json == {"phone_numbers": []}


def test_a_number_held_elsewhere_is_refused_like_an_unassigned_one(client, make_tenant):
    """Agency B cannot tell "another agency holds this number" from "this number is not
    registrable" (one nobody holds, in a range no carrier assigns): same status, headers
    and body, neither naming the other agency nor saying the number is registered."""
    a, b = make_tenant("A"), make_tenant("B")
    held = "+14155550123"
    assert client.post("/api/v1/phone-numbers", json={"e164": held, "carrier": "twilio", "configure_carrier": False},
                       headers=a.admin()).status_code == 201
    answers = [client.post("/api/v1/phone-numbers", headers=b.admin(),
                           json={"e164": e164, "carrier": "twilio", "configure_carrier": False})
               for e164 in (held, "+15555550123")]  # 555 is no area code: nobody can hold it
    first, second = answers
    assert first.status_code == second.status_code == 422
    assert first.get_data() == second.get_data()
    skip = {"Date", "X-Request-ID", "Server-Timing"}  # per request
    assert ({k: v for k, v in first.headers.items() if k not in skip}
            == {k: v for k, v in second.headers.items() if k not in skip})
    text = first.get_data(as_text=True)
    assert str(a.agency_id) not in text and "registered elsewhere" not in text and "already" not in text
    assert first.json == {"error": first.json["error"], "code": "number_not_registrable",
                          "fields": {"e164": first.json["error"]}}


def test_credentials_are_write_only(client, make_tenant):
    tenant = make_tenant()
    token = "auth-token-abcdefghijklmnop"
    response = client.put("/api/v1/credentials/twilio", headers=tenant.admin(),
                          json={"account_sid": "AC" + "a" * 32, "auth_token": token})
    assert response.status_code == 200
    assert token not in response.get_data(as_text=True)
    assert response.json["twilio"]["auth_token"] == {"set": True, "last4": "mnop"}
    shown = client.get("/api/v1/credentials", headers=tenant.admin())
    assert token not in shown.get_data(as_text=True)
    assert shown.json["ultravox"]["api_key"] == {"set": False, "last4": None}
    partial = client.put("/api/v1/credentials/twilio", headers=tenant.admin(), json={"auth_token": None})
    assert partial.json["twilio"]["auth_token"]["set"] is False
    assert partial.json["twilio"]["account_sid"]["set"] is True
    assert client.delete("/api/v1/credentials/twilio", headers=tenant.admin()).status_code == 204
    assert client.get("/api/v1/credentials", headers=tenant.admin()).json["twilio"]["account_sid"]["set"] is False


@pytest.mark.parametrize("provider, body, field", [
    ("twilio", {"password": "x"}, "password"),
    ("ultravox", {"api_key": 123}, "api_key"),
    ("telnyx", {"api_key": ""}, "api_key"),
    ("plivo", {"auth_token": "x" * 5000}, "auth_token"),
])
def test_invalid_credentials_are_400_naming_the_field(client, make_tenant, provider, body, field):
    tenant = make_tenant()
    response = client.put(f"/api/v1/credentials/{provider}", json=body, headers=tenant.admin())
    assert response.status_code == 400
    assert field in response.json["fields"]


def test_unknown_provider_is_404(client, make_tenant):
    tenant = make_tenant()
    assert client.put("/api/v1/credentials/vonage", json={}, headers=tenant.admin()).status_code == 404


def test_api_key_lifecycle(client, make_tenant):
    tenant = make_tenant()
    created = client.post("/api/v1/api-keys", headers=tenant.admin(), json={"name": "crm", "scopes": ["calls:write"]})
    assert created.status_code == 201
    key = created.json["key"]
    listed = client.get("/api/v1/api-keys", headers=tenant.admin())
    assert key not in listed.get_data(as_text=True)
    assert listed.json["api_keys"][0]["prefix"] == key[:11]
    assert client.get("/api/v1/me", headers={"X-API-Key": key}).status_code == 200
    revoked = client.delete(f"/api/v1/api-keys/{created.json['id']}", headers=tenant.admin())
    assert revoked.status_code == 200 and revoked.json["revoked_at"] is not None
    assert client.get("/api/v1/me", headers={"X-API-Key": key}).status_code == 401
    bad = client.post("/api/v1/api-keys", headers=tenant.admin(), json={"name": "x", "scopes": ["root"]})
    assert bad.status_code == 400 and "scopes.0" in bad.json["fields"]
    empty = client.post("/api/v1/api-keys", headers=tenant.admin(), json={"name": "x", "scopes": []})
    assert empty.status_code == 400 and "scopes" in empty.json["fields"]


def test_agency_a_cannot_see_or_touch_agency_b(client, make_tenant):
    a, b = make_tenant("A"), make_tenant("B")
    agent_b = _agent(client, b).json
    number_b = client.post("/api/v1/phone-numbers", headers=b.admin(),
                           json={"e164": "+14155550123", "carrier": "telnyx", "agent_id": agent_b["id"],
                                 "configure_carrier": False}).json
    key_b = client.post("/api/v1/api-keys", headers=b.admin(), json={"name": "b", "scopes": ["admin"]}).json
    client.put("/api/v1/credentials/ultravox", headers=b.admin(), json={"api_key": "b-secret-0123456789"})

    # Lists are empty for A.
    assert client.get("/api/v1/agents", headers=a.admin()).json == {"agents": []}
    assert client.get("/api/v1/phone-numbers", headers=a.admin()).json == {"phone_numbers": []}
    assert client.get("/api/v1/api-keys", headers=a.admin()).json == {"api_keys": []}
    assert client.get("/api/v1/credentials", headers=a.admin()).json["ultravox"]["api_key"]["set"] is False

    # Direct access is a 404, the same answer as for a missing id.
    missing = str(uuid.uuid4())
    for path in (f"/api/v1/agents/{agent_b['id']}", f"/api/v1/phone-numbers/{number_b['id']}"):
        response = client.get(path, headers=a.admin())
        assert response.status_code == 404
        assert response.json == client.get(path.rsplit("/", 1)[0] + "/" + missing, headers=a.admin()).json
        assert client.patch(path, json={}, headers=a.admin()).status_code == 404
        assert client.delete(path, headers=a.admin()).status_code == 404
    assert client.delete(f"/api/v1/api-keys/{key_b['id']}", headers=a.admin()).status_code == 404

    # A cannot attach B's agent to its own number.
    attach = client.post("/api/v1/phone-numbers", headers=a.admin(),
                         json={"e164": "+14155550124", "carrier": "twilio", "agent_id": agent_b["id"],
                               "configure_carrier": False})
    assert attach.status_code == 404

    # And B's things are intact.
    assert client.get(f"/api/v1/agents/{agent_b['id']}", headers=b.admin()).status_code == 200
    assert client.get("/api/v1/me", headers={"X-API-Key": key_b["key"]}).status_code == 200
    # B's key acts on B only.
    assert client.get("/api/v1/agents", headers={"X-API-Key": key_b["key"]}).json["agents"][0]["id"] == agent_b["id"]


def test_unknown_route_and_wrong_method_are_json(client, make_tenant):
    tenant = make_tenant()
    assert client.get("/api/v1/nothing", headers=tenant.admin()).json["code"] == "not_found"
    response = client.put("/api/v1/agents", headers=tenant.admin(), json={})
    assert response.status_code == 405 and response.json["code"] == "method_not_allowed"
    assert "GET" in response.headers["Allow"]


@pytest.mark.parametrize("path, body, field", [
    ("/api/v1/agents", {"name": "a\u0000b", "ultravox_agent_id": AGENT_ID}, "name"),
    ("/api/v1/api-keys", {"name": "k\u0000", "scopes": ["admin"]}, "name"),
    ("/api/v1/credentials/twilio", {"auth_token": "tok\u0000en"}, "auth_token"),
])
def test_nul_characters_are_400_not_500(client, make_tenant, path, body, field):
    tenant = make_tenant()
    method = client.put if "credentials" in path else client.post
    response = method(path, json=body, headers=tenant.admin())
    assert response.status_code == 400
    assert field in response.json["fields"]
