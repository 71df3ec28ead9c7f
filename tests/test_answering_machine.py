"""Answering machines, end to end per carrier: the service dials through the carrier
simulator, which answers with a human, a machine, a fax or "unknown" per callee number
(sim/amd.py) and posts the carrier's signed callbacks to the service served on loopback."""
from __future__ import annotations

import uuid
from datetime import timedelta
from urllib.parse import urlencode

import pytest
import requests
from sqlalchemy import select
from werkzeug.datastructures import Headers, MultiDict

from telephony import answering_machine as amd
from telephony.carriers.base import WebhookRequest
from telephony.carriers.telnyx_call_control import TelnyxCallControl
from telephony.models import Call, DialAttempt, EventDelivery, utcnow
from telephony.sim.common import serve_in_thread
from tests.inbound_helpers import PLIVO_ID, TELNYX_API_KEY, plivo_headers, telnyx_headers, twilio_signature
from tests.outbound_helpers import (
    AGENT_UV_ID,
    CALLEE,
    NUMBERS,
    PUBLIC_BASE,
    attempts,
    contacts_by_phone,
    create_campaign,
    dispatch_once,
    seed_agency,
    sim_calls,
    twilio_status,
)

CARRIERS = ("twilio", "telnyx", "plivo")
MESSAGE = "Hi, this is Acme Dental about your appointment. Please call us back."


@pytest.fixture
def world(sim_app, carrier_sim):
    """Our app served on loopback; the carrier simulator delivers its callbacks there and
    signs Telnyx events with its own key, which the agencies store as their public key."""
    with serve_in_thread(sim_app) as ours:
        amd_state = _sim(carrier_sim, "/_sim/amd", {"deliver_to": ours.base_url})
        yield {"app": sim_app, "sim": carrier_sim, "telnyx_public_key": amd_state["telnyx_public_key"]}


def _sim(carrier_sim, path: str, body: dict | None = None) -> dict:
    response = requests.post(f"{carrier_sim.base_url}{path}", json=body or {}, timeout=10)
    response.raise_for_status()
    return response.json()


def _seed(world, carrier: str, name: str = "Acme", number: str | None = None):
    seeded = seed_agency(world["app"], carrier=carrier, name=name, number=number)
    app = world["app"]
    with app.app_context(), app.extensions["telephony.db"].session() as session:
        app.extensions["telephony.credentials"].set(session, seeded.agency_id, "telnyx", {
            "api_key": TELNYX_API_KEY, "public_key": world["telnyx_public_key"], "connection_id": "conn-1"})
    return seeded


def _verdict(world, number: str, verdict: str) -> None:
    _sim(world["sim"], "/_sim/amd", {"verdicts": {number: verdict}})


def _deliver(world) -> list[dict]:
    return _sim(world["sim"], "/_sim/amd/deliver")["delivered"]


def _place(world, seeded, carrier: str, *, to: str = CALLEE, answering_machine: dict | None = None) -> uuid.UUID:
    body = {"agent_id": AGENT_UV_ID, "to": to, "from": NUMBERS[carrier]}
    if answering_machine is not None:
        body["answering_machine"] = answering_machine
    response = world["app"].test_client().post("/api/v1/calls", json=body, headers=seeded.headers())
    assert response.status_code == 201, response.json
    return uuid.UUID(response.json["call_id"])


def _call(world, call_id) -> Call:
    with world["app"].extensions["telephony.db"].session() as session:
        call = session.get(Call, call_id)
        assert call is not None
        session.expunge(call)
        return call


def _carrier_call(world, carrier: str) -> dict:
    [placed] = sim_calls(world["sim"], carrier)
    return placed


def _commands(world, carrier: str) -> list[str]:
    """What the service asked the carrier to do to the live call, in order."""
    updates = _carrier_call(world, carrier)["updates"]
    if carrier == "twilio":
        return ["hangup" if u["params"].get("Status") == "completed" else "twiml" for u in updates]
    return [u["action"] for u in updates]


def _events(world, event_type: str) -> int:
    with world["app"].extensions["telephony.db"].session() as session:
        return len(session.scalars(select(EventDelivery).where(EventDelivery.event_type == event_type)).all())


# -- every dial asks for asynchronous detection ---------------------------------------------------


