"""No credit, no call: an agency whose balance is not above zero starts no call of any
kind (the rule lives in calls.start_call, the one path every call takes)."""
from __future__ import annotations

import uuid

import pytest
import requests
from sqlalchemy import select, update

from telephony.models import Agency, Call, Campaign
from telephony.services.inbound import APOLOGY
from tests.inbound_helpers import PlivoCase, TelnyxTexmlCase, TwilioCase, parse_answer
from tests.outbound_helpers import (
    AGENT_UV_ID,
    CALLEE,
    NUMBERS,
    contacts_by_phone,
    create_campaign,
    dial_requests,
    dispatch_once,
    seed_agency,
)

FALLBACK = "+14155550999"


def set_credits(app, agency_id, seconds: int) -> None:
    with app.extensions["telephony.db"].session() as session:
        session.execute(update(Agency).where(Agency.id == agency_id).values(credit_balance=seconds))


def ultravox_creates(ultravox_sim) -> list[dict]:
    log = requests.get(f"{ultravox_sim.base_url}/_sim/requests", timeout=5).json()["requests"]
    return [r for r in log if r["method"] == "POST" and r["path"].startswith("/api/agents/")]


@pytest.mark.parametrize("balance", [0, -120])
@pytest.mark.parametrize("path, body", [
    ("/functions/v1/calls-create", {"agent_id": AGENT_UV_ID}),
    ("/api/v1/calls/websocket", {"agent_id": AGENT_UV_ID, "inputSampleRate": 16000}),
    ("/api/v1/calls", {"agent_id": AGENT_UV_ID, "to": CALLEE}),
], ids=["dashboard", "websocket", "outbound"])
def test_api_call_starts_answer_403_and_start_nothing(sim_app, ultravox_sim, carrier_sim, path, body, balance):
    seeded = seed_agency(sim_app)
    set_credits(sim_app, seeded.agency_id, balance)
    response = sim_app.test_client().post(path, json=body, headers=seeded.headers())
    assert response.status_code == 403
    assert response.json == {"error": "Insufficient credits", "code": "insufficient_credits"}
    assert ultravox_creates(ultravox_sim) == [] and dial_requests(carrier_sim) == []
    with sim_app.extensions["telephony.db"].session() as session:
        assert session.scalars(select(Call)).all() == []
    # Credit added: the same request goes through.
    set_credits(sim_app, seeded.agency_id, 60)
    assert sim_app.test_client().post(path, json=body, headers=seeded.headers()).status_code == 201


@pytest.mark.parametrize("case", [TwilioCase(), TelnyxTexmlCase(), PlivoCase()], ids=lambda case: case.name)
@pytest.mark.parametrize("fallback", [FALLBACK, None], ids=["fallback", "no-fallback"])
def test_inbound_caller_gets_the_fallback_or_an_apology_never_the_agent(sim_app, ultravox_sim, case, fallback):
    seeded = seed_agency(sim_app, carrier=case.name)
    with sim_app.extensions["telephony.db"].session() as session:
        from telephony.models import PhoneNumber
        session.execute(update(PhoneNumber).where(PhoneNumber.agency_id == seeded.agency_id)
                        .values(fallback_number=fallback))
    set_credits(sim_app, seeded.agency_id, 0)
    call_sid = case.call_id()
    response = case.post(sim_app.test_client(), case.voice_path,
                         case.inbound_form(call_sid, to=case.number(NUMBERS[case.name])))
    assert response.status_code == 200
    kind, target = parse_answer(response.get_data(as_text=True))
    assert (kind, target) == (("dial", case.number(FALLBACK)) if fallback else ("say", APOLOGY))
    assert ultravox_creates(ultravox_sim) == []
    with sim_app.extensions["telephony.db"].session() as session:
        [call] = session.scalars(select(Call)).all()
        assert call.carrier_call_id == call_sid and call.ultravox_call_id is None
        assert call.metadata_ == {"inbound_answer": kind, "start_error": "InsufficientCredits"}


def test_a_campaign_pauses_without_credit_and_resumes_when_credit_is_added(sim_app, ultravox_sim, carrier_sim):
    seeded = seed_agency(sim_app)
    client = sim_app.test_client()
    campaign = create_campaign(client, seeded, [{"phone": CALLEE}])
    set_credits(sim_app, seeded.agency_id, 0)
    assert dispatch_once(sim_app) == ["aborted"]
    got = client.get(f"/api/v1/campaigns/{campaign['id']}", headers=seeded.headers()).json
    assert got["status"] == "paused" and got["paused_reason"] == "insufficient_credits"
    contact = contacts_by_phone(sim_app, campaign["id"])[CALLEE]
    assert contact.state == "queued" and contact.attempts == 0  # the attempt is not used up
    assert ultravox_creates(ultravox_sim) == [] and dial_requests(carrier_sim) == []
    assert dispatch_once(sim_app) == []  # still no credit: stays paused, nothing dialled
    set_credits(sim_app, seeded.agency_id, 600)
    assert dispatch_once(sim_app) == ["placed"]  # the reconcile pass resumed it
    with sim_app.extensions["telephony.db"].session() as session:
        resumed = session.get(Campaign, uuid.UUID(campaign["id"]))
        assert resumed is not None and resumed.status == "running" and resumed.paused_reason is None
    assert len(dial_requests(carrier_sim)) == 1
