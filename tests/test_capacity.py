"""Capacity: the agency's settings (API and CLI), the campaign dispatcher leaving
reserved_inbound slots free across dispatchers, Ultravox 429s re-queued, and the Ultravox
simulator's concurrency limit."""
from __future__ import annotations

import json
from datetime import timedelta

import requests

from telephony.models import CallSource, utcnow
from telephony.services import capacity
from tests.capacity_helpers import end_call, live_call, set_capacity
from tests.outbound_helpers import (
    attempts,
    claim_concurrently,
    contacts_by_phone,
    create_campaign,
    dial_requests,
    dispatch_once,
    seed_agency,
    twilio_status,
)

CONTACTS = [{"phone": f"+1415555{i:04d}"} for i in range(2000, 2050)]


def _live_campaign_calls(app, campaign_id) -> int:
    return len([a for a in attempts(app, campaign_id) if a.state in ("claimed", "dialing", "placed")])


# -- settings ------------------------------------------------------------------------------


def test_capacity_settings_through_the_api(client, make_tenant):
    tenant, other = make_tenant("A"), make_tenant("B")
    got = client.get("/api/v1/capacity", headers=tenant.admin())
    assert got.status_code == 200
    assert got.json == {"max_concurrent_calls": None, "reserved_inbound": 0, "inbound_wait_seconds": 30,
                        "live_calls": 0}
    changed = client.patch("/api/v1/capacity", json={"max_concurrent_calls": 5, "reserved_inbound": 2},
                           headers=tenant.admin())
    assert changed.status_code == 200
    assert changed.json == {"max_concurrent_calls": 5, "reserved_inbound": 2, "inbound_wait_seconds": 30,
                            "live_calls": 0}
    assert client.patch("/api/v1/capacity", json={"inbound_wait_seconds": 45},
                        headers=tenant.admin()).json["max_concurrent_calls"] == 5  # omitted fields are kept

    too_many = client.patch("/api/v1/capacity", json={"reserved_inbound": 6}, headers=tenant.admin())
    assert too_many.status_code == 400 and too_many.json["fields"] == {"reserved_inbound": too_many.json["error"]}
    unlimited_with_reserve = client.patch("/api/v1/capacity", json={"max_concurrent_calls": None},
                                          headers=tenant.admin())
    assert unlimited_with_reserve.status_code == 400
    assert "reserved_inbound" in unlimited_with_reserve.json["fields"]
    for bad in ({"max_concurrent_calls": 0}, {"reserved_inbound": -1}, {"inbound_wait_seconds": 601},
                {"inbound_wait_seconds": None}, {"max_concurrent_calls": "five"}, {"surprise": 1}):
        assert client.patch("/api/v1/capacity", json=bad, headers=tenant.admin()).status_code in (400, 422), bad
    assert client.get("/api/v1/capacity", headers=tenant.admin()).json["reserved_inbound"] == 2  # nothing lost

    # Admins only, and only their own agency's.
    assert client.patch("/api/v1/capacity", json={"max_concurrent_calls": 9},
                        headers=tenant.member()).status_code == 403
    assert client.get("/api/v1/capacity", headers=other.admin()).json["max_concurrent_calls"] is None
    assert client.patch("/api/v1/capacity", json={"max_concurrent_calls": 1, "reserved_inbound": 0},
                        headers=other.admin()).status_code == 200
    assert client.get("/api/v1/capacity", headers=tenant.admin()).json["max_concurrent_calls"] == 5

    lifted = client.patch("/api/v1/capacity", json={"max_concurrent_calls": None, "reserved_inbound": 0},
                          headers=tenant.admin())
    assert lifted.status_code == 200 and lifted.json["max_concurrent_calls"] is None


def test_capacity_shows_the_live_calls_it_counts(app, client, make_tenant):
    tenant = make_tenant()
    live_call(app, tenant.agency_id)
    live_call(app, tenant.agency_id, source=CallSource.twilio, status="created", ultravox_call_id=None)  # claimed
    live_call(app, tenant.agency_id, status="ringing", ultravox_call_id=None)  # answered with the fallback
    live_call(app, tenant.agency_id, status="completed")
    live_call(app, make_tenant("Other").agency_id)
    assert client.get("/api/v1/capacity", headers=tenant.admin()).json["live_calls"] == 2