@pytest.mark.parametrize("carrier", CARRIERS)
def test_every_dial_asks_the_carrier_for_asynchronous_detection(world, carrier):
    seeded = _seed(world, carrier)
    call_id = _place(world, seeded, carrier)
    params = _carrier_call(world, carrier)["params"]
    if carrier == "twilio":
        assert params["MachineDetection"] == "DetectMessageEnd" and params["AsyncAmd"] == "true"
        assert params["AsyncAmdStatusCallback"] == f"{PUBLIC_BASE}/webhooks/outbound/twilio/amd/{call_id}"
        assert "<Stream" in params["Twiml"]  # the agent is connected at once, not after the verdict
    elif carrier == "telnyx":
        assert params["answering_machine_detection"] == "premium"
        assert params["webhook_url"] == f"{PUBLIC_BASE}/webhooks/outbound/telnyx/call-control/{call_id}"
        assert params["stream_url"]
    else:
        assert params["machine_detection"] == "true"
        assert params["machine_detection_url"] == f"{PUBLIC_BASE}/webhooks/outbound/plivo/amd/{call_id}"


# -- single calls: each verdict, each policy -------------------------------------------------------


@pytest.mark.parametrize("carrier", CARRIERS)
def test_a_human_is_recorded_and_the_agent_talks_on(world, carrier):
    seeded = _seed(world, carrier)
    _verdict(world, CALLEE, "human")
    call_id = _place(world, seeded, carrier, answering_machine={"on_machine": "hangup"})
    delivered = _deliver(world)
    assert [d["status"] for d in delivered] == [204 if carrier != "telnyx" else 200]
    call = _call(world, call_id)
    assert (call.answered_by, call.machine_action, call.status) == ("human", None, "in-progress")
    assert _commands(world, carrier) == []
    assert _events(world, "call.answered_by") == 0  # no endpoint subscribed; see the event test below
    history = world["app"].test_client().get(f"/api/v1/calls/{call_id}", headers=seeded.headers()).json
    assert history["answered_by"] == "human" and history["answered_by_detail"]


@pytest.mark.parametrize("carrier", CARRIERS)
def test_a_machine_is_hung_up_on(world, carrier):
    seeded = _seed(world, carrier)
    _verdict(world, CALLEE, "machine")
    call_id = _place(world, seeded, carrier, answering_machine={"on_machine": "hangup"})
    _deliver(world)
    call = _call(world, call_id)
    assert (call.answered_by, call.machine_action) == ("machine", "hangup")
    assert _commands(world, carrier) == ["hangup"]  # Twilio Status=completed, Telnyx hangup, Plivo DELETE
    assert call.status == "completed"  # the carrier's end-of-call report followed the hang-up
    assert call.answered_by_detail == {"twilio": "machine_end_beep", "telnyx": "machine",
                                       "plivo": "Machine=true"}[carrier]


@pytest.mark.parametrize("carrier", CARRIERS)
def test_a_machine_gets_the_message_after_the_beep(world, carrier):
    seeded = _seed(world, carrier)
    _verdict(world, CALLEE, "machine")
    call_id = _place(world, seeded, carrier,
                     answering_machine={"on_machine": "leave_message", "message": {"text": MESSAGE}})
    _deliver(world)
    call = _call(world, call_id)
    assert (call.answered_by, call.machine_action, call.status) == ("machine", "message", "completed")
    updates = _carrier_call(world, carrier)["updates"]
    if carrier == "twilio":
        [update] = updates
        assert f"<Say>{MESSAGE}</Say><Hangup />" in update["params"]["Twiml"]  # replaces the stream
    elif carrier == "telnyx":
        # stream stopped, message spoken once the greeting ended, hung up once it was spoken
        assert [u["action"] for u in updates] == ["streaming_stop", "speak", "hangup"]
        assert updates[1]["params"]["payload"] == MESSAGE
    else:
        assert [u["action"] for u in updates] == ["transfer", "xml"]
        xml = updates[1]["xml"]
        assert 'beep="true"' in xml and f"<Speak>{MESSAGE}</Speak>" in xml and "<Hangup/>" in xml


@pytest.mark.parametrize("carrier", CARRIERS)
def test_an_audio_message_is_played(world, carrier):
    seeded = _seed(world, carrier)
    _verdict(world, CALLEE, "machine")
    audio = "https://cdn.example.test/voicemail.mp3"
    _place(world, seeded, carrier, answering_machine={"on_machine": "leave_message", "message": {"audio_url": audio}})
    _deliver(world)
    updates = _carrier_call(world, carrier)["updates"]
    if carrier == "twilio":
        assert f"<Play>{audio}</Play>" in updates[0]["params"]["Twiml"]
    elif carrier == "telnyx":
        assert updates[1]["action"] == "playback_start" and updates[1]["params"]["audio_url"] == audio
        assert updates[-1]["action"] == "hangup"
    else:
        assert f"<Play>{audio}</Play>" in updates[1]["xml"]


