"""Inbound callers who find every slot of the agency's Ultravox plan taken are held, not
dropped: hold audio (or a pause), then the carrier comes back to us with a signed hold
state, until a slot frees (connected) or inbound_wait_seconds have passed (the fallback).
Per carrier: Twilio, Telnyx TeXML and Plivo (XML + <Redirect>), Telnyx Call Control
(answered, hold audio, the next try on its end)."""
from __future__ import annotations

import base64
import json
import time
import uuid
import xml.etree.ElementTree as ET
from typing import Any
from urllib.parse import urlencode

import pytest
import requests
import responses
from plivo.utils.signature_v3 import construct_post_url, get_signature_v3

from telephony.carriers.telnyx_call_control import HOLD_REMINDER
from telephony.models import CallDirection
from telephony.services import capacity
from telephony.services import inbound as inbound_service
from tests.capacity_helpers import end_call, live_call, set_capacity
from tests.inbound_helpers import (
    AGENT_UV_ID,
    CALLER,
    FALLBACK,
    JOIN_URL,
    NUMBER,
    PLIVO_TOKEN,
    PUBLIC_BASE,
    ULTRAVOX_BASE,
    CarrierCase,
    PlivoCase,
    TelnyxTexmlCase,
    TwilioCase,
    calls,
    parse_answer,
    seed,
    sim_calls_for,
)
from tests.test_inbound_sql_budget import _split, _summary, counted
from tests.test_inbound_telnyx import _call_control_id, _commands, _event, _post

CASES = [TwilioCase(), TelnyxTexmlCase(), PlivoCase()]


# -- helpers ---------------------------------------------------------------------------------


def _hold(xml: str) -> dict[str, Any]:
    """The parts of a hold answer (TwiML, TeXML or Plivo XML)."""
    root = ET.fromstring(xml)
    assert root.tag == "Response", xml
    spoken = root.find("./Say") if root.find("./Say") is not None else root.find("./Speak")
    pause = root.find("./Pause") if root.find("./Pause") is not None else root.find("./Wait")
    play, redirect = root.find("./Play"), root.find("./Redirect")
    assert redirect is not None and root.find("./Hangup") is None, xml
    assert [child.tag for child in root][-1] == "Redirect", xml  # fetched once the audio before it ends
    return {"message": spoken.text if spoken is not None else None,
            "play": play.text if play is not None else None,
            "pause": int(pause.attrib["length"]) if pause is not None else None,
            "redirect": (redirect.text or "").strip(), "method": redirect.attrib.get("method")}


def _post_to(case: CarrierCase, client: Any, url: str, form: dict[str, str]) -> Any:
    """POST to a URL we handed the carrier (PUBLIC_BASE + path + query), signed as the
    carrier signs that URL."""
    assert url.startswith(PUBLIC_BASE + case.voice_path + "?"), url
    path = url[len(PUBLIC_BASE):]
    body = urlencode(form).encode()
    if case.name == "plivo":
        nonce = "98765432109876543210"
        signed = construct_post_url(PUBLIC_BASE + path, dict(form)).decode()
        signature = get_signature_v3(PLIVO_TOKEN, signed, nonce).decode()
        headers = {"X-Plivo-Signature-V3": signature, "X-Plivo-Signature-V3-Nonce": nonce}
    else:
        headers = case.sign(path, form, body)
    return client.post(path, data=body, content_type="application/x-www-form-urlencoded", headers=headers)


def _uv_calls(rsps_calls) -> int:
    return len([c for c in rsps_calls if c.request.url.startswith(ULTRAVOX_BASE)])


def _answer_with(rsps: responses.RequestsMock, *statuses: int) -> None:
    """Ultravox answers the agent-call requests with these statuses in turn (then 201)."""
    queue = list(statuses)

    def callback(request):
        status = queue.pop(0) if queue else 201
        if status != 201:
            return status, {"Retry-After": "1"}, json.dumps({"detail": "Concurrency limit reached."})
        body = json.loads(request.body)
        return 201, {}, json.dumps({"callId": str(uuid.uuid4()), "joinUrl": JOIN_URL,
                                    "created": "2026-12-01T10:00:00.000000Z", "metadata": body["metadata"]})

    rsps.add_callback(responses.POST, f"{ULTRAVOX_BASE}/api/agents/{AGENT_UV_ID}/calls", callback=callback)


