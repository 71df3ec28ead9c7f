"""Carrier status callbacks: /webhooks/twilio/status, /webhooks/telnyx/status (TeXML),
/webhooks/plivo/hangup. Telnyx Call Control events are covered in test_inbound_telnyx.py."""
from __future__ import annotations

import pytest
import responses

from tests.inbound_helpers import (CarrierCase, PlivoCase, TelnyxTexmlCase, TwilioCase, UltravoxMock, calls,
                                   seed)

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
    assert call.status == "completed" and call.join_url  # the answer is stored, the status kept
