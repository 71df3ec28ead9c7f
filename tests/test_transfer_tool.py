"""Transfer targets (agents API, CLI, validation), the transferCall tool attached to
carrier calls, and every refusal of the tool endpoint (nothing dialled for any)."""
from __future__ import annotations

import json
import uuid
from urllib.parse import urlencode

import pytest
import responses
from sqlalchemy import select

from telephony.models import AgentMapping, Call, CallDirection, CallSource, CallTransfer
from telephony.services.calls import NewCall, start_call
from telephony.services.transfer_tool import TOKEN_HEADER, call_token, token_valid
from tests.inbound_helpers import (
    PUBLIC_BASE,
    TWILIO_SID,
    UltravoxMock,
    seed,
    twilio_signature,
)
from tests.transfer_support import CASES, TARGETS, set_targets

TWILIO_CALL = f"https://api.twilio.com/2010-04-01/Accounts/{TWILIO_SID}/Calls"


# -- targets: agents API, validation, CLI ------------------------------------------------

def _agent_body(**extra):
    return {"name": "Reception", "ultravox_agent_id": "agent-1", **extra}


def test_targets_are_validated_normalised_and_shown(client, make_tenant):
    tenant = make_tenant()
    created = client.post("/api/v1/agents", headers=tenant.admin(), json=_agent_body(transfer_targets=[
        {"name": "sales", "destination": "+1 415 555 0123", "description": "Orders", "mode": "warm",
         "caller_id": "+14155550100"},
        {"name": "desk", "destination": "sip:desk@pbx.example.com", "description": "Front desk"}]))
    assert created.status_code == 201, created.json
    targets = created.json["transfer_targets"]
    assert targets[0] == {"name": "sales", "destination": "+14155550123", "description": "Orders", "mode": "warm",
                          "ring_timeout_seconds": 25, "caller_id": "+14155550100", "accept_digit": "1"}
    assert targets[1]["destination"] == "sip:desk@pbx.example.com" and targets[1]["mode"] == "cold"
    agent_id = created.json["id"]
    assert client.get(f"/api/v1/agents/{agent_id}", headers=tenant.admin()).json["transfer_targets"] == targets

    cleared = client.patch(f"/api/v1/agents/{agent_id}", headers=tenant.admin(), json={"transfer_targets": []})
    assert cleared.status_code == 200 and cleared.json["transfer_targets"] == []


@pytest.mark.parametrize("target, field", [
    ({"name": "sales", "destination": "4155550123", "description": "x"}, "transfer_targets.0.destination"),
    ({"name": "sales", "destination": "+1415", "description": "x"}, "transfer_targets.0.destination"),
    ({"name": "sales", "destination": "sip:<evil>@x", "description": "x"}, "transfer_targets.0.destination"),
    ({"name": "Sales Team", "destination": "+14155550123", "description": "x"}, "transfer_targets.0.name"),
    ({"name": "sales", "destination": "+14155550123", "description": "x", "mode": "hot"}, "transfer_targets.0.mode"),
    ({"name": "sales", "destination": "+14155550123", "description": "x", "ring_timeout_seconds": 1},
     "transfer_targets.0.ring_timeout_seconds"),
    ({"name": "sales", "destination": "+14155550123", "description": "x", "caller_id": "hello"},
     "transfer_targets.0.caller_id"),
])
def test_a_bad_target_is_refused_naming_its_field(client, make_tenant, target, field):
    tenant = make_tenant()
    response = client.post("/api/v1/agents", headers=tenant.admin(), json=_agent_body(transfer_targets=[target]))
    assert response.status_code == 400
    assert field in response.json["fields"] or response.json.get("error", "").startswith(field), response.json
    assert client.get("/api/v1/agents", headers=tenant.admin()).json["agents"] == []


def test_duplicate_target_names_are_refused(client, make_tenant):
    tenant = make_tenant()
    twice = [{"name": "sales", "destination": "+14155550123", "description": "x"}] * 2
    response = client.post("/api/v1/agents", headers=tenant.admin(), json=_agent_body(transfer_targets=twice))
    assert response.status_code == 400 and "used twice" in response.json["error"]


