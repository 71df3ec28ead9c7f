"""End to end against the simulators, over real HTTP on loopback: a carrier call comes
in through its signed webhook, the Ultravox simulator invokes the call's transferCall tool
exactly as Ultravox does, the carrier simulator plays the person's leg out with the
outcome set for the target and sends the carrier's signed callbacks; the caller ends up
with the person, or back with the agent."""
from __future__ import annotations

import pytest
import requests

from telephony.sim.common import serve_in_thread

from .transfer_support import (
    SALES,
    configure_legs,
    get_call,
    invoke_tool,
    legs,
    resumed_calls,
    settle,
    start_inbound_call,
    transfers_of,
)

CARRIERS = ("twilio", "telnyx", "plivo")
# simulator outcome -> what we record
OUTCOMES = {"answer": "answered", "busy": "busy", "no-answer": "no-answer", "fail": "failed"}


@pytest.fixture
def served(sim_app):
    with serve_in_thread(sim_app) as server:
        yield server.base_url


def _sim_call(ultravox_sim, ultravox_call_id: str) -> dict:
    return requests.get(f"{ultravox_sim.base_url}/_sim/calls/{ultravox_call_id}", timeout=5).json()


def _carrier_call(carrier_sim, carrier: str, call_id: str) -> dict:
    """The carrier simulator's record of the call; empty when nothing ever touched it."""
    every = requests.get(f"{carrier_sim.base_url}/_sim/calls", params={"carrier": carrier}, timeout=5).json()
    return next((call for call in every["calls"] if call["id"] == call_id), {"updates": []})


@pytest.mark.parametrize("carrier", CARRIERS)
@pytest.mark.parametrize("outcome", list(OUTCOMES))
def test_cold_transfer(sim_app, ultravox_sim, carrier_sim, served, carrier, outcome):
    live = start_inbound_call(sim_app, carrier)
    configure_legs(carrier_sim, {SALES: outcome})

    invoked = invoke_tool(ultravox_sim, live.ultravox_call_id, served, destination="sales",
                          reason="Jane wants a quote for 40 chairs")
    assert invoked["status"] == 200 and "sales" in invoked["result"]["result"]
    [leg] = legs(carrier_sim)
    assert (leg["carrier"], leg["call_id"]) == (carrier, live.carrier_call_id)
    [transfer] = transfers_of(sim_app, live.call_id)
    assert (transfer.target_name, transfer.mode, transfer.status) == ("sales", "cold", "dialing")
    assert transfer.reason == "Jane wants a quote for 40 chairs"

    [played] = settle(carrier_sim, served)
    assert played["destination"] == SALES
    assert all(reply["status"] == 200 for reply in played["replies"]), played["replies"]
    [transfer] = transfers_of(sim_app, live.call_id)
    assert transfer.outcome == OUTCOMES[outcome] and transfer.status == "ended" and transfer.ended_at
    assert transfer.carrier_leg_id == played["leg_id"]
    last_reply = played["replies"][-1]["body"]

    if outcome == "answer":
        assert transfer.answered_at is not None and transfer.resumed_call_id is None
        assert resumed_calls(sim_app, live.call_id) == []
        if carrier != "telnyx":
            assert "Hangup" in last_reply
        return

    # Nobody took the call: the caller is back with the same agent, told why.
    [resumed] = resumed_calls(sim_app, live.call_id)
    assert transfer.resumed_call_id == resumed.id and resumed.agent_id == live.agent_id
    new_call = _sim_call(ultravox_sim, resumed.ultravox_call_id)["call"]
    assert new_call["metadata"]["telephony.call_id"] == str(resumed.id)
    assert "did not go through" in new_call["firstSpeakerSettings"]["agent"]["prompt"]
    if carrier == "telnyx":
        actions = _carrier_call(carrier_sim, "telnyx", live.carrier_call_id)["updates"]
        resume = [a for a in actions if a.get("action") == "streaming_start"]
        assert [a["params"]["stream_url"] for a in resume] == [resumed.join_url]
    else:
        assert resumed.join_url and resumed.join_url in last_reply
    # The brought-back agent can transfer again: it has the tool, with its own token.
    again = invoke_tool(ultravox_sim, resumed.ultravox_call_id, served, destination="support", reason="retry")
    assert again["status"] == 200
    assert len(legs(carrier_sim)) == 2