@pytest.mark.parametrize("carrier", CARRIERS)
def test_continue_lets_the_agent_talk_to_the_machine(world, carrier):
    seeded = _seed(world, carrier)
    _verdict(world, CALLEE, "machine")
    call_id = _place(world, seeded, carrier)  # a single call's default policy is continue
    _deliver(world)
    call = _call(world, call_id)
    assert (call.answered_by, call.machine_action, call.status) == ("machine", "continue", "in-progress")
    assert _carrier_call(world, carrier)["updates"] == []


@pytest.mark.parametrize("carrier", CARRIERS)
def test_a_fax_is_hung_up_on_whatever_the_policy(world, carrier):
    seeded = _seed(world, carrier)
    _verdict(world, CALLEE, "fax")
    call_id = _place(world, seeded, carrier, answering_machine={"on_machine": "continue"})
    _deliver(world)
    call = _call(world, call_id)
    if carrier == "plivo":
        # Plivo tells no fax from a machine: the machine policy (continue) applies.
        assert (call.answered_by, call.machine_action) == ("machine", "continue")
        return
    assert (call.answered_by, call.machine_action, call.status) == ("fax", "hangup", "completed")
    assert call.answered_by_detail == {"twilio": "fax", "telnyx": "fax_detected"}[carrier]


@pytest.mark.parametrize("carrier", CARRIERS)
def test_unknown_counts_as_a_person(world, carrier):
    seeded = _seed(world, carrier)
    _verdict(world, CALLEE, "unknown")
    call_id = _place(world, seeded, carrier, answering_machine={"on_machine": "hangup"})
    delivered = _deliver(world)
    call = _call(world, call_id)
    if carrier == "plivo":  # Plivo has no "unknown": it sends nothing
        assert delivered == [] and call.answered_by is None
    else:
        assert (call.answered_by, call.machine_action) == ("unknown", None)
    assert call.status != "completed" and _carrier_call(world, carrier)["updates"] == []


# -- signed, idempotent, ordered --------------------------------------------------------------------


@pytest.mark.parametrize("carrier", CARRIERS)
def test_a_replayed_verdict_changes_nothing(world, carrier):
    seeded = _seed(world, carrier)
    _verdict(world, CALLEE, "machine")
    call_id = _place(world, seeded, carrier, answering_machine={"on_machine": "hangup"})
    _deliver(world)
    before = _call(world, call_id)
    updates = _carrier_call(world, carrier)["updates"]
    statuses = _sim(world["sim"], "/_sim/amd/replay")["statuses"]
    assert statuses and all(200 <= s < 300 for s in statuses)  # accepted (signed), and...
    after = _call(world, call_id)
    assert (after.answered_by, after.machine_action, after.status) == (
        before.answered_by, before.machine_action, before.status)
    assert _carrier_call(world, carrier)["updates"] == updates  # ...no second command
    assert _deliver(world) == []


def _forged_amd(carrier: str, call_id, carrier_call_id: str, verdict: str):
    """A verdict for the call, signed with credentials that are not the agency's."""
    if carrier == "twilio":
        path = f"/webhooks/outbound/twilio/amd/{call_id}"
        form = {"CallSid": carrier_call_id, "AnsweredBy": verdict, "AccountSid": "AC" + "0" * 32}
        return path, urlencode(form), {"X-Twilio-Signature": twilio_signature(PUBLIC_BASE + path, form, "not-it"),
                                       "Content-Type": "application/x-www-form-urlencoded"}
    if carrier == "plivo":
        path = f"/webhooks/outbound/plivo/amd/{call_id}"
        form = {"CallUUID": carrier_call_id, "Machine": "true" if verdict != "human" else "false"}
        return path, urlencode(form), {**plivo_headers(PUBLIC_BASE + path, form, "not-the-token"),
                                       "Content-Type": "application/x-www-form-urlencoded"}
    path = f"/webhooks/outbound/telnyx/call-control/{call_id}"
    body = ('{"data":{"id":"%s","event_type":"call.machine.premium.detection.ended","payload":'
            '{"call_control_id":"%s","result":"%s"}}}' % (uuid.uuid4(), carrier_call_id, verdict)).encode()
    return path, body, {**telnyx_headers(body), "Content-Type": "application/json"}  # the tests' key, not the sim's


