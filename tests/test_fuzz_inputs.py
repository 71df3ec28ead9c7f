"""No 5xx from any input (hardening item 8), on SQLite and PostgreSQL.

First the named cases that once answered 500 (NUL bytes, lone surrogates, huge
numbers, deep nesting, dates at the datetime limits, non-UTF-8 bodies, duplicated
fields), then property tests: Hypothesis throws generated strings, bytes and
numbers at the carrier status callbacks and the Ultravox webhook (signed, so the
input reaches parsing), call-history pagination and contact CSV import. Each has a
fixed, derandomized budget so CI runs the same examples every time.
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import json
import uuid
from datetime import timedelta
from urllib.parse import urlencode

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from telephony.models import CallDirection, CallSource, utcnow
from telephony.services.call_history import CallFilters, _checksum
from tests.inbound_helpers import (
    PUBLIC_BASE,
    TWILIO_TOKEN,
    PlivoCase,
    TelnyxTexmlCase,
    TwilioCase,
    calls,
    seed,
    telnyx_headers,
    twilio_signature,
)
from tests.lifecycle_support import add_call, get_call, post_webhook, set_ultravox_credentials, snapshot
from tests.outbound_helpers import TWILIO_SID, create_campaign, seed_agency

CASES = [TwilioCase(), TelnyxTexmlCase(), PlivoCase()]
SID_FIELD = {"twilio": "CallSid", "telnyx": "CallSid", "plivo": "CallUUID"}
DURATION_FIELD = {"twilio": "CallDuration", "telnyx": "CallDuration", "plivo": "Duration"}
DEEP = b"[" * 100_000

# A fixed budget: the same examples on every run, no per-example deadline.
BUDGET = settings(max_examples=100, deadline=None, derandomize=True, database=None,
                  suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])

# Strings that have broken parsers or databases: NUL, lone surrogates, huge numbers, odd dates.
NASTY_TEXT = st.one_of(
    st.sampled_from(["\x00", "a\x00b", "\ud800", "\udfff", "9" * 40, str(2**31), str(2**63), "-1", "",
                     "9999-12-31T23:59:59Z", "0001-01-01T00:00:00Z", "9999-12-31T23:59:59-23:59",
                     "0001-01-01T00:00:00+23:59", "NaN", "Infinity", "1e999", "x" * 5000]),
    st.text(max_size=80),
    st.integers().map(str),
)


def _seeded_call(app, case) -> tuple[str, uuid.UUID]:
    """A carrier call of ours that status callbacks can be about."""
    seeded = seed(app, carrier=case.name)
    call_sid = case.call_id()
    add_call(app.extensions["telephony.db"], seeded.agency_id, source=CallSource(case.name), carrier_call_id=call_sid,
             status="ringing")
    return call_sid, seeded.agency_id


def _post_form_pairs(client, case, path: str, pairs: list[tuple[str, str]]):
    """A form that may repeat a field, signed over every value as the carrier does."""
    body = urlencode(pairs).encode()
    if case.name == "telnyx":
        headers = telnyx_headers(body)
    elif case.name == "twilio":
        # Twilio signs each name with all its values, sorted by name then value.
        payload = PUBLIC_BASE + path + "".join(name + value for name, value in sorted(set(pairs)))
        headers = {"X-Twilio-Signature": base64.b64encode(hmac.new(TWILIO_TOKEN.encode(), payload.encode(),
                                                                    hashlib.sha1).digest()).decode()}
    else:
        headers = case.sign(path, dict(pairs), body)
    return client.post(path, data=body, content_type="application/x-www-form-urlencoded", headers=headers)


def _assert_api_error(response, field: str | None = None) -> None:
    assert 400 <= response.status_code < 500, (response.status_code, response.get_data()[:300])
    body = response.get_json()
    assert body and body.get("error") and body.get("code"), response.get_data()[:300]
    if field is not None:
        assert field in (body.get("fields") or {}) or field in body["error"], body


# -- named cases: carrier status callbacks ---------------------------------------------------


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_nul_in_the_call_id_of_a_status_callback_is_ignored(app, client, case):
    _seeded_call(app, case)
    form = case.status_form("CA\x00" + uuid.uuid4().hex, "completed", sequence=3, duration=4)
    assert case.post(client, case.status_path, form).status_code == 204
    assert [c.status for c in calls(app)] == ["ringing"]


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_a_duplicated_call_id_field_is_ignored(app, client, case):
    call_sid, _ = _seeded_call(app, case)
    form = case.status_form(call_sid, "completed", sequence=3, duration=4)
    sid = SID_FIELD[case.name]
    pairs = [(k, v) for k, v in form.items() if k != sid] + [(sid, call_sid), (sid, case.call_id())]
    # Which of the two does the carrier mean? Neither is applied (Plivo's signature scheme
    # does not cover a repeated field the way we sign it here: refused, equally clean).
    assert _post_form_pairs(client, case, case.status_path, pairs).status_code in (204, 403)
    assert [c.status for c in calls(app)] == ["ringing"]


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
@pytest.mark.parametrize("duration", [2**31, 10**30])
def test_a_duration_out_of_range_is_dropped_and_the_status_kept(app, client, case, duration):
    call_sid, _ = _seeded_call(app, case)
    form = case.status_form(call_sid, "completed", sequence=3)
    form[DURATION_FIELD[case.name]] = str(duration)
    if case.name != "plivo":
        form["SequenceNumber"] = str(duration)
    assert case.post(client, case.status_path, form).status_code == 204
    call = calls(app)[0]
    assert call.status == "completed" and call.duration_seconds is None


def test_outbound_callbacks_with_a_nul_call_id_or_huge_duration_are_ignored(app, client):
    seeded = seed_agency(app, carrier="twilio")
    call_id = add_call(app.extensions["telephony.db"], seeded.agency_id, source=CallSource.twilio, status="ringing",
                       direction=CallDirection.outbound)
    path = f"/webhooks/outbound/twilio/status/{call_id}"
    for params in ({"CallSid": "CA\x00x", "CallStatus": "completed", "AccountSid": TWILIO_SID},
                   {"CallSid": "CA" + "1" * 32, "CallStatus": "completed", "AccountSid": TWILIO_SID,
                    "CallDuration": str(2**40), "SequenceNumber": str(2**40)}):
        response = client.post(path, data=urlencode(params), content_type="application/x-www-form-urlencoded",
                               headers={"X-Twilio-Signature": twilio_signature(PUBLIC_BASE + path, params)})
        assert response.status_code < 500, response.get_data()[:300]
    plivo_path = f"/webhooks/outbound/plivo/hangup/{call_id}"
    form = {"CallUUID": "\x00", "CallStatus": "completed"}
    response = PlivoCase().post(client, plivo_path, form)
    assert response.status_code < 500


@pytest.mark.parametrize("carrier", ["twilio", "plivo"])
def test_an_outbound_callback_naming_another_calls_carrier_id_is_ignored(app, client, carrier):
    seeded = seed_agency(app, carrier=carrier)
    db = app.extensions["telephony.db"]
    taken = "CA" + "7" * 32 if carrier == "twilio" else str(uuid.uuid4())
    add_call(db, seeded.agency_id, source=CallSource(carrier), status="ringing", direction=CallDirection.outbound,
             carrier_call_id=taken)
    other = add_call(db, seeded.agency_id, source=CallSource(carrier), status="ringing",
                     direction=CallDirection.outbound)
    if carrier == "twilio":
        path = f"/webhooks/outbound/twilio/status/{other}"
        params = {"CallSid": taken, "CallStatus": "completed", "AccountSid": TWILIO_SID, "SequenceNumber": "3"}
        response = client.post(path, data=urlencode(params), content_type="application/x-www-form-urlencoded",
                                headers={"X-Twilio-Signature": twilio_signature(PUBLIC_BASE + path, params)})
    else:
        response = PlivoCase().post(client, f"/webhooks/outbound/plivo/hangup/{other}",
                                    {"CallUUID": taken, "CallStatus": "completed"})
    assert response.status_code < 500, response.get_data()[:300]
    call = get_call(db, other)
    assert (call.status, call.carrier_call_id) == ("ringing", None)


# -- named cases: Telnyx Call Control ---------------------------------------------------------


@pytest.mark.parametrize("body", [
    b"\xff\xfe{\x00}", b'{"data": {"event_type": "call.hangup", "id": "\xed\xa0\x80", "payload": '
                       b'{"call_control_id": "\xed\xa0\x80", "hangup_cause": "normal_clearing"}}}',
    b'{"data": {"event_type": "call.hangup", "id": "e1", "payload": {"call_control_id": "v3:\\u0000x"}}}',
    b'{"data": {"event_type": "call.answered", "id": "\\ud800", "payload": {"call_control_id": "\\ud800"}}}',
    DEEP, b'{"data": ' * 50_000])
def test_call_control_bodies_that_are_not_clean_utf8_json_are_refused_or_ignored(app, client, body):
    seed(app, carrier="telnyx")
    for path in ("/webhooks/telnyx/call-control", f"/webhooks/outbound/telnyx/call-control/{uuid.uuid4()}"):
        response = client.post(path, data=body, content_type="application/json", headers=telnyx_headers(body))
        assert response.status_code < 500, (path, response.status_code, response.get_data()[:300])


# -- named cases: Ultravox webhooks ---------------------------------------------------------------


@pytest.fixture
def tenant(app, db, make_tenant):
    tenant = make_tenant()
    set_ultravox_credentials(app, db, tenant.agency_id)
    return tenant


@pytest.mark.parametrize("call_id", ["abc\x00def", "\ud800", "x\udfffy", "c" * 65, "c" * 100_000])
def test_ultravox_call_ids_that_cannot_be_stored_are_a_400_naming_the_field(client, tenant, call_id):
    body = json.dumps({"event": "call.ended", "call": snapshot(call_id, ended=utcnow())}).encode()
    for agency in (tenant.agency_id, None):
        response = post_webhook(client, None, {}, agency_id=agency, body=body)
        _assert_api_error(response, "callId")


@pytest.mark.parametrize("billed", [f"{2**31}s", "9999999999s", f"{10**30}s", "1e30s"])
def test_ultravox_billed_durations_beyond_range_charge_nothing(app, client, db, tenant, billed):
    call_id = str(uuid.uuid4())
    ours = add_call(db, tenant.agency_id, ultravox_call_id=call_id)
    now = utcnow()
    for event in ("call.ended", "call.billed"):
        response = post_webhook(client, event, snapshot(call_id, joined=now - timedelta(seconds=30), ended=now,
                                                        billed=billed), agency_id=tenant.agency_id)
        assert response.status_code == 204, response.get_data()[:300]
    call = get_call(db, ours)
    assert call.status == "completed" and call.billed_duration_seconds is None
    assert call.credits_charged_seconds is None


@pytest.mark.parametrize("joined, ended", [("0001-01-01T00:00:00Z", "9999-12-31T23:59:59Z"),
                                           ("9999-12-31T23:59:59Z", "9999-12-31T23:59:59Z"),
                                           ("0001-01-01T00:00:00+01:00", "9999-12-31T23:59:59-23:59"),
                                           ("0001-01-01T00:00:00Z", "0001-01-01T00:00:00Z")])
def test_ultravox_dates_at_the_datetime_limits_never_500(app, client, db, tenant, joined, ended):
    call_id = str(uuid.uuid4())
    add_call(db, tenant.agency_id, ultravox_call_id=call_id)
    call = snapshot(call_id, billed="10s")
    call.update(joined=joined, ended=ended, created=joined)
    for event in ("call.joined", "call.ended", "call.billed"):
        response = post_webhook(client, event, call, agency_id=tenant.agency_id)
        assert response.status_code < 500, response.get_data()[:300]
    # Rebuilt from metadata (a call we never stored), too.
    other = dict(call, callId=str(uuid.uuid4()))
    assert post_webhook(client, "call.ended", other, agency_id=tenant.agency_id).status_code < 500


@pytest.mark.parametrize("body", [DEEP, b'{"call": ' * 100_000, b"\xff\xfe\x00{"])
def test_ultravox_bodies_deeply_nested_or_not_utf8_are_a_400(client, tenant, body):
    _assert_api_error(post_webhook(client, None, {}, agency_id=tenant.agency_id, body=body), "body")


# -- named cases: the API ---------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/api/v1/calls", "/api/v1/campaigns", "/api/v1/agents"])
def test_deeply_nested_json_on_api_routes_is_a_400(client, make_tenant, path):
    tenant = make_tenant()
    response = client.post(path, data=DEEP, content_type="application/json", headers=tenant.admin())
    _assert_api_error(response)


def _forged_cursor(created_at: str, call_id: str = str(uuid.UUID(int=1)), fingerprint: str | None = None) -> str:
    """A cursor with a valid checksum around any position (the checksum is no secret)."""
    raw = json.dumps([created_at, call_id, fingerprint or CallFilters().fingerprint()],
                     separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(_checksum(raw) + raw).rstrip(b"=").decode()


@pytest.mark.parametrize("params, field", [
    ({"limit": str(2**64)}, "limit"), ({"limit": "9" * 5000}, "limit"), ({"limit": "-1"}, "limit"),
    ({"cursor": "\x00"}, "cursor"), ({"cursor": "!!!"}, "cursor"), ({"cursor": "\ud800"}, "cursor"),
    ({"cursor": _forged_cursor("9999-12-31T23:59:59-23:59")}, "cursor"),
    ({"cursor": _forged_cursor("0001-01-01T00:00:00+23:59")}, "cursor"),
    ({"cursor": _forged_cursor(str(2**70))}, "cursor"),
    ({"created_from": "0001-01-01T00:00:00+01:00"}, "created_from"),
    ({"created_to": "9999-12-31T23:59:59-23:59"}, "created_to"),
    ({"created_from": "\x00"}, "created_from"),
])
def test_call_history_paging_with_odd_values_is_a_400_naming_the_field(client, make_tenant, params, field):
    tenant = make_tenant()
    response = client.get("/api/v1/calls?" + urlencode(params, encoding="utf-8", errors="surrogatepass"),
                          headers=tenant.admin())
    _assert_api_error(response, field)


@pytest.mark.parametrize("offset", [str(2**63), str(2**63 - 1), str(2**64), "9" * 100])
def test_contact_list_offsets_beyond_range_are_a_400_or_empty(app, client, offset):
    seeded = seed_agency(app)
    campaign = create_campaign(client, seeded, [{"phone": "+14155550123"}])
    response = client.get(f"/api/v1/campaigns/{campaign['id']}/contacts?offset={offset}", headers=seeded.headers())
    if response.status_code == 200:
        assert response.get_json()["contacts"] == []
    else:
        _assert_api_error(response, "offset")


def test_a_nul_in_a_csv_cell_is_reported_on_its_line(app, client):
    seeded = seed_agency(app)
    campaign = create_campaign(client, seeded, [{"phone": "+14155550123"}])
    csv_body = "phone,name,city\n+14155550124,Ann\x00,Paris\n+14155550125,Bob,Ly\x00on\n+14155550126,Cy,Nice\n"
    response = client.post(f"/api/v1/campaigns/{campaign['id']}/contacts", data=csv_body.encode(),
                           content_type="text/csv", headers=seeded.headers())
    assert response.status_code == 200, response.get_data()[:500]
    report = response.get_json()
    assert report["added"] == 1
    assert {(e["line"], e["field"]) for e in report["errors"]} == {(2, "name"), (3, "city")}


# -- property tests: generated input, a fixed budget ------------------------------------------------
#
# Each test seeds once, then runs its examples against the same app (one test per
# database). Budget: BUDGET.max_examples per test; the whole file runs in well under a minute.

# A form body is decoded leniently (broken UTF-8 becomes U+FFFD), so form values are text.
FORM_VALUE = NASTY_TEXT.map(lambda text: text.encode("utf-8", "surrogatepass").decode("utf-8", "replace"))
JSONISH = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | NASTY_TEXT,
    lambda children: st.lists(children, max_size=3) | st.dictionaries(NASTY_TEXT, children, max_size=3),
    max_leaves=10)


def _assert_no_5xx(response, api: bool = False) -> None:
    assert response.status_code < 500, (response.status_code, response.get_data()[:300])
    body = response.get_json(silent=True) or {}
    if api and response.status_code >= 400 and "errors" not in body:  # else a per-line import report
        _assert_api_error(response)


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_status_callbacks_never_5xx(app, client, case):
    call_sid, _ = _seeded_call(app, case)
    sid = SID_FIELD[case.name]

    @BUDGET
    @given(overrides=st.dictionaries(st.sampled_from([sid, "CallStatus", "SequenceNumber",
                                                      DURATION_FIELD[case.name], "Timestamp"]),
                                     FORM_VALUE, max_size=4),
           repeat_sid=st.booleans())
    def run(overrides, repeat_sid):
        form = dict(case.status_form(call_sid, "in-progress", sequence=1), **overrides)
        pairs = list(form.items()) + ([(sid, call_sid)] if repeat_sid else [])
        _assert_no_5xx(_post_form_pairs(client, case, case.status_path, pairs))

    run()


def test_telnyx_call_control_never_5xx(app, client):
    seed(app, carrier="telnyx")
    event = st.fixed_dictionaries({"data": st.fixed_dictionaries({
        "id": FORM_VALUE, "event_type": st.sampled_from(["call.initiated", "call.answered", "call.hangup", "x"]),
        "occurred_at": FORM_VALUE,
        "payload": st.fixed_dictionaries({"call_control_id": FORM_VALUE, "direction": FORM_VALUE,
                                          "hangup_cause": FORM_VALUE, "start_time": FORM_VALUE,
                                          "client_state": FORM_VALUE, "from": FORM_VALUE, "to": FORM_VALUE})})})
    bodies = st.one_of(st.binary(max_size=200), event.map(lambda d: json.dumps(d).encode("utf-8", "surrogatepass")))

    @BUDGET
    @given(body=bodies)
    def run(body):
        # call.initiated for an unknown number answers nothing (no carrier command is sent).
        _assert_no_5xx(client.post("/webhooks/telnyx/call-control", data=body, content_type="application/json",
                                   headers=telnyx_headers(body)))

    run()


def test_ultravox_webhook_never_5xx(app, client, db, tenant):
    known = str(uuid.uuid4())
    add_call(db, tenant.agency_id, ultravox_call_id=known)
    calls_ = st.fixed_dictionaries({
        "callId": st.one_of(st.just(known), NASTY_TEXT), "joined": FORM_VALUE, "ended": FORM_VALUE,
        "created": FORM_VALUE, "billedDuration": st.one_of(FORM_VALUE, st.integers().map(lambda n: f"{n}s")),
        "endReason": FORM_VALUE, "summary": FORM_VALUE, "metadata": JSONISH, "medium": JSONISH})
    bodies = st.one_of(
        st.tuples(st.sampled_from(["call.started", "call.joined", "call.ended", "call.billed", "other"]), calls_)
        .map(lambda pair: json.dumps({"event": pair[0], "call": pair[1]}).encode("utf-8", "surrogatepass")),
        st.binary(max_size=200))

    @BUDGET
    @given(body=bodies, per_agency=st.booleans())
    def run(body, per_agency):
        response = post_webhook(client, None, {}, body=body, agency_id=tenant.agency_id if per_agency else None)
        _assert_no_5xx(response, api=True)

    run()


def test_call_history_paging_never_5xx(client, make_tenant, db):
    tenant = make_tenant()
    now = utcnow()
    for minutes in range(3):
        add_call(db, tenant.agency_id, created_at=now - timedelta(minutes=minutes))
    params = st.dictionaries(st.sampled_from(["cursor", "limit", "created_from", "created_to", "status", "agent_id"]),
                             NASTY_TEXT, max_size=3)

    @BUDGET
    @given(params=params)
    def run(params):
        query = urlencode(params, encoding="utf-8", errors="surrogatepass")
        _assert_no_5xx(client.get(f"/api/v1/calls?{query}", headers=tenant.admin()), api=True)

    run()


def test_contact_import_and_listing_never_5xx(app, client):
    seeded = seed_agency(app)
    campaign = create_campaign(client, seeded, [{"phone": "+14155550123"}])
    path = f"/api/v1/campaigns/{campaign['id']}/contacts"
    cell = st.one_of(NASTY_TEXT, st.sampled_from(["+14155550130", "Europe/Paris", '"', "a,b", "\r\n"]))
    csv_text = st.lists(st.lists(cell, min_size=1, max_size=4), max_size=4).map(
        lambda rows: "phone,name,timezone,city\n" + "\n".join(",".join(row) for row in rows))
    bodies = st.one_of(csv_text.map(lambda text: text.encode("utf-8", "surrogatepass")), st.binary(max_size=200))

    @BUDGET
    @given(body=bodies, offset=NASTY_TEXT, limit=NASTY_TEXT)
    def run(body, offset, limit):
        _assert_no_5xx(client.post(path, data=body, content_type="text/csv", headers=seeded.headers()), api=True)
        query = urlencode({"offset": offset, "limit": limit}, encoding="utf-8", errors="surrogatepass")
        _assert_no_5xx(client.get(f"{path}?{query}", headers=seeded.headers()), api=True)

    run()