def test_another_agencys_agent_targets_cannot_be_changed(client, make_tenant):
    owner, other = make_tenant("Owner"), make_tenant("Other")
    agent_id = client.post("/api/v1/agents", headers=owner.admin(), json=_agent_body()).json["id"]
    response = client.patch(f"/api/v1/agents/{agent_id}", headers=other.admin(),
                            json={"transfer_targets": [{"name": "x", "destination": "+14155550123",
                                                        "description": "toll fraud"}]})
    assert response.status_code == 404
    assert client.get(f"/api/v1/agents/{agent_id}", headers=owner.admin()).json["transfer_targets"] == []


def test_targets_from_the_cli(app, make_tenant):
    tenant = make_tenant()
    runner = app.test_cli_runner()
    added = runner.invoke(args=["agent", "add", "--agency", str(tenant.agency_id), "--name", "R",
                                "--ultravox-agent-id", "agent-9"])
    agent_id = json.loads(added.output)["id"]
    targets = [{"name": "sales", "destination": "+14155550123", "description": "Orders"}]
    result = runner.invoke(args=["agent", "targets", "--agency", str(tenant.agency_id), "--agent", agent_id, "--set"],
                           input=json.dumps(targets))
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["transfer_targets"][0]["destination"] == "+14155550123"
    bad = runner.invoke(args=["agent", "targets", "--agency", str(tenant.agency_id), "--agent", agent_id, "--set"],
                        input=json.dumps([{"name": "x", "destination": "12", "description": "d"}]))
    assert bad.exit_code != 0 and "E.164" in bad.output
    shown = runner.invoke(args=["agent", "targets", "--agency", str(tenant.agency_id), "--agent", agent_id])
    assert json.loads(shown.output)["transfer_targets"][0]["name"] == "sales"


def test_openapi_shows_the_tool_and_the_targets(client):
    spec = client.get("/openapi.json").json
    assert "post" in spec["paths"]["/tools/transfer/{call_id}"]
    agents = json.dumps(spec["paths"]["/api/v1/agents"]) + json.dumps(spec.get("components", {}))
    assert "transfer_targets" in agents and "ring_timeout_seconds" in agents


# -- the tool on carrier calls -------------------------------------------------------------

@pytest.mark.parametrize("carrier", list(CASES))
def test_carrier_calls_of_agents_with_targets_get_the_tool(app, carrier):
    seeded = seed(app, carrier=carrier)
    set_targets(app, seeded.agent_id, TARGETS)
    case, mock = CASES[carrier], UltravoxMock()
    with responses.RequestsMock() as rsps:
        mock.answer_with(rsps)  # every request is validated against Ultravox's OpenAPI spec
        assert case.post(app.test_client(), case.voice_path, case.inbound_form(case.call_id())).status_code == 200
    [body] = mock.bodies
    [tool] = body["toolOverrides"]["add"]
    definition = tool["temporaryTool"]
    assert definition["modelToolName"] == "transferCall"
    destination = next(p for p in definition["dynamicParameters"] if p["name"] == "destination")
    assert destination["schema"]["enum"] == ["sales", "support"] and destination["required"] is True
    assert definition["automaticParameters"] == [{"name": "ultravox_call_id", "location": "PARAMETER_LOCATION_BODY",
                                                  "knownValue": "KNOWN_PARAM_CALL_ID"}]
    our_id = uuid.UUID(body["metadata"]["telephony.call_id"])
    assert definition["http"] == {"baseUrlPattern": f"{PUBLIC_BASE}/tools/transfer/{our_id}", "httpMethod": "POST"}
    [token] = [p for p in definition["staticParameters"] if p["name"] == TOKEN_HEADER]
    assert token["location"] == "PARAMETER_LOCATION_HEADER"
    store = app.extensions["telephony.credentials"]
    assert token_valid(store, our_id, token["value"]) and not token_valid(store, uuid.uuid4(), token["value"])
    # The target numbers never reach Ultravox or the model: only names and descriptions.
    assert "+14155550123" not in json.dumps(body)