@pytest.mark.parametrize("carrier", CARRIERS)
def test_a_forged_verdict_changes_nothing(world, carrier):
    seeded = _seed(world, carrier)
    call_id = _place(world, seeded, carrier, answering_machine={"on_machine": "hangup"})
    carrier_call_id = _call(world, call_id).carrier_call_id
    path, body, headers = _forged_amd(carrier, call_id, carrier_call_id, "machine")
    response = world["app"].test_client().post(path, data=body, headers=headers)
    assert response.status_code == 403
    call = _call(world, call_id)
    assert (call.answered_by, call.machine_action) == (None, None)
    assert _carrier_call(world, carrier)["updates"] == []


def test_another_agencys_credentials_cannot_judge_a_call(world):
    """Agency B's valid Twilio signature does not verify a callback about agency A's call."""
    a, b = _seed(world, "twilio", "A"), _seed(world, "twilio", "B", number="+14155550177")
    app = world["app"]
    with app.app_context(), app.extensions["telephony.db"].session() as session:
        app.extensions["telephony.credentials"].set(session, b.agency_id, "twilio", {
            "account_sid": "AC" + "d" * 32, "auth_token": "agency-b-token-000000000000"})
    call_id = _place(world, a, "twilio", answering_machine={"on_machine": "hangup"})
    path = f"/webhooks/outbound/twilio/amd/{call_id}"
    form = {"CallSid": _call(world, call_id).carrier_call_id, "AnsweredBy": "machine_end_beep"}
    response = app.test_client().post(path, data=urlencode(form), headers={
        "X-Twilio-Signature": twilio_signature(PUBLIC_BASE + path, form, "agency-b-token-000000000000"),
        "Content-Type": "application/x-www-form-urlencoded"})
    assert response.status_code == 403 and _call(world, call_id).answered_by is None
    # ...and agency B cannot read the call either.
    assert app.test_client().get(f"/api/v1/calls/{call_id}", headers=b.headers()).status_code == 404


def test_telnyx_greeting_end_alone_means_a_machine_whose_greeting_is_over(world):
    """Telnyx premium: a beep heard before the verdict is reported alone, as greeting.ended."""
    seeded = seed_agency(world["app"], carrier="telnyx")  # the tests' Telnyx key signs here
    call_id = _place(world, seeded, "telnyx",
                     answering_machine={"on_machine": "leave_message", "message": {"text": MESSAGE}})
    path = f"/webhooks/outbound/telnyx/call-control/{call_id}"
    body = ('{"data":{"id":"%s","event_type":"call.machine.premium.greeting.ended","payload":'
            '{"call_control_id":"%s","result":"beep_detected"}}}'
            % (uuid.uuid4(), _call(world, call_id).carrier_call_id)).encode()
    response = world["app"].test_client().post(path, data=body, headers={**telnyx_headers(body),
                                                                         "Content-Type": "application/json"})
    assert response.status_code == 200
    call = _call(world, call_id)
    assert (call.answered_by, call.answered_by_detail, call.machine_action) == ("machine", "beep_detected", "message")
    assert [u["action"] for u in _carrier_call(world, "telnyx")["updates"]] == ["streaming_stop", "speak"]


def test_a_verdict_after_the_call_ended_is_recorded_but_not_acted_on(world):
    seeded = _seed(world, "twilio")
    _verdict(world, CALLEE, "machine")
    call_id = _place(world, seeded, "twilio", answering_machine={"on_machine": "hangup"})
    client = world["app"].test_client()
    assert twilio_status(client, call_id, _call(world, call_id).carrier_call_id, "completed").status_code == 204
    _deliver(world)
    call = _call(world, call_id)
    assert (call.status, call.answered_by, call.machine_action) == ("completed", "machine", None)
    assert _carrier_call(world, "twilio")["updates"] == []


def test_the_verdict_is_an_agency_event_and_in_call_events(world):
    seeded = _seed(world, "twilio")
    client = world["app"].test_client()
    created = client.post("/api/v1/event-endpoints", headers=seeded.headers(), json={
        "url": "https://hooks.example.com/events", "events": ["call.answered_by", "call.ended", "call.failed"]})
    assert created.status_code == 201, created.json
    _verdict(world, CALLEE, "machine")
    _place(world, seeded, "twilio", answering_machine={"on_machine": "hangup"})
    _deliver(world)
    _sim(world["sim"], "/_sim/amd/replay")
    with world["app"].extensions["telephony.db"].session() as session:
        [delivery] = session.scalars(select(EventDelivery).where(EventDelivery.event_type == "call.answered_by")).all()
        assert '"answered_by":"machine"' in delivery.payload and '"machine_action":"hangup"' in delivery.payload


