"""Every call starts through one function, `services.calls.start_call`.

Each entry point (dashboard test call, public web call, server WebSocket call, single
outbound call, campaign dial, inbound webhook on each carrier) is driven end to end
against the local simulators, with `start_call` wrapped by a spy that records what it
was asked. A second check reads the source: nothing but `services/calls.py` asks
Ultravox to create a call, so there is no second path to forget.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

from telephony.services import calls as call_service
from tests.inbound_helpers import PlivoCase, TelnyxTexmlCase, TwilioCase, parse_answer
from tests.outbound_helpers import AGENT_UV_ID, CALLEE, NUMBERS, create_campaign, dispatch_once, seed_agency

TELEPHONY = Path(__file__).resolve().parent.parent / "telephony"


@pytest.fixture
def started(monkeypatch) -> list[tuple[str, str, bool]]:
    """(source, direction, claim_first) of every call start, in order; the real function runs."""
    seen: list[tuple[str, str, bool]] = []
    real = call_service.start_call

    def spy(session, new, **kwargs):
        seen.append((new.source.value, new.direction.value, bool(kwargs.get("claim_first"))))
        return real(session, new, **kwargs)

    monkeypatch.setattr(call_service, "start_call", spy)
    return seen


def test_dashboard_websocket_and_public_web_calls(sim_app, started):
    seeded = seed_agency(sim_app)
    client = sim_app.test_client()
    response = client.post("/functions/v1/calls-create", json={"agent_id": AGENT_UV_ID}, headers=seeded.headers())
    assert response.status_code == 201, response.json
    response = client.post("/api/v1/calls/websocket", json={"agent_id": AGENT_UV_ID, "inputSampleRate": 16000},
                           headers=seeded.headers())
    assert response.status_code == 201, response.json
    key = client.post("/api/v1/public-keys", headers=seeded.headers(),
                      json={"name": "Widget", "agent_ids": [str(seeded.agent_id)]})
    assert key.status_code == 201, key.json
    response = client.post("/calls/public/create-web-call", json={"type": "WebAudio"},
                           headers={"x-api-access-key": key.json["key"], "voicehub-agent-id": AGENT_UV_ID})
    assert response.status_code == 201, response.json
    assert started == [("webrtc", "outbound", False), ("websocket", "outbound", False),
                       ("webrtc", "outbound", False)]


def test_single_outbound_call_and_campaign_dial(sim_app, carrier_sim, started):
    seeded = seed_agency(sim_app)
    client = sim_app.test_client()
    response = client.post("/api/v1/calls", json={"agent_id": AGENT_UV_ID, "to": CALLEE}, headers=seeded.headers())
    assert response.status_code == 201, response.json
    create_campaign(client, seeded, [{"phone": "+12125550123"}])
    assert dispatch_once(sim_app) == ["placed"]
    assert started == [("twilio", "outbound", False), ("twilio", "outbound", False)]


@pytest.mark.parametrize("case", [TwilioCase(), TelnyxTexmlCase(), PlivoCase()], ids=lambda case: case.name)
def test_inbound_webhooks_claim_first(sim_app, started, case):
    seed_agency(sim_app, carrier=case.name)
    form = case.inbound_form(case.call_id(), to=case.number(NUMBERS[case.name]))
    response = case.post(sim_app.test_client(), case.voice_path, form)
    assert response.status_code == 200
    assert parse_answer(response.get_data(as_text=True))[0] == "stream"
    assert started == [(case.name, "inbound", True)]


def test_only_the_call_start_module_asks_ultravox_to_create_a_call():
    creators = {"create_call", "create_agent_call"}
    callers = []
    for path in sorted(TELEPHONY.rglob("*.py")):
        relative = path.relative_to(TELEPHONY).as_posix()
        if relative.startswith("sim/") or relative == "ultravox.py":
            continue  # the simulator, and the client that defines these methods
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in creators:
                callers.append(f"{relative}:{node.lineno}")
    assert callers and all(caller.startswith("services/calls.py:") for caller in callers), callers


def test_a_call_that_ended_while_ultravox_answered_keeps_no_join_url(sim_app):
    """Claim first: the caller hangs up while Ultravox creates the call, the carrier's
    terminal callback lands, and only then is the answer recorded: the ended call must not
    get its joinUrl back (nobody may join a call that is over)."""
    from sqlalchemy import select, update

    from telephony.models import AgentMapping, Call, CallDirection, CallSource

    seeded = seed_agency(sim_app)
    db = sim_app.extensions["telephony.db"]
    with sim_app.app_context(), db.session() as session:
        agent = session.get(AgentMapping, seeded.agent_id)
        started = call_service.start_call(session, call_service.NewCall(
            agency_id=seeded.agency_id, agent=agent, medium={"twilio": {}}, source=CallSource.twilio,
            direction=CallDirection.inbound, carrier_call_id="CA" + "4" * 32), claim_first=True)
        assert started.join_url and started.record is not None
        session.execute(update(Call).where(Call.carrier_call_id == "CA" + "4" * 32)
                        .values(status="completed", join_url=None))
        session.commit()
        started.record(session)
        call = session.scalar(select(Call).where(Call.carrier_call_id == "CA" + "4" * 32))
        assert call is not None and call.status == "completed" and call.join_url is None
        assert call.ultravox_call_id == started.ultravox_call_id