# -- XML carriers ------------------------------------------------------------------------------


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_caller_at_capacity_is_held_then_connected_when_a_slot_frees(app, client, case):
    seeded = seed(app, carrier=case.name, fallback=FALLBACK)
    set_capacity(app, seeded.agency_id, max_concurrent_calls=1)
    other = live_call(app, seeded.agency_id, direction=CallDirection.outbound)
    call_sid = case.call_id()
    form = case.inbound_form(call_sid)
    with responses.RequestsMock(assert_all_requests_are_fired=False) as rsps:
        _answer_with(rsps)
        first = case.post(client, case.voice_path, form)
        assert first.status_code == 200 and first.mimetype == "text/xml"
        hold = _hold(first.get_data(as_text=True))
        assert hold["message"] == inbound_service.HOLD_MESSAGE
        assert hold["pause"] == inbound_service.HOLD_PAUSE_SECONDS and hold["play"] is None
        assert hold["method"] == "POST" and "hold_round=1" in hold["redirect"]
        assert _uv_calls(rsps.calls) == 0 and [c.id for c in calls(app)] == [other]  # nothing written

        # Still full: held again, without the greeting; the state moves on.
        second = _hold(_post_to(case, client, hold["redirect"], form).get_data(as_text=True))
        assert second["message"] is None and "hold_round=2" in second["redirect"]
        assert _uv_calls(rsps.calls) == 0

        end_call(app, other)
        connected = _post_to(case, client, second["redirect"], form)
        assert parse_answer(connected.get_data(as_text=True)) == ("stream", JOIN_URL)
        assert _uv_calls(rsps.calls) == 1
        # The carrier repeats that request: the same answer, no second Ultravox call.
        again = _post_to(case, client, second["redirect"], form)
        assert again.get_data() == connected.get_data() and _uv_calls(rsps.calls) == 1
    [call] = [c for c in calls(app) if c.carrier_call_id == call_sid]
    assert call.join_url == JOIN_URL and call.status == "ringing"


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_ultravox_429_holds_the_caller_and_the_retry_connects_once(app, client, case):
    """No limit set: Ultravox's own 429 holds the caller. The claim is given back so the
    retry claims again; the retry creates exactly one Ultravox call, and a repeat of it none."""
    seed(app, carrier=case.name, fallback=FALLBACK)
    call_sid = case.call_id()
    form = case.inbound_form(call_sid)
    with responses.RequestsMock() as rsps:
        _answer_with(rsps, 429)
        held = case.post(client, case.voice_path, form)
        hold = _hold(held.get_data(as_text=True))
        assert hold["message"] == inbound_service.HOLD_MESSAGE
        assert calls(app) == []  # the claim was given back
        connected = _post_to(case, client, hold["redirect"], form)
        assert parse_answer(connected.get_data(as_text=True)) == ("stream", JOIN_URL)
        replay = _post_to(case, client, hold["redirect"], form)
        assert replay.get_data() == connected.get_data()
        assert _uv_calls(rsps.calls) == 2
    [call] = calls(app)
    assert call.carrier_call_id == call_sid and call.join_url == JOIN_URL


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_held_caller_gets_the_fallback_once_the_wait_is_over(app, client, case):
    """After inbound_wait_seconds the call is tried one last time (the count is only a
    forecast); Ultravox still refusing, the caller is forwarded and the call recorded."""
    seeded = seed(app, carrier=case.name, fallback=FALLBACK)
    set_capacity(app, seeded.agency_id, max_concurrent_calls=1, inbound_wait_seconds=20)
    live_call(app, seeded.agency_id, direction=CallDirection.outbound)
    call_sid = case.call_id()
    form = case.inbound_form(call_sid)
    with app.app_context():
        url = capacity.redirect_url(PUBLIC_BASE + case.voice_path, case.name, call_sid,
                                    capacity.Waiting(since=int(time.time()) - 21, round=4))
    with responses.RequestsMock() as rsps:
        _answer_with(rsps, 429)
        answer = _post_to(case, client, url, form)
        assert _uv_calls(rsps.calls) == 1
    assert parse_answer(answer.get_data(as_text=True)) == ("dial", case.number(FALLBACK))
    [call] = [c for c in calls(app) if c.carrier_call_id == call_sid]
    assert call.metadata_["inbound_answer"] == "dial" and call.metadata_["start_error"] == "UltravoxRateLimited"


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_without_a_fallback_the_caller_hears_the_apology_after_the_wait(app, client, case):
    seeded = seed(app, carrier=case.name)
    set_capacity(app, seeded.agency_id, max_concurrent_calls=1, inbound_wait_seconds=0)
    live_call(app, seeded.agency_id, direction=CallDirection.outbound)
    with responses.RequestsMock() as rsps:
        _answer_with(rsps, 429)
        answer = case.post(client, case.voice_path, case.inbound_form(case.call_id()))
    assert parse_answer(answer.get_data(as_text=True)) == ("say", inbound_service.APOLOGY)


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_a_forged_hold_state_counts_as_a_new_arrival(app, client, case):
    """The state is ours (HMAC) and bound to the carrier call: changed, or taken from
    another call, it is ignored and the caller starts waiting afresh (greeting again)."""
    seeded = seed(app, carrier=case.name, fallback=FALLBACK)
    set_capacity(app, seeded.agency_id, max_concurrent_calls=1)
    live_call(app, seeded.agency_id, direction=CallDirection.outbound)
    call_sid = case.call_id()
    with app.app_context():
        old = capacity.Waiting(since=int(time.time()) - 600, round=9)
        url = capacity.redirect_url(PUBLIC_BASE + case.voice_path, case.name, "someone-else", old)
    hold = _hold(_post_to(case, client, url, case.inbound_form(call_sid)).get_data(as_text=True))
    assert hold["message"] == inbound_service.HOLD_MESSAGE and "hold_round=1" in hold["redirect"]


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_hold_audio_is_played_when_configured(app, client, case):
    seeded = seed(app, carrier=case.name)
    set_capacity(app, seeded.agency_id, max_concurrent_calls=1)
    live_call(app, seeded.agency_id, direction=CallDirection.outbound)
    app.extensions["telephony.config"] = app.extensions["telephony.config"].with_overrides(
        hold_audio_url="https://cdn.example.test/hold.mp3")
    hold = _hold(case.post(client, case.voice_path, case.inbound_form(case.call_id())).get_data(as_text=True))
    # (A short pause after it: a <Play> the carrier cannot fetch is skipped, and the loop must not spin.)
    assert hold["play"] == "https://cdn.example.test/hold.mp3" and hold["pause"] == 1


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_capacity_check_costs_one_count_and_only_with_a_limit(app, client, case):
    seeded = seed(app, carrier=case.name)
    set_capacity(app, seeded.agency_id, max_concurrent_calls=3)
    with responses.RequestsMock() as rsps:
        _answer_with(rsps)
        with counted(app) as seen:
            response = case.post(client, case.voice_path, case.inbound_form(case.call_id()))
    assert parse_answer(response.get_data(as_text=True))[0] == "stream"
    statements = _split(seen)[0]
    assert _summary(statements) == ["SELECT phone_numbers", "SELECT calls", "INSERT calls", "UPDATE calls"]
    assert "ix_calls_agency_status" not in statements[1]  # (an index hint would be dialect-specific)