# -- input -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("machine, field", [
    ({"on_machine": "leave_message"}, "answering_machine.message"),
    ({"on_machine": "leave_message", "message": {"text": "hi", "audio_url": "https://x.test/a.mp3"}}, "message"),
    ({"on_machine": "leave_message", "message": {"audio_url": "not a url"}}, "answering_machine.message.audio_url"),
    ({"on_machine": "shout"}, "answering_machine.on_machine"),
])
def test_a_policy_that_cannot_be_carried_out_is_refused(world, machine, field):
    seeded = _seed(world, "twilio")
    for path, body in (("/api/v1/calls", {"to": CALLEE}), ("/api/v1/campaigns", {"name": "x", "contacts": []})):
        body.update({"agent_id": AGENT_UV_ID, "answering_machine": machine})
        response = world["app"].test_client().post(path, json=body, headers=seeded.headers())
        assert response.status_code == 400, response.json
        assert field in response.json["fields"] or field in response.json["error"], response.json
    assert sim_calls(world["sim"]) == []


# -- campaigns -----------------------------------------------------------------------------------------


def _dispatch_and_deliver(world, *, now=None) -> list[str]:
    placed = dispatch_once(world["app"], now=now)
    _deliver(world)
    return placed


@pytest.mark.parametrize("carrier", CARRIERS)
def test_campaign_voicemail_is_retried_by_its_own_rule(world, carrier):
    seeded = _seed(world, carrier)
    _verdict(world, CALLEE, "machine")
    # busy / no-answer would allow one attempt only; voicemail has its own count (2 retries, 4 h apart)
    campaign = create_campaign(world["app"].test_client(), seeded, [{"phone": CALLEE}],
                               retry={"on": ["busy", "no-answer"], "max_attempts": 1, "delay_seconds": 0})
    assert campaign["answering_machine"] == {"on_machine": "hangup", "message": None,
                                             "retry": {"max_retries": 2, "delay_seconds": 14400}}
    at = utcnow()
    for number in (1, 2, 3):
        assert _dispatch_and_deliver(world, now=at) == ["placed"]
        contact = contacts_by_phone(world["app"], campaign["id"])[CALLEE]
        last = attempts(world["app"], campaign["id"])[-1]
        assert (last.attempt_number, last.state, last.outcome, last.answered_by) == (
            number, "ended", "voicemail", "machine")
        assert contact.last_outcome == "voicemail"
        if number < 3:
            assert contact.state == "queued"
            assert contact.next_attempt_at >= utcnow() + timedelta(hours=3, minutes=59)
            # not before the delay
            assert dispatch_once(world["app"], now=contact.next_attempt_at - timedelta(minutes=1)) == []
            at = contact.next_attempt_at + timedelta(seconds=1)
    assert contact.state == "failed" and contact.attempts == 3
    assert dispatch_once(world["app"], now=at + timedelta(days=1)) == []


@pytest.mark.parametrize("carrier", CARRIERS)
def test_campaign_progress_counts_humans_machines_and_messages_left(world, carrier):
    seeded = _seed(world, carrier)
    human, machine, fax = "+14155550131", "+14155550132", "+14155550133"
    for number, verdict in ((human, "human"), (machine, "machine"), (fax, "fax")):
        _verdict(world, number, verdict)
    campaign = create_campaign(world["app"].test_client(), seeded,
                               [{"phone": human}, {"phone": machine}, {"phone": fax}],
                               answering_machine={"on_machine": "leave_message", "message": {"text": MESSAGE}})
    assert sorted(_dispatch_and_deliver(world)) == ["placed"] * 3
    got = world["app"].test_client().get(f"/api/v1/campaigns/{campaign['id']}", headers=seeded.headers()).json
    expected_fax = 0 if carrier == "plivo" else 1  # Plivo reports a fax as a machine
    assert got["progress"]["answered_by"] == {"human": 1, "machine": 3 - 1 - expected_fax, "fax": expected_fax,
                                              "unknown": 0, "messages_left": 2 - expected_fax}
    contacts = contacts_by_phone(world["app"], campaign["id"])
    assert (contacts[machine].state, contacts[machine].last_outcome) == ("completed", "voicemail_left")
    if expected_fax:
        assert (contacts[fax].state, contacts[fax].last_outcome) == ("failed", "fax")
    assert contacts[human].state == "dialing"  # the agent is talking with the person