def test_capacity_settings_through_the_cli(app):
    runner = app.test_cli_runner()
    agency = json.loads(runner.invoke(args=["agency", "create", "Acme"]).output)
    result = runner.invoke(args=["agency", "set-capacity", agency["id"], "--max-concurrent-calls", "5",
                                 "--reserved-inbound", "2", "--inbound-wait", "20"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output) == {"id": agency["id"], "max_concurrent_calls": 5, "reserved_inbound": 2,
                                         "inbound_wait_seconds": 20, "live_calls": 0}
    refused = runner.invoke(args=["agency", "set-capacity", agency["id"], "--reserved-inbound", "6"])
    assert refused.exit_code != 0 and "may not exceed max_concurrent_calls" in refused.output
    lifted = runner.invoke(args=["agency", "set-capacity", agency["id"], "--unlimited", "--reserved-inbound", "0"])
    assert json.loads(lifted.output)["max_concurrent_calls"] is None


# -- the campaign dispatcher -----------------------------------------------------------------


def test_campaign_never_takes_the_reserved_slots(sim_app, carrier_sim):
    seeded = seed_agency(sim_app)
    set_capacity(sim_app, seeded.agency_id, max_concurrent_calls=5, reserved_inbound=2)
    campaign = create_campaign(sim_app.test_client(), seeded, CONTACTS[:10])
    assert dispatch_once(sim_app) == ["placed"] * 3
    assert dispatch_once(sim_app) == []
    # Live calls of every kind count: a web call and an inbound call take two more slots.
    web = live_call(sim_app, seeded.agency_id)
    live_call(sim_app, seeded.agency_id, source=CallSource.twilio)
    client = sim_app.test_client()
    first, second = [a for a in attempts(sim_app, campaign["id"]) if a.state == "placed"][:2]
    twilio_status(client, first.call_id, first.carrier_call_id, "completed")
    assert dispatch_once(sim_app) == []  # 2 campaign + 2 others + 1 would leave only 0 free
    twilio_status(client, second.call_id, second.carrier_call_id, "completed")
    assert dispatch_once(sim_app) == []  # 1 + 2 + 1 = 4: one free, two reserved
    end_call(sim_app, web)
    assert dispatch_once(sim_app) == ["placed"]  # 1 + 1 + 1 = 3 = 5 - 2
    assert _live_campaign_calls(sim_app, campaign["id"]) == 2


def test_agency_without_a_limit_counts_nothing(sim_app, carrier_sim):
    seeded = seed_agency(sim_app)
    for _ in range(3):
        live_call(sim_app, seeded.agency_id)
    create_campaign(sim_app.test_client(), seeded, CONTACTS[:6])
    assert dispatch_once(sim_app) == ["placed"] * 6


def test_reserved_slots_hold_with_concurrent_dispatchers(app):
    """Three dispatchers (threads, own sessions) claim from two campaigns of one agency at
    once, with a web call live: the agency row is locked while its calls and claims are
    counted, so together they take exactly 5 - 2 - 1 = 2 slots."""
    seeded = seed_agency(app)
    set_capacity(app, seeded.agency_id, max_concurrent_calls=5, reserved_inbound=2)
    live_call(app, seeded.agency_id)
    client = app.test_client()
    campaigns = [create_campaign(client, seeded, CONTACTS[i * 10:(i + 1) * 10])["id"] for i in range(2)]
    claimed = claim_concurrently(app, campaigns)
    assert len(claimed) == 2 == len(set(claimed))
    with app.extensions["telephony.db"].session() as session:
        assert capacity.campaign_slots(session, seeded.agency_id) == 0


# -- Ultravox refusing a campaign dial for concurrency ------------------------------------------


def test_ultravox_429_requeues_the_contact(sim_app, ultravox_sim, carrier_sim):
    """The Ultravox account is full (the simulator's limit): the dial is put back in the
    queue without using an attempt, the campaign backs off, nothing reaches the carrier;
    once a slot frees the contact is dialled."""
    seeded = seed_agency(sim_app)
    requests.post(f"{ultravox_sim.base_url}/_sim/config", json={"max_concurrent_calls": 2}, timeout=5)
    campaign = create_campaign(sim_app.test_client(), seeded, CONTACTS[:3])
    assert sorted(dispatch_once(sim_app)) == ["aborted", "placed", "placed"]
    refused = [a for a in attempts(sim_app, campaign["id"]) if a.state == "aborted"]
    assert len(refused) == 1 and "429" in refused[0].error
    waiting = [c for c in contacts_by_phone(sim_app, campaign["id"]).values() if c.state == "queued"]
    assert len(waiting) == 1 and waiting[0].attempts == 0 and waiting[0].last_outcome is None
    assert len(dial_requests(carrier_sim)) == 2

    placed = [a for a in attempts(sim_app, campaign["id"]) if a.state == "placed"]
    sim_calls = requests.get(f"{ultravox_sim.base_url}/_sim/calls", timeout=5).json()["calls"]
    ended = next(c["call"]["callId"] for c in sim_calls
                 if c["call"]["metadata"]["telephony.call_id"] == str(placed[0].call_id))
    requests.post(f"{ultravox_sim.base_url}/_sim/calls/{ended}/end", json={}, timeout=5).raise_for_status()
    twilio_status(sim_app.test_client(), placed[0].call_id, placed[0].carrier_call_id, "completed")
    assert dispatch_once(sim_app, now=utcnow() + timedelta(seconds=10)) == ["placed"]
    assert {c.state for c in contacts_by_phone(sim_app, campaign["id"]).values()} == {"dialing", "completed"}


# -- the simulator's limit --------------------------------------------------------------------


def test_ultravox_simulator_refuses_calls_above_its_limit(ultravox_sim):
    base = ultravox_sim.base_url
    body = {"systemPrompt": "hi", "medium": {"twilio": {}}}
    assert requests.post(f"{base}/_sim/config", json={"max_concurrent_calls": 0}, timeout=5).status_code == 400
    assert requests.post(f"{base}/_sim/config", json={"max_concurrent_calls": 2}, timeout=5).status_code == 200
    first = requests.post(f"{base}/api/calls", json=body, timeout=5).json()
    requests.post(f"{base}/api/calls", json=body, timeout=5).raise_for_status()
    refused = requests.post(f"{base}/api/calls", json=body, timeout=5)
    assert refused.status_code == 429 and "Concurrency limit" in refused.json()["detail"]
    requests.post(f"{base}/_sim/calls/{first['callId']}/end", json={}, timeout=5).raise_for_status()
    assert requests.post(f"{base}/api/calls", json=body, timeout=5).status_code == 201
    requests.post(f"{base}/_sim/config", json={"max_concurrent_calls": None}, timeout=5)
    assert requests.post(f"{base}/api/calls", json=body, timeout=5).status_code == 201


def test_hold_state_is_bound_to_its_call(app):
    with app.app_context():
        fresh = capacity.Waiting(since=int(utcnow().timestamp()), round=1)
        url = capacity.redirect_url("https://voice.example.test/webhooks/twilio/voice?x=1", "twilio", "CA1", fresh)
        assert url.startswith("https://voice.example.test/webhooks/twilio/voice?hold_since=")
        assert capacity.waiting_from_url(url, "twilio", "CA1") == fresh
        assert capacity.waiting_from_url(url, "twilio", "CA2") is None  # another call's
        assert capacity.waiting_from_url(url, "plivo", "CA1") is None
        assert capacity.waiting_from_url(url.replace("hold_round=1", "hold_round=0"), "twilio", "CA1") is None
        stale = capacity.Waiting(since=fresh.since - capacity.HOLD_STATE_TTL_SECONDS - 1, round=1)
        assert capacity.waiting_from_url(capacity.redirect_url(url, "twilio", "CA1", stale), "twilio", "CA1") is None
        state = capacity.hold_state("telnyx", "v3:abc", fresh, "sip:alice@example.com", "+14155550100")
        assert capacity.waiting_from_state(state, "telnyx", "v3:abc") == (fresh, "sip:alice@example.com",
                                                                          "+14155550100")
        assert capacity.waiting_from_state(state.replace("+14155550100", "+14155550101"), "telnyx", "v3:abc") is None


def test_capacity_routes_are_in_the_openapi_description(client):
    paths = client.get("/openapi.json").json["paths"]
    assert {"get", "patch"} <= set(paths["/api/v1/capacity"])
    schemas = client.get("/openapi.json").json["components"]["schemas"]
    assert {"max_concurrent_calls", "reserved_inbound", "inbound_wait_seconds"} <= set(
        schemas["CapacityPatch"]["properties"])


def test_hold_audio_url_must_be_a_url(tmp_path):
    from telephony.config import Config, ConfigError

    env = {"DATABASE_URL": f"sqlite:///{tmp_path}/x.db", "HOLD_AUDIO_URL": "hold.mp3"}
    try:
        Config.from_env(env, instance_path=tmp_path)
    except ConfigError as exc:
        assert "HOLD_AUDIO_URL" in str(exc)
    else:
        raise AssertionError("a bad HOLD_AUDIO_URL was accepted")
    good = Config.from_env({**env, "HOLD_AUDIO_URL": "https://cdn.example.com/hold.mp3"}, instance_path=tmp_path)
    assert good.hold_audio_url == "https://cdn.example.com/hold.mp3"
    assert Config.from_env({"DATABASE_URL": env["DATABASE_URL"]}, instance_path=tmp_path).hold_audio_url == ""