# -- Telnyx Call Control ----------------------------------------------------------------------


def _state(command: dict[str, Any]) -> str:
    return base64.b64decode(command["params"]["client_state"]).decode()


def test_call_control_caller_is_held_then_streamed(sim_app, ultravox_sim, carrier_sim):
    seeded = seed(sim_app, carrier="telnyx", fallback=FALLBACK)
    set_capacity(sim_app, seeded.agency_id, max_concurrent_calls=1)
    other = live_call(sim_app, seeded.agency_id, direction=CallDirection.outbound)
    client = sim_app.test_client()
    ccid = _call_control_id()
    assert _post(client, _event("call.initiated", ccid)).status_code == 200
    [answer] = _commands(carrier_sim, ccid)
    assert answer["action"] == "answer" and "stream_url" not in answer["params"]
    assert _state(answer).startswith("telephony-hold:")
    assert sim_calls_for(ultravox_sim, ccid) == []

    # Answered: the greeting is spoken; its end is the next try (still full: a reminder).
    state = answer["params"]["client_state"]
    assert _post(client, _event("call.answered", ccid, client_state=state)).status_code == 200
    greeting = _commands(carrier_sim, ccid)[1]
    assert greeting["action"] == "speak" and greeting["params"]["payload"] == inbound_service.HOLD_MESSAGE
    assert _post(client, _event("call.speak.ended", ccid, client_state=greeting["params"]["client_state"],
                                status="completed")).status_code == 200
    reminder = _commands(carrier_sim, ccid)[2]
    assert reminder["action"] == "speak" and reminder["params"]["payload"] == HOLD_REMINDER
    assert sim_calls_for(ultravox_sim, ccid) == []

    end_call(sim_app, other)
    assert _post(client, _event("call.speak.ended", ccid, client_state=reminder["params"]["client_state"],
                                status="completed")).status_code == 200
    stream = _commands(carrier_sim, ccid)[3]
    [uv_call] = sim_calls_for(ultravox_sim, ccid)
    assert stream["action"] == "streaming_start" and stream["params"]["stream_url"] == uv_call["call"]["joinUrl"]
    assert (stream["params"]["stream_bidirectional_mode"], stream["params"]["stream_codec"],
            stream["params"]["stream_bidirectional_sampling_rate"]) == ("rtp", "L16", 16000)
    [call] = [c for c in calls(sim_app) if c.carrier_call_id == ccid]
    assert call.ultravox_call_id == uv_call["call"]["callId"]

    # A repeated event repeats the same command id (ignored by Telnyx), and no second call.
    _post(client, _event("call.speak.ended", ccid, client_state=reminder["params"]["client_state"]))
    assert len(sim_calls_for(ultravox_sim, ccid)) == 1