def test_campaign_continue_counts_the_call_as_answered(world):
    seeded = _seed(world, "twilio")
    _verdict(world, CALLEE, "machine")
    campaign = create_campaign(world["app"].test_client(), seeded, [{"phone": CALLEE}],
                               answering_machine={"on_machine": "continue"})
    _dispatch_and_deliver(world)
    [attempt] = attempts(world["app"], campaign["id"])
    assert attempt.answered_by == "machine" and _carrier_call(world, "twilio")["updates"] == []
    twilio_status(world["app"].test_client(), attempt.call_id, attempt.carrier_call_id, "completed")
    contact = contacts_by_phone(world["app"], campaign["id"])[CALLEE]
    assert (contact.state, contact.last_outcome) == ("completed", "completed")


def test_attempt_rows_keep_answered_by(world):
    seeded = _seed(world, "telnyx")
    _verdict(world, CALLEE, "human")
    campaign = create_campaign(world["app"].test_client(), seeded, [{"phone": CALLEE}])
    _dispatch_and_deliver(world)
    with world["app"].extensions["telephony.db"].session() as session:
        [attempt] = session.scalars(select(DialAttempt).where(
            DialAttempt.campaign_id == uuid.UUID(campaign["id"]))).all()
        assert attempt.answered_by == "human" and attempt.state == "placed"


def test_plivo_voicemail_xml_needs_the_signature(world):
    seeded = _seed(world, "plivo")
    call_id = _place(world, seeded, "plivo",
                     answering_machine={"on_machine": "leave_message", "message": {"text": MESSAGE}})
    path = f"/webhooks/outbound/plivo/voicemail/{call_id}"
    form = {"CallUUID": _call(world, call_id).carrier_call_id}
    response = world["app"].test_client().post(path, data=urlencode(form), headers={
        **plivo_headers(PUBLIC_BASE + path, form, "not-the-token"),
        "Content-Type": "application/x-www-form-urlencoded"})
    assert response.status_code == 403
    assert PLIVO_ID  # the agency's own token signs the real fetch (test_a_machine_gets_the_message_after_the_beep)


# -- the rules, without a network --------------------------------------------------------------------


@pytest.mark.parametrize("policy, answered_by, has_message, greeting_follows, action", [
    ("hangup", "human", False, False, None),
    ("hangup", "unknown", False, False, None),
    ("continue", "fax", False, False, "hangup"),
    ("hangup", "machine", False, False, "hangup"),
    ("continue", "machine", False, False, "continue"),
    ("leave_message", "machine", True, False, "message"),
    ("leave_message", "machine", True, True, "wait_beep"),
    ("leave_message", "machine", False, False, "hangup"),  # nothing to leave
])
def test_what_a_verdict_leads_to(policy, answered_by, has_message, greeting_follows, action):
    assert amd.decide(policy, answered_by, has_message=has_message, greeting_follows=greeting_follows) == action


@pytest.mark.parametrize("status, answered_by, action, outcome", [
    ("completed", "human", None, "completed"),
    ("busy", None, None, "busy"),
    ("completed", "machine", "hangup", "voicemail"),
    ("completed", "fax", "hangup", "fax"),
    ("completed", "machine", "wait_beep", "voicemail"),
    ("completed", "machine", "message", "voicemail_left"),
    ("completed", "machine", "continue", "completed"),
])
def test_the_outcome_of_an_attempt(status, answered_by, action, outcome):
    assert amd.attempt_outcome(status, answered_by, action) == outcome


def test_telnyx_standard_detection_events_are_understood():
    def parse(event_type: str, result: str):
        body = ('{"data":{"id":"e1","event_type":"%s","payload":{"call_control_id":"v3:x","result":"%s"}}}'
                % (event_type, result)).encode()
        return TelnyxCallControl().parse_machine_detection(
            WebhookRequest("POST", "https://x.test/", Headers(), MultiDict(), body))

    verdict = parse("call.machine.detection.ended", "machine")
    assert (verdict.answered_by, verdict.greeting_follows, verdict.event_id) == ("machine", True, "e1")
    assert parse("call.machine.detection.ended", "not_sure").answered_by == "unknown"
    greeting = parse("call.machine.greeting.ended", "beep_detected")
    assert greeting.answered_by is None and greeting.greeting_ended
    assert parse("call.answered", "") is None
