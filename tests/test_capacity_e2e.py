"""Issue 15, end to end against the simulators: an agency whose Ultravox plan runs 5 calls
at once (the Ultravox simulator refuses a sixth with 429), 2 of them reserved for inbound
callers, while a campaign of 50 contacts runs in a real dispatcher.

- the campaign never holds more than 3 live calls;
- 2 inbound calls are connected at once;
- a third inbound caller is held (hold audio + redirect) and connected as soon as a slot
  frees, a slot the campaign may not take;
- a fourth, held past inbound_wait_seconds, is forwarded to the number's fallback;
- once the callers hang up, the campaign climbs back to 3.
"""
from __future__ import annotations

import threading
import time
import uuid
import xml.etree.ElementTree as ET
from typing import Any, Callable

import requests

from telephony.services import capacity
from telephony.services.campaigns.attempts import LIVE_ATTEMPT_STATES
from telephony.services.campaigns.loop import Dispatcher
from tests.inbound_helpers import CALLER, FALLBACK, PUBLIC_BASE, TwilioCase, calls, parse_answer, sim_calls_for
from tests.outbound_helpers import attempts, create_campaign, seed_agency, twilio_status

CONTACTS = [{"phone": f"+1415555{i:04d}"} for i in range(3000, 3050)]
TWILIO = TwilioCase()