def test_call_control_ultravox_429_holds_then_transfers_after_the_wait(sim_app, ultravox_sim, carrier_sim):
    seed(sim_app, carrier="telnyx", fallback=FALLBACK)
    requests.post(f"{ultravox_sim.base_url}/_sim/config", json={"max_concurrent_calls": 1}, timeout=5)
    requests.post(f"{ultravox_sim.base_url}/api/calls", json={"systemPrompt": "busy"}, timeout=5).raise_for_status()
    client = sim_app.test_client()
    ccid = _call_control_id()
    _post(client, _event("call.initiated", ccid))
    [answer] = _commands(carrier_sim, ccid)
    assert _state(answer).startswith("telephony-hold:") and calls(sim_app) == []
    with sim_app.app_context():
        late = capacity.hold_state("telnyx", ccid, capacity.Waiting(since=int(time.time()) - 31, round=5),
                                   CALLER, NUMBER)
    encoded = base64.b64encode(f"telephony-hold:{late}".encode()).decode()
    _post(client, _event("call.speak.ended", ccid, client_state=encoded))
    transfer = _commands(carrier_sim, ccid)[-1]
    assert transfer["action"] == "transfer" and transfer["params"]["to"] == FALLBACK


def test_call_control_forged_hold_event_is_refused(sim_app, ultravox_sim, carrier_sim):
    seeded = seed(sim_app, carrier="telnyx")
    set_capacity(sim_app, seeded.agency_id, max_concurrent_calls=1)
    live_call(sim_app, seeded.agency_id, direction=CallDirection.outbound)
    client = sim_app.test_client()
    ccid = _call_control_id()
    _post(client, _event("call.initiated", ccid))
    state = _commands(carrier_sim, ccid)[0]["params"]["client_state"]
    assert _post(client, _event("call.speak.ended", ccid, client_state=state), signed=False).status_code == 403
    assert _post(client, _event("call.answered", ccid, client_state=state), signed=False).status_code == 403
    assert len(_commands(carrier_sim, ccid)) == 1


def test_call_control_caller_who_hung_up_on_hold_is_not_connected(sim_app, ultravox_sim, carrier_sim):
    seed(sim_app, carrier="telnyx")
    client = sim_app.test_client()
    ccid = _call_control_id()
    with sim_app.app_context():
        state = capacity.hold_state("telnyx", ccid, capacity.Waiting(since=int(time.time()), round=1), CALLER, NUMBER)
    encoded = base64.b64encode(f"telephony-hold:{state}".encode()).decode()
    assert _post(client, _event("call.speak.ended", ccid, client_state=encoded, status="call_hangup")).status_code \
        == 200
    assert _commands(carrier_sim, ccid) == [] and sim_calls_for(ultravox_sim, ccid) == [] and calls(sim_app) == []


def test_call_control_plays_the_hold_audio_and_speaks_when_it_cannot(sim_app, ultravox_sim, carrier_sim):
    seeded = seed(sim_app, carrier="telnyx")
    set_capacity(sim_app, seeded.agency_id, max_concurrent_calls=1)
    live_call(sim_app, seeded.agency_id, direction=CallDirection.outbound)
    sim_app.extensions["telephony.config"] = sim_app.extensions["telephony.config"].with_overrides(
        hold_audio_url="https://cdn.example.test/hold.mp3")
    client = sim_app.test_client()
    ccid = _call_control_id()
    _post(client, _event("call.initiated", ccid))
    state = _commands(carrier_sim, ccid)[0]["params"]["client_state"]
    _post(client, _event("call.answered", ccid, client_state=state))
    greeting = _commands(carrier_sim, ccid)[1]
    assert greeting["action"] == "speak" and greeting["params"]["payload"] == inbound_service.HOLD_MESSAGE
    _post(client, _event("call.speak.ended", ccid, client_state=greeting["params"]["client_state"]))
    playback = _commands(carrier_sim, ccid)[2]
    assert playback["action"] == "playback_start"
    assert playback["params"]["audio_url"] == "https://cdn.example.test/hold.mp3"
    # The audio cannot be fetched: that round is spoken, not tried again at once.
    _post(client, _event("call.playback.ended", ccid, client_state=playback["params"]["client_state"],
                         status="file_not_found"))
    spoken = _commands(carrier_sim, ccid)[3]
    assert spoken["action"] == "speak" and spoken["params"]["payload"] == HOLD_REMINDER
    assert spoken["params"]["client_state"] == playback["params"]["client_state"]
    assert sim_calls_for(ultravox_sim, ccid) == []