def test_no_tool_without_targets_or_off_the_phone(app):
    seeded = seed(app, carrier="twilio")
    case, mock = CASES["twilio"], UltravoxMock()
    with responses.RequestsMock() as rsps:
        mock.answer_with(rsps)
        case.post(app.test_client(), case.voice_path, case.inbound_form(case.call_id()))
        set_targets(app, seeded.agent_id, TARGETS)
        with app.app_context(), app.extensions["telephony.db"].session() as session:
            start_call(session, NewCall(agency_id=seeded.agency_id, agent=session.get(AgentMapping, seeded.agent_id),
                                        medium={"webRtc": {}}, source=CallSource.webrtc,
                                        direction=CallDirection.inbound))
    assert [("toolOverrides" in body) for body in mock.bodies] == [False, False]


# -- refusals ------------------------------------------------------------------------------

def _live_call(app, *, carrier: str = "twilio", number: str = "+14155550100", status: str = "in-progress"):
    seeded = seed(app, carrier=carrier, number=number)
    set_targets(app, seeded.agent_id, TARGETS)
    with app.extensions["telephony.db"].session() as session:
        call = Call(agency_id=seeded.agency_id, agent_id=seeded.agent_id, ultravox_call_id=str(uuid.uuid4()),
                    source=CallSource(carrier), direction=CallDirection.inbound, status=status,
                    carrier_call_id="CA" + uuid.uuid4().hex)
        session.add(call)
        session.flush()
        return call.id, call.ultravox_call_id, seeded.agency_id


def _invoke(app, call_id, ultravox_call_id, *, token=None, destination="sales"):
    headers = {} if token is None else {TOKEN_HEADER: token}
    return app.test_client().post(f"/tools/transfer/{call_id}", headers=headers, json={
        "destination": destination, "reason": "r", "ultravox_call_id": ultravox_call_id})


def _token(app, call_id):
    return call_token(app.extensions["telephony.credentials"], call_id)


def _transfers(app) -> list[CallTransfer]:
    with app.extensions["telephony.db"].session() as session:
        return list(session.scalars(select(CallTransfer)))


def test_every_refusal_dials_nothing(app):
    call_id, uv_id, _ = _live_call(app)
    other_id, other_uv, _ = _live_call(app, number="+14155550101")
    foreign_id, foreign_uv, _ = _live_call(app, number="+14155550102")  # another agency's call
    ended_id, ended_uv, _ = _live_call(app, number="+14155550103", status="completed")
    with responses.RequestsMock(assert_all_requests_are_fired=False) as rsps:
        dialled = rsps.add(responses.POST, f"{TWILIO_CALL}/", status=200)  # would be any carrier request
        assert _invoke(app, call_id, uv_id).status_code == 401  # no token
        assert _invoke(app, call_id, uv_id, token="0" * 64).status_code == 401  # forged
        assert _invoke(app, call_id, uv_id, token=_token(app, other_id)).status_code == 401  # another call's
        assert _invoke(app, call_id, other_uv, token=_token(app, call_id)).status_code == 404  # replayed elsewhere
        assert _invoke(app, call_id, foreign_uv, token=_token(app, call_id)).status_code == 404  # another agency
        assert _invoke(app, foreign_id, foreign_uv, token=_token(app, call_id)).status_code == 401
        assert _invoke(app, uuid.uuid4(), uv_id, token=_token(app, call_id)).status_code == 401
        assert _invoke(app, ended_id, ended_uv, token=_token(app, ended_id)).status_code == 409  # over
        for destination in ("+19005550100", "SALES", "", None, ["sales"]):
            refused = _invoke(app, call_id, uv_id, token=_token(app, call_id), destination=destination)
            assert refused.status_code == 422 and refused.json["code"] == "destination_not_allowed"
        not_json = app.test_client().post(f"/tools/transfer/{call_id}", data=b"[1]",
                                          headers={TOKEN_HEADER: _token(app, call_id)},
                                          content_type="application/json")
        assert not_json.status_code == 400
        assert dialled.call_count == 0 and len(rsps.calls) == 0
    assert _transfers(app) == []


