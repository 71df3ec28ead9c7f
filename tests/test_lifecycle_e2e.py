"""End to end over real HTTP on loopback: the Ultravox simulator ends a call and sends its signed
webhooks to our app; the worker enriches the call from the simulator and delivers our signed
call events to an agency receiver."""
import json
import time
import uuid

import pytest
import requests

from telephony.models import Agency, AgentMapping, CallDirection, CallSource
from telephony.services.calls import NewCall, call_metadata, start_call
from telephony.sim.common import serve_in_thread
from telephony.ultravox import UltravoxClient
from telephony.worker import Worker

from .lifecycle_support import (
    ULTRAVOX_KEY,
    UV_AGENT,
    WEBHOOK_SECRET,
    Receiver,
    add_agent,
    call_by_ultravox_id,
    get_call,
    set_ultravox_credentials,
    verify_standard_webhook,
)

pytestmark = pytest.mark.private_event_endpoints


@pytest.fixture
def world(sim_app, ultravox_sim, make_tenant):
    """Our app and an agency receiver served on loopback, the simulator pointed at our per-agency URL."""
    db = sim_app.extensions["telephony.db"]
    tenant = make_tenant("Acme", credit_balance=600)
    set_ultravox_credentials(sim_app, db, tenant.agency_id)
    agent_id = add_agent(db, tenant.agency_id)
    receiver = Receiver()
    with serve_in_thread(sim_app) as ours, serve_in_thread(receiver.app) as agency_server:
        requests.post(f"{ultravox_sim.base_url}/_sim/config", timeout=5, json={
            "webhook_url": f"{ours.base_url}/webhooks/ultravox/{tenant.agency_id}",
            "webhook_secret": WEBHOOK_SECRET, "emit_joined": True, "transcript_messages": 8}).raise_for_status()
        endpoint = sim_app.test_client().post(
            "/api/v1/event-endpoints", headers=tenant.admin(),
            json={"url": f"{agency_server.base_url}/events", "events": ["call.answered", "call.ended", "call.started"]})
        assert endpoint.status_code == 201
        yield {"app": sim_app, "db": db, "tenant": tenant, "agent_id": agent_id, "receiver": receiver,
               "secret": endpoint.json["secret"], "sim": ultravox_sim.base_url}


def _sim(world, path: str, body: dict | None = None) -> dict:
    response = requests.post(f"{world['sim']}{path}", json=body or {}, timeout=5)
    response.raise_for_status()
    return response.json()


def _wait_until(predicate, timeout_s: float = 10.0):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError("condition not reached in time")


def _drain(app) -> None:
    worker = Worker(app)
    for _ in range(20):
        if not worker.run_once():
            return
    raise AssertionError("the worker did not settle")


def test_a_call_from_start_to_enriched_history_and_agency_events(world):
    app, db, tenant = world["app"], world["db"], world["tenant"]
    with app.app_context():
        session = db.sessionmaker()
        started = start_call(session, NewCall(
            agency_id=tenant.agency_id, agent=session.get(AgentMapping, world["agent_id"]), medium={"webRtc": {}},
            source=CallSource.webrtc, direction=CallDirection.inbound, recording_enabled=True))
        session.close()
    uv_id = started.ultravox_call_id

    _sim(world, f"/_sim/calls/{uv_id}/join")
    _sim(world, f"/_sim/calls/{uv_id}/end", {"endReason": "hangup", "billedDuration": "42.5s"})
    call = _wait_until(lambda: (c := get_call(db, started.call_id)) and c.credits_charged_seconds is not None and c)
    assert call.status == "completed" and call.end_reason == "hangup" and call.joined_at is not None
    attempts = _wait_until(lambda: (a := requests.get(f"{world['sim']}/_sim/webhooks", timeout=5).json()["attempts"])
                           and len(a) >= 3 and a)
    # The simulator sends join and end from separate threads, as Ultravox may
    # reorder them too: assert the set, not the order.
    assert sorted((a["event"], a["status"]) for a in attempts) == [
        ("call.billed", 204), ("call.ended", 204), ("call.joined", 204)]

    _drain(app)  # enrichment against the simulator, then our deliveries to the agency
    call = get_call(db, started.call_id)
    assert len(call.transcript) == 8 and call.has_recording is True and call.summary and call.short_summary
    with db.session() as session:
        assert session.get(Agency, tenant.agency_id).credit_balance == 600 - 43

    received = world["receiver"].requests
    assert all(verify_standard_webhook(world["secret"], headers, body) for headers, body in received)
    bodies = [json.loads(body) for _, body in received]
    assert sorted(b["type"] for b in bodies) == ["call.answered", "call.ended"]
    ended = next(b["data"] for b in bodies if b["type"] == "call.ended")
    assert ended["call_id"] == str(started.call_id) and ended["ultravox_call_id"] == uv_id
    assert ended["status"] == "completed" and ended["end_reason"] == "hangup"

    detail = app.test_client().get(f"/api/v1/calls/{started.call_id}", headers=tenant.member()).json
    assert len(detail["transcript"]) == 8 and detail["has_recording"] is True
    assert detail["billed_duration_seconds"] == 43 and detail["status"] == "completed"


def test_a_call_we_failed_to_store_is_rebuilt_from_its_webhooks(world):
    """The seeds' partial success: Ultravox has the call (with our metadata), our insert never happened."""
    app, db, tenant = world["app"], world["db"], world["tenant"]
    our_id = uuid.uuid4()
    with app.app_context(), db.session() as session:
        agent = session.get(AgentMapping, world["agent_id"])
        metadata = call_metadata(call_id=our_id, agency_id=tenant.agency_id, agent=agent, source=CallSource.twilio,
                                 direction=CallDirection.outbound)
    created = UltravoxClient(ULTRAVOX_KEY, base_url=world["sim"]).create_agent_call(
        UV_AGENT, {"medium": {"twilio": {}}, "metadata": metadata})
    _sim(world, f"/_sim/calls/{created['callId']}/end", {"endReason": "unjoined", "billedDuration": "0s"})

    call = _wait_until(lambda: (c := get_call(db, our_id)) and c.credits_charged_seconds is not None and c)
    assert call.ultravox_call_id == created["callId"] and call.agent_id == world["agent_id"]
    assert (call.source, call.direction, call.status) == (CallSource.twilio, CallDirection.outbound, "failed")
    assert call_by_ultravox_id(db, created["callId"]).id == our_id
    _drain(app)
    assert [json.loads(body)["type"] for _, body in world["receiver"].requests] == ["call.started"]