@pytest.mark.parametrize("carrier", CARRIERS)
def test_off_list_destination_is_refused_and_nothing_is_dialled(sim_app, ultravox_sim, carrier_sim, served,
                                                                carrier):
    live = start_inbound_call(sim_app, carrier)
    for destination in ("+19005550100", "sales ", "SALES", "sip:attacker@example.com"):
        invoked = invoke_tool(ultravox_sim, live.ultravox_call_id, served, destination=destination, reason="x")
        assert invoked["status"] == 422
    assert legs(carrier_sim) == [] and transfers_of(sim_app, live.call_id) == []
    assert _carrier_call(carrier_sim, carrier, live.carrier_call_id)["updates"] == []


def test_a_call_is_over_once_the_carrier_says_so_not_when_the_agent_leg_ends(sim_app, ultravox_sim, carrier_sim,
                                                                             served):
    """Twilio, person answers: the agent's Ultravox leg ends at the redirect, while the
    caller is still talking to the person; the call ends with the carrier's callback."""
    from tests.inbound_helpers import TwilioCase
    from tests.lifecycle_support import WEBHOOK_SECRET, set_ultravox_credentials

    live = start_inbound_call(sim_app, "twilio")
    set_ultravox_credentials(sim_app, sim_app.extensions["telephony.db"], live.agency_id)
    requests.post(f"{ultravox_sim.base_url}/_sim/config", timeout=5, json={
        "webhook_url": f"{served}/webhooks/ultravox/{live.agency_id}", "webhook_secret": WEBHOOK_SECRET,
    }).raise_for_status()
    configure_legs(carrier_sim)
    assert invoke_tool(ultravox_sim, live.ultravox_call_id, served, destination="sales", reason="r")["status"] == 200
    requests.post(f"{ultravox_sim.base_url}/_sim/calls/{live.ultravox_call_id}/join", timeout=5).raise_for_status()
    requests.post(f"{ultravox_sim.base_url}/_sim/calls/{live.ultravox_call_id}/end", timeout=5,
                  json={"endReason": "hangup", "billedDuration": "30s"}).raise_for_status()
    _wait(lambda: get_call(sim_app, live.call_id).summary is not None)
    call = get_call(sim_app, live.call_id)
    assert call.status != "completed" and call.ended_at is None  # the person is still on the line

    case = TwilioCase()
    response = case.post(sim_app.test_client(), case.status_path,
                         case.status_form(live.carrier_call_id, "completed", sequence=9, duration=95))
    assert response.status_code == 204
    call = get_call(sim_app, live.call_id)
    assert call.status == "completed" and call.ended_at is not None and call.duration_seconds == 95


def _wait(predicate, timeout_s: float = 10.0) -> None:
    import time
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError("condition not reached in time")


@pytest.mark.private_event_endpoints
def test_the_outcome_is_an_agency_event_and_a_metric(sim_app, ultravox_sim, carrier_sim, served, receiver):
    import json

    from sqlalchemy import select

    from telephony.metrics import TRANSFERS
    from telephony.models import EventDelivery

    live = start_inbound_call(sim_app, "plivo")
    client = sim_app.test_client()
    from telephony.auth import mint_token
    from telephony.models import Role
    from telephony.services.agencies import add_user
    from tests.conftest import JWT_SECRET
    with sim_app.extensions["telephony.db"].session() as session:
        add_user(session, auth_subject=f"admin-{live.call_id}", agency_id=live.agency_id, role=Role.admin)
    admin = {"Authorization": f"Bearer {mint_token(JWT_SECRET, f'admin-{live.call_id}')}"}
    created = client.post("/api/v1/event-endpoints", headers=admin,
                          json={"url": receiver.url, "events": ["call.transferred"]})
    assert created.status_code == 201, created.json
    configure_legs(carrier_sim, {SALES: "no-answer"})
    before = TRANSFERS.labels("plivo", "cold", "no-answer")._value.get()

    invoke_tool(ultravox_sim, live.ultravox_call_id, served, destination="sales", reason="wants a refund")
    settle(carrier_sim, served)

    assert TRANSFERS.labels("plivo", "cold", "no-answer")._value.get() == before + 1
    with sim_app.extensions["telephony.db"].session() as session:
        [delivery] = session.scalars(select(EventDelivery).where(EventDelivery.event_type == "call.transferred"))
        event = json.loads(delivery.payload)
    assert event["type"] == "call.transferred"
    data = event["data"]
    assert (data["call_id"], data["target"], data["mode"], data["outcome"]) == (
        str(live.call_id), "sales", "cold", "no-answer")
    assert data["reason"] == "wants a refund" and data["carrier_leg_id"] and data["resumed_call_id"]
    assert b"telephony_call_transfers_total" in client.get("/metrics").data