def test_a_carrier_error_leaves_the_caller_with_the_agent(app):
    call_id, uv_id, _ = _live_call(app)
    with responses.RequestsMock() as rsps:
        rsps.add(responses.POST, f"{TWILIO_CALL}/{_carrier_call_id(app, call_id)}.json", status=404,
                 json={"code": 20404, "message": "not found", "status": 404})
        response = _invoke(app, call_id, uv_id, token=_token(app, call_id))
    assert response.status_code == 200 and "could not be started" in response.json["result"]
    [transfer] = _transfers(app)
    assert (transfer.status, transfer.outcome) == ("ended", "failed")


def test_one_transfer_at_a_time(app):
    call_id, uv_id, _ = _live_call(app)
    with responses.RequestsMock() as rsps:
        rsps.add(responses.POST, f"{TWILIO_CALL}/{_carrier_call_id(app, call_id)}.json", status=200,
                 json={"sid": _carrier_call_id(app, call_id), "status": "in-progress"})
        assert _invoke(app, call_id, uv_id, token=_token(app, call_id)).status_code == 200
        [redirect] = rsps.calls
    twiml = dict(pair.split("=", 1) for pair in redirect.request.body.split("&"))["Twiml"]
    assert "%2B14155550123" in twiml and "dial-result" in twiml  # the stored number, our action URL
    assert _invoke(app, call_id, uv_id, token=_token(app, call_id), destination="support").status_code == 409
    assert len(_transfers(app)) == 1


def test_a_forged_carrier_callback_changes_nothing(app):
    call_id, uv_id, _ = _live_call(app)
    with responses.RequestsMock() as rsps:
        rsps.add(responses.POST, f"{TWILIO_CALL}/{_carrier_call_id(app, call_id)}.json", status=200,
                 json={"sid": "x", "status": "in-progress"})
        _invoke(app, call_id, uv_id, token=_token(app, call_id))
    [transfer] = _transfers(app)
    path = f"/webhooks/transfers/{transfer.id}/dial-result"
    form = {"CallSid": "CAx", "DialCallStatus": "busy", "AccountSid": TWILIO_SID}
    forged = app.test_client().post(path, data=urlencode(form), content_type="application/x-www-form-urlencoded",
                                    headers={"X-Twilio-Signature": twilio_signature(PUBLIC_BASE + path, form,
                                                                                    token="not-the-token")})
    assert forged.status_code == 403
    [transfer] = _transfers(app)
    assert transfer.outcome is None and transfer.status == "dialing"
    unknown = app.test_client().post(f"/webhooks/transfers/{uuid.uuid4()}/dial-result", data=urlencode(form),
                                     content_type="application/x-www-form-urlencoded")
    assert unknown.status_code == 404


def _carrier_call_id(app, call_id) -> str:
    with app.extensions["telephony.db"].session() as session:
        return session.get(Call, call_id).carrier_call_id


def test_the_call_detail_shows_its_transfers_and_history_filters_them(app, make_tenant):
    call_id, uv_id, agency_id = _live_call(app)
    with responses.RequestsMock() as rsps:
        rsps.add(responses.POST, f"{TWILIO_CALL}/{_carrier_call_id(app, call_id)}.json", status=200,
                 json={"sid": "x", "status": "in-progress"})
        _invoke(app, call_id, uv_id, token=_token(app, call_id))
    from telephony.auth import mint_token
    from telephony.models import Role
    from telephony.services.agencies import add_user
    from tests.conftest import JWT_SECRET
    with app.extensions["telephony.db"].session() as session:
        add_user(session, auth_subject="viewer-t", agency_id=agency_id, role=Role.member)
    headers = {"Authorization": f"Bearer {mint_token(JWT_SECRET, 'viewer-t')}"}
    client = app.test_client()
    detail = client.get(f"/api/v1/calls/{call_id}", headers=headers).json
    [shown] = detail["transfers"]
    assert (shown["target"], shown["destination"], shown["mode"], shown["status"]) == (
        "sales", "+14155550123", "cold", "dialing")
    assert [c["id"] for c in client.get("/api/v1/calls?transferred=true", headers=headers).json["calls"]] == [
        str(call_id)]
    assert client.get("/api/v1/calls?transferred=false", headers=headers).json["calls"] == []
    stranger = make_tenant("Stranger")
    assert client.get(f"/api/v1/calls/{call_id}", headers=stranger.member()).status_code == 404


