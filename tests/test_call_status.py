"""Carrier status callbacks: /webhooks/twilio/status, /webhooks/telnyx/status (TeXML),
/webhooks/plivo/hangup. Telnyx Call Control events are covered in test_inbound_telnyx.py."""
from __future__ import annotations

import pytest
import responses

from tests.inbound_helpers import CarrierCase, PlivoCase, TelnyxTexmlCase, TwilioCase, UltravoxMock, calls, seed

CASES = [TwilioCase(), TelnyxTexmlCase(), PlivoCase()]
SEQUENCED = [case for case in CASES if case.name != "plivo"]  # Plivo callbacks carry no sequence number


def _answered_call(app, client, case: CarrierCase) -> str:
    seed(app, carrier=case.name)
    call_sid = case.call_id()
    with responses.RequestsMock() as rsps:
        UltravoxMock().answer_with(rsps)
        assert case.post(client, case.voice_path, case.inbound_form(call_sid)).status_code == 200
    return call_sid


def _status(client, case: CarrierCase, call_sid: str, status: str, **kwargs):
    return case.post(client, case.status_path, case.status_form(call_sid, status, **kwargs))


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_status_moves_through_the_call_and_records_the_duration(app, client, case):
    call_sid = _answered_call(app, client, case)
    assert calls(app)[0].status == "ringing"
    assert _status(client, case, call_sid, "in-progress", sequence=2).status_code == 204
    assert calls(app)[0].status == "in-progress"
    assert _status(client, case, call_sid, "completed", sequence=3, duration=42).status_code == 204
    [call] = calls(app)
    assert (call.status, call.duration_seconds) == ("completed", 42) and call.ended_at is not None


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
@pytest.mark.parametrize("terminal", ["completed", "busy", "no-answer", "failed"])
def test_terminal_status_is_final(app, client, case, terminal):
    call_sid = _answered_call(app, client, case)
    assert _status(client, case, call_sid, terminal, sequence=3, duration=5).status_code == 204
    # Late, duplicated or contradicting callbacks change nothing.
    for late in ("ringing", "in-progress", "completed", "failed"):
        assert _status(client, case, call_sid, late, sequence=4).status_code == 204
    [call] = calls(app)
    assert call.status == terminal and call.duration_seconds == 5


@pytest.mark.parametrize("case", SEQUENCED, ids=lambda c: c.name)
def test_lower_sequence_numbers_are_ignored(app, client, case):
    call_sid = _answered_call(app, client, case)
    assert _status(client, case, call_sid, "in-progress", sequence=5).status_code == 204
    assert (calls(app)[0].status, calls(app)[0].carrier_status_seq) == ("in-progress", 5)
    # Forward in status, but older than what was applied: ignored.
    assert _status(client, case, call_sid, "completed", sequence=4, duration=1).status_code == 204
    assert calls(app)[0].status == "in-progress"
    assert _status(client, case, call_sid, "completed", sequence=6, duration=9).status_code == 204
    assert (calls(app)[0].status, calls(app)[0].carrier_status_seq, calls(app)[0].duration_seconds) == (
        "completed", 6, 9)


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_forged_callback_is_refused_and_changes_nothing(app, client, case):
    call_sid = _answered_call(app, client, case)
    form = case.status_form(call_sid, "completed", sequence=3, duration=1)
    assert case.post(client, case.status_path, form, signed=False).status_code == 403
    tampered = case.sign(case.status_path, form, b"other body")
    assert case.post(client, case.status_path, dict(form, CallStatus="busy"), signed=False,
                     headers=tampered).status_code == 403
    assert calls(app)[0].status == "ringing"


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_callback_for_an_unknown_call_or_untracked_status_is_a_no_op(app, client, case):
    call_sid = _answered_call(app, client, case)
    assert _status(client, case, case.call_id(), "completed").status_code == 204
    if case.name != "plivo":
        assert _status(client, case, call_sid, "initiated", sequence=0).status_code == 204
    assert calls(app)[0].status == "ringing"


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_caller_hanging_up_while_we_wait_on_ultravox_stays_completed(app, client, case):
    """The completed callback lands while the inbound webhook still waits on Ultravox:
    storing the answer afterwards must not move the call back to ringing."""
    seed(app, carrier=case.name)
    call_sid = case.call_id()
    uv = UltravoxMock()
    with responses.RequestsMock() as rsps:
        def hang_up_meanwhile(request):
            assert _status(client, case, call_sid, "completed", sequence=3, duration=0).status_code == 204
            return original(request)

        uv.answer_with(rsps)
        original = rsps.registered()[0].callback
        rsps.registered()[0].callback = hang_up_meanwhile
        assert case.post(client, case.voice_path, case.inbound_form(call_sid)).status_code == 200
    [call] = calls(app)
    # The answer is stored and the status kept; an ended call keeps no joinUrl (nobody may
    # join a call that is over, see the hardening issue's joinUrl rule).
    assert call.status == "completed" and call.ultravox_call_id and call.join_url is None


def _subscribe(app, agency_id) -> None:
    from telephony.services.event_endpoints import create_endpoint
    with app.app_context(), app.extensions["telephony.db"].session() as session:
        create_endpoint(session, agency_id, url="https://hooks.example.test/events",
                        events=["call.ended", "call.failed"])


def _agency_events(app) -> list[tuple[str, str, str]]:
    import json

    from sqlalchemy import select

    from telephony.models import EventDelivery
    with app.extensions["telephony.db"].session() as session:
        rows = session.scalars(select(EventDelivery).order_by(EventDelivery.created_at))
        return [(body["type"], body["data"]["status"], body["data"]["call_id"])
                for body in (json.loads(row.payload) for row in rows)]


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
@pytest.mark.parametrize("failure", ["busy", "no-answer", "failed", "canceled"])
def test_a_call_that_never_connected_is_reported_to_the_agency_once_right_away(app, client, case, failure):
    call_sid = _answered_call(app, client, case)
    _subscribe(app, calls(app)[0].agency_id)
    assert _status(client, case, call_sid, failure, sequence=3).status_code == 204
    assert _status(client, case, call_sid, failure, sequence=4).status_code == 204  # a duplicate
    assert _agency_events(app) == [("call.failed", failure, str(calls(app)[0].id))]


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_a_completed_call_is_left_to_ultravox_to_report(app, client, case):
    call_sid = _answered_call(app, client, case)
    _subscribe(app, calls(app)[0].agency_id)
    assert _status(client, case, call_sid, "in-progress", sequence=2).status_code == 204
    assert _status(client, case, call_sid, "completed", sequence=3, duration=42).status_code == 204
    assert _agency_events(app) == []  # call.ended comes with Ultravox's end reason and billing


@pytest.mark.parametrize("plivo_status, ours", [("ringing", "ringing"), ("in-progress", "in-progress"),
                                                ("completed", "completed"), ("busy", "busy"),
                                                ("no-answer", "no-answer"), ("timeout", "failed"),
                                                ("cancel", "canceled"), ("failed", "failed")])
def test_plivo_call_statuses_mean_what_plivo_documents(app, client, plivo_status, ours):
    case = PlivoCase()
    call_sid = _answered_call(app, client, case)
    assert _status(client, case, call_sid, plivo_status).status_code == 204
    assert calls(app)[0].status == ours