WARM_OUTCOMES = {**OUTCOMES, "decline": "declined"}


@pytest.mark.parametrize("carrier", CARRIERS)
@pytest.mark.parametrize("outcome", list(WARM_OUTCOMES))
def test_warm_transfer(sim_app, ultravox_sim, carrier_sim, served, carrier, outcome):
    """The caller waits on hold while the person is called; the person hears the agent's
    summary and accepts with the key it names (or does not); back to the agent otherwise."""
    from .transfer_support import TARGETS
    warm = [{**TARGETS[0], "mode": "warm", "accept_digit": "1"}, TARGETS[1]]
    live = start_inbound_call(sim_app, carrier, targets=warm)
    configure_legs(carrier_sim, {SALES: outcome})

    invoked = invoke_tool(ultravox_sim, live.ultravox_call_id, served, destination="sales",
                          reason="Jane wants a quote for 40 chairs")
    assert invoked["status"] == 200, invoked
    [person] = [leg for leg in legs(carrier_sim) if leg["kind"] == "warm"]
    assert person["destination"] == SALES
    [transfer] = transfers_of(sim_app, live.call_id)
    assert (transfer.mode, transfer.status, transfer.carrier_leg_id) == ("warm", "dialing", person["leg_id"])

    played = settle(carrier_sim, served)
    assert all(reply["status"] in (200, 204) for leg in played for reply in leg["replies"]), played
    [transfer] = transfers_of(sim_app, live.call_id)
    assert transfer.outcome == WARM_OUTCOMES[outcome] and transfer.status == "ended"
    [warm_leg] = [leg for leg in played if leg["kind"] == "warm"]
    if outcome in ("answer", "decline") and carrier != "telnyx":
        whisper = warm_leg["replies"][0]["body"]
        assert "Jane wants a quote for 40 chairs" in whisper and "Press 1" in whisper

    if outcome == "answer":
        assert transfer.answered_at is not None and resumed_calls(sim_app, live.call_id) == []
        if carrier == "telnyx":
            actions = _carrier_call(carrier_sim, "telnyx", live.carrier_call_id)["updates"]
            assert [a["params"].get("call_control_id") for a in actions if a["action"] == "bridge"] == [
                person["leg_id"]]
        else:
            assert transfer.id.hex[:8] in warm_leg["replies"][1]["body"]  # joined the caller's conference
        return

    [resumed] = resumed_calls(sim_app, live.call_id)
    assert transfer.resumed_call_id == resumed.id
    if carrier == "twilio":
        updates = _carrier_call(carrier_sim, "twilio", live.carrier_call_id)["updates"]
        assert resumed.join_url in updates[-1]["params"]["Twiml"]
    elif carrier == "plivo":
        [back] = settle(carrier_sim, served)  # Plivo fetches the URL the call was moved to
        assert back["kind"] == "fetch" and resumed.join_url in back["replies"][0]["body"]
    else:
        actions = _carrier_call(carrier_sim, "telnyx", live.carrier_call_id)["updates"]
        assert [a["params"]["stream_url"] for a in actions if a["action"] == "streaming_start"] == [resumed.join_url]


def test_a_repeated_carrier_callback_brings_the_caller_back_once(sim_app, ultravox_sim, carrier_sim, served):
    """Carriers re-send callbacks: the same answer (the same agent call), one outcome."""
    from urllib.parse import urlencode

    from tests.inbound_helpers import PUBLIC_BASE, twilio_signature

    live = start_inbound_call(sim_app, "twilio")
    configure_legs(carrier_sim, {SALES: "busy"})
    invoke_tool(ultravox_sim, live.ultravox_call_id, served, destination="sales", reason="r")
    [played] = settle(carrier_sim, served)
    [transfer] = transfers_of(sim_app, live.call_id)
    path = f"/webhooks/transfers/{transfer.id}/dial-result"
    form = {"AccountSid": "AC" + "c" * 32, "CallSid": live.carrier_call_id, "CallStatus": "in-progress",
            "DialCallSid": played["leg_id"], "DialCallStatus": "busy", "Direction": "inbound"}
    again = sim_app.test_client().post(path, data=urlencode(form), content_type="application/x-www-form-urlencoded",
                                       headers={"X-Twilio-Signature": twilio_signature(PUBLIC_BASE + path, form)})
    assert again.status_code == 200
    assert again.get_data(as_text=True) == played["replies"][-1]["body"]  # the same stream answer
    assert len(resumed_calls(sim_app, live.call_id)) == 1
    [transfer] = transfers_of(sim_app, live.call_id)
    assert transfer.outcome == "busy"