def _wait_for(condition: Callable[[], bool], what: str, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"gave up waiting: {what}"
        time.sleep(0.05)


def _sim_live(ultravox_sim) -> list[dict[str, Any]]:
    every = requests.get(f"{ultravox_sim.base_url}/_sim/calls", timeout=5).json()["calls"]
    return [c for c in every if c["call"]["ended"] is None]


def _campaign_live_in_ultravox(ultravox_sim, campaign_id: str) -> int:
    """The campaign's calls Ultravox is running now: what the limit is about (an attempt
    row may still say "placed" for a moment after its call ended, until it is settled)."""
    return len([c for c in _sim_live(ultravox_sim) if c["call"]["metadata"].get("campaign_id") == campaign_id])


def _end_sim_call(ultravox_sim, sim_call: dict[str, Any]) -> None:
    requests.post(f"{ultravox_sim.base_url}/_sim/calls/{sim_call['call']['callId']}/end", json={},
                  timeout=5).raise_for_status()


def _inbound(client, call_sid: str, path: str = TWILIO.voice_path) -> str:
    form = TWILIO.inbound_form(call_sid, from_=CALLER)
    return TWILIO.post(client, path, form).get_data(as_text=True)


def _hang_up_inbound(client, ultravox_sim, call_sid: str) -> None:
    [sim_call] = sim_calls_for(ultravox_sim, call_sid)
    _end_sim_call(ultravox_sim, sim_call)
    form = TWILIO.status_form(call_sid, "completed", sequence=5, duration=30)
    assert TWILIO.post(client, TWILIO.status_path, form).status_code == 204


def test_inbound_callers_get_through_while_a_campaign_runs(sim_app, ultravox_sim, carrier_sim):
    requests.post(f"{ultravox_sim.base_url}/_sim/config", json={"max_concurrent_calls": 5},
                  timeout=5).raise_for_status()
    seeded = seed_agency(sim_app)  # its Twilio number is the inbound number too
    with sim_app.extensions["telephony.db"].session() as session:
        capacity.set_capacity(session, seeded.agency_id, max_concurrent_calls=5, reserved_inbound=2,
                              inbound_wait_seconds=30)
    with sim_app.extensions["telephony.db"].session() as session:
        from telephony.models import PhoneNumber
        number = session.query(PhoneNumber).filter_by(agency_id=seeded.agency_id).one()
        number.fallback_number = FALLBACK
    client = sim_app.test_client()
    campaign = create_campaign(client, seeded, CONTACTS,
                               pacing={"calls_per_second": 50, "max_concurrent": 50})

    def campaign_live() -> int:
        return len([a for a in attempts(sim_app, campaign["id"]) if a.state in LIVE_ATTEMPT_STATES])

    peaks = {"campaign": 0, "ultravox": 0}
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            peaks["campaign"] = max(peaks["campaign"], _campaign_live_in_ultravox(ultravox_sim, campaign["id"]))
            peaks["ultravox"] = max(peaks["ultravox"], len(_sim_live(ultravox_sim)))
            time.sleep(0.02)

    dispatcher = Dispatcher(app=sim_app, threads=4, poll_interval=0.05, reconcile_interval=0.2)
    threads = [dispatcher.start(), threading.Thread(target=sample, daemon=True)]
    threads[1].start()
    try:
        # (On a loaded machine a dial may step back for a later calls-per-second slot a few
        # times before it reaches the carrier: wait for the three to be placed.)
        _wait_for(lambda: len([a for a in attempts(sim_app, campaign["id"]) if a.state == "placed"]) == 3,
                  "the campaign takes its 3 slots")

        # Two callers connected at once, beside the campaign's three calls.
        first, second, third, fourth = (f"CA{uuid.uuid4().hex}" for _ in range(4))
        assert parse_answer(_inbound(client, first))[0] == "stream"
        assert parse_answer(_inbound(client, second))[0] == "stream"
        assert len(_sim_live(ultravox_sim)) == 5

        # The third waits on hold; nothing is asked of Ultravox for it.
        held = ET.fromstring(_inbound(client, third))
        redirect = held.find("./Redirect")
        assert held.find("./Pause") is not None and redirect is not None
        assert sim_calls_for(ultravox_sim, third) == []

        # A campaign call ends: the slot is the waiting caller's, not the campaign's.
        placed = next(a for a in attempts(sim_app, campaign["id"]) if a.state == "placed")
        [campaign_call] = [c for c in _sim_live(ultravox_sim)
                           if c["call"]["metadata"].get("telephony.call_id") == str(placed.call_id)]
        _end_sim_call(ultravox_sim, campaign_call)
        twilio_status(client, placed.call_id, placed.carrier_call_id, "completed")
        _wait_for(lambda: next(a for a in attempts(sim_app, campaign["id"]) if a.id == placed.id).state == "ended",
                  "the dispatcher settles the ended attempt")
        path = (redirect.text or "").strip()[len(PUBLIC_BASE):]
        assert parse_answer(_inbound(client, third, path))[0] == "stream"
        assert len(sim_calls_for(ultravox_sim, third)) == 1 and len(_sim_live(ultravox_sim)) == 5

        # A fourth caller, held past the wait: one last try, refused, then the fallback.
        assert ET.fromstring(_inbound(client, fourth)).find("./Redirect") is not None
        with sim_app.app_context():
            late = capacity.redirect_url(PUBLIC_BASE + TWILIO.voice_path, "twilio", fourth,
                                         capacity.Waiting(since=int(time.time()) - 31, round=6))
        assert parse_answer(_inbound(client, fourth, late[len(PUBLIC_BASE):])) == ("dial", FALLBACK)

        # The callers hang up: the campaign takes its three slots again, never more.
        for call_sid in (first, second, third):
            _hang_up_inbound(client, ultravox_sim, call_sid)
        _wait_for(lambda: campaign_live() == 3, "the campaign takes its slots back")
    finally:
        stop.set()
        dispatcher.stop()
        for thread in threads:
            thread.join(timeout=30)
    assert peaks["campaign"] <= 3, peaks
    assert peaks["ultravox"] <= 5, peaks
    streamed = {c.carrier_call_id for c in calls(sim_app) if c.ultravox_call_id and c.direction.value == "inbound"}
    assert streamed == {first, second, third}


def test_two_dispatchers_leave_the_reserved_slots_free(sim_app, ultravox_sim, carrier_sim):
    """Two dispatchers (as in two worker processes) run one campaign while a web call holds
    a slot: limit 5, 2 reserved, so the campaign has 2 slots between them, never more,
    and every contact is still dialled as calls end."""
    requests.post(f"{ultravox_sim.base_url}/_sim/config", json={"max_concurrent_calls": 5},
                  timeout=5).raise_for_status()
    seeded = seed_agency(sim_app)
    with sim_app.extensions["telephony.db"].session() as session:
        capacity.set_capacity(session, seeded.agency_id, max_concurrent_calls=5, reserved_inbound=2)
        from telephony.models import Call, CallDirection, CallSource
        session.add(Call(agency_id=seeded.agency_id, source=CallSource.webrtc, direction=CallDirection.outbound,
                         status="in-progress", ultravox_call_id=str(uuid.uuid4())))
    client = sim_app.test_client()
    campaign = create_campaign(client, seeded, CONTACTS[:8], pacing={"calls_per_second": 50, "max_concurrent": 50})

    def campaign_attempts() -> list:
        return attempts(sim_app, campaign["id"])

    peak = [0]
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            peak[0] = max(peak[0], _campaign_live_in_ultravox(ultravox_sim, campaign["id"]))
            time.sleep(0.02)

    dispatchers = [Dispatcher(app=sim_app, threads=3, poll_interval=0.05, reconcile_interval=0.2) for _ in range(2)]
    threads = [d.start() for d in dispatchers] + [threading.Thread(target=sample, daemon=True)]
    threads[-1].start()
    ended: set = set()

    def hang_up_placed() -> bool:
        for attempt in campaign_attempts():
            if attempt.state == "placed" and attempt.id not in ended:
                ended.add(attempt.id)
                [sim_call] = [c for c in _sim_live(ultravox_sim)
                              if c["call"]["metadata"].get("telephony.call_id") == str(attempt.call_id)]
                _end_sim_call(ultravox_sim, sim_call)
                twilio_status(client, attempt.call_id, attempt.carrier_call_id, "completed")
        return len([a for a in campaign_attempts() if a.state == "ended"]) == 8

    try:
        _wait_for(hang_up_placed, "every contact dialled and hung up", timeout=180)
    finally:
        stop.set()
        for dispatcher in dispatchers:
            dispatcher.stop()
        for thread in threads:
            thread.join(timeout=30)
    assert 1 <= peak[0] <= 2, peak
    assert len({a.contact_id for a in campaign_attempts() if a.state == "ended"}) == 8