@pytest.mark.parametrize("carrier", ["twilio", "plivo"])
def test_outbound_carrier_calls_get_the_tool_too(app, carrier):
    seeded = seed(app, carrier=carrier)
    set_targets(app, seeded.agent_id, TARGETS)
    mock = UltravoxMock()
    with responses.RequestsMock() as rsps:
        mock.answer_with(rsps)
        with app.app_context(), app.extensions["telephony.db"].session() as session:
            start_call(session, NewCall(agency_id=seeded.agency_id, agent=session.get(AgentMapping, seeded.agent_id),
                                        medium={carrier: {}}, source=CallSource(carrier),
                                        direction=CallDirection.outbound, first_speaker="user",
                                        to_number="+12125550123"))
    [body] = mock.bodies
    assert [tool["temporaryTool"]["modelToolName"] for tool in body["toolOverrides"]["add"]] == ["transferCall"]


def test_an_inbound_call_whose_ultravox_id_is_not_recorded_yet(app):
    """The claim-first path writes the Ultravox id just after the carrier's answer: a tool
    call in between is this call's if that id is no other call's."""
    call_id, other_uv, _ = _live_call(app)
    with app.extensions["telephony.db"].session() as session:
        pending = Call(agency_id=session.get(Call, call_id).agency_id, agent_id=session.get(Call, call_id).agent_id,
                       source=CallSource.twilio, direction=CallDirection.inbound, status="ringing",
                       carrier_call_id="CA" + uuid.uuid4().hex)
        session.add(pending)
        session.flush()
        pending_id, carrier_id = pending.id, pending.carrier_call_id
    assert _invoke(app, pending_id, other_uv, token=_token(app, pending_id)).status_code == 404
    with responses.RequestsMock() as rsps:
        rsps.add(responses.POST, f"{TWILIO_CALL}/{carrier_id}.json", status=200,
                 json={"sid": carrier_id, "status": "in-progress"})
        assert _invoke(app, pending_id, str(uuid.uuid4()), token=_token(app, pending_id)).status_code == 200


def test_a_warm_transfer_whose_person_cannot_be_dialled_takes_the_caller_off_hold(app):
    call_id, uv_id, _ = _live_call(app)
    with app.extensions["telephony.db"].session() as session:
        agent = session.get(AgentMapping, session.get(Call, call_id).agent_id)
        agent.transfer_targets = [{**agent.transfer_targets[0], "mode": "warm"}]
    sid = _carrier_call_id(app, call_id)
    with responses.RequestsMock() as rsps:
        update = rsps.add(responses.POST, f"{TWILIO_CALL}/{sid}.json", status=200, json={"sid": sid})
        rsps.add(responses.POST, f"{TWILIO_CALL}.json", status=500, json={"code": 20500, "message": "down"})
        rsps.add(responses.POST, "https://api.ultravox.ai/api/calls", status=201, json={
            "callId": str(uuid.uuid4()), "joinUrl": "wss://uv.example/calls/back/join",
            "created": "2026-12-01T10:00:00Z"})
        response = _invoke(app, call_id, uv_id, token=_token(app, call_id))
        twimls = [dict(p.split("=", 1) for p in call.request.body.split("&"))["Twiml"] for call in rsps.calls
                  if call.request.url.endswith(f"{sid}.json")]
    assert response.status_code == 200 and "could not be started" in response.json["result"]
    assert update.call_count == 2 and "Conference" in twimls[0] and "uv.example" in twimls[1]
    [transfer] = _transfers(app)
    assert (transfer.mode, transfer.outcome) == ("warm", "failed") and transfer.resumed_call_id is not None
