"""Calls a crash left unfinished are settled from Ultravox (issue: hardening, item 9)."""
from __future__ import annotations

import json
import uuid
from datetime import timedelta

import pytest
import responses
from sqlalchemy import func, select, update

from telephony.models import Call, EventDelivery, utcnow
from telephony.services.stale_calls import STALE_AFTER, reconcile_stale_calls

from .lifecycle_support import ULTRAVOX_KEY, add_call, get_call, set_ultravox_credentials, snapshot

BASE = "https://api.ultravox.ai"


@pytest.fixture
def tenant(app, db, make_tenant):
    tenant = make_tenant("Acme")
    set_ultravox_credentials(app, db, tenant.agency_id)
    return tenant


def age(db, call_id: uuid.UUID, by: timedelta) -> None:
    with db.session() as session:
        session.execute(update(Call).where(Call.id == call_id).values(created_at=utcnow() - by))


def run(app, db):
    return reconcile_stale_calls(db, app.extensions["telephony.credentials"], app.extensions["telephony.config"])


def ultravox_answers(rsps, uv_id: str, status: int, body: dict | None = None) -> None:
    rsps.add(responses.GET, f"{BASE}/api/calls/{uv_id}", status=status, json=body or {"detail": "Not found."},
             match=[responses.matchers.header_matcher({"X-API-Key": ULTRAVOX_KEY})])


def test_each_kind_of_stale_call_is_settled_and_fresh_ones_are_left(app, db, tenant):
    old = STALE_AFTER + timedelta(minutes=1)
    answered, unanswered, gone, running, fresh = (str(uuid.uuid4()) for _ in range(5))
    ids = {name: add_call(db, tenant.agency_id, ultravox_call_id=uv) for name, uv in
           (("answered", answered), ("unanswered", unanswered), ("gone", gone), ("running", running),
            ("fresh", fresh))}
    ids["never"] = add_call(db, tenant.agency_id, ultravox_call_id=None, status="unknown")
    for name in ("answered", "unanswered", "gone", "running", "never"):
        age(db, ids[name], old)
    ended = utcnow() - timedelta(minutes=2)
    with responses.RequestsMock() as rsps:
        ultravox_answers(rsps, answered, 200, snapshot(answered, joined=ended - timedelta(seconds=42), ended=ended,
                                                       end_reason="hangup", summary="Booked."))
        ultravox_answers(rsps, unanswered, 200, snapshot(unanswered, ended=ended, end_reason="unjoined"))
        ultravox_answers(rsps, gone, 404)
        ultravox_answers(rsps, running, 200, snapshot(running, joined=utcnow()))
        report = run(app, db)  # "fresh" is never asked about: responses fails on any unexpected request
    assert (report.ended, report.not_found, report.never_started, report.still_running) == (2, 1, 1, 1)
    call = get_call(db, ids["answered"])
    assert (call.status, call.end_reason, call.duration_seconds, call.summary) == ("completed", "hangup", 42, "Booked.")
    assert (get_call(db, ids["unanswered"]).status, get_call(db, ids["unanswered"]).end_reason) == ("failed",
                                                                                                   "unjoined")
    assert (get_call(db, ids["gone"]).status, get_call(db, ids["gone"]).end_reason) == ("failed",
                                                                                        "not_found_in_ultravox")
    assert (get_call(db, ids["never"]).status, get_call(db, ids["never"]).end_reason) == ("failed", "never_started")
    assert get_call(db, ids["running"]).status == "created" and get_call(db, ids["fresh"]).status == "created"
    with responses.RequestsMock() as rsps:
        ultravox_answers(rsps, running, 200, snapshot(running, joined=utcnow()))
        again = run(app, db)  # only the running one is asked again; the rest stay settled
    assert (again.ended, again.not_found, again.never_started, again.still_running) == (0, 0, 0, 1)


def test_a_webhook_that_settles_the_call_first_wins(app, db, tenant, client):
    uv_id = str(uuid.uuid4())
    call_id = add_call(db, tenant.agency_id, ultravox_call_id=uv_id)
    age(db, call_id, STALE_AFTER * 2)
    with db.session() as session:  # the call.ended webhook landed between the read and the write
        session.execute(update(Call).where(Call.id == call_id).values(status="completed", end_reason="hangup"))
    with responses.RequestsMock(assert_all_requests_are_fired=False) as rsps:
        ultravox_answers(rsps, uv_id, 404)
        report = run(app, db)
    assert report.not_found == 0 and get_call(db, call_id).end_reason == "hangup"


def test_ultravox_down_or_no_key_leaves_the_call_for_the_next_pass(app, db, tenant, make_tenant):
    uv_id = str(uuid.uuid4())
    call_id = add_call(db, tenant.agency_id, ultravox_call_id=uv_id)
    keyless = make_tenant("No key")
    other_id = add_call(db, keyless.agency_id, ultravox_call_id=str(uuid.uuid4()))
    for cid in (call_id, other_id):
        age(db, cid, STALE_AFTER * 2)
    with responses.RequestsMock() as rsps:
        rsps.add(responses.GET, f"{BASE}/api/calls/{uv_id}", status=503, body=json.dumps({"detail": "busy"}))
        report = run(app, db)
    assert report.unreachable == 2
    assert get_call(db, call_id).status == "created" and get_call(db, other_id).status == "created"
    with db.session() as session:
        assert session.scalar(select(func.count()).select_from(EventDelivery)) == 0


def test_every_worker_runs_the_pass_on_its_interval(app, db, tenant):
    from telephony.worker import Worker

    call_id = add_call(db, tenant.agency_id, ultravox_call_id=None)
    age(db, call_id, STALE_AFTER * 2)
    worker = Worker(app, stale_check_interval=300)
    try:
        due = worker._next_stale_check
        assert worker.settle_stale_calls_if_due(due - 1) is False
        assert get_call(db, call_id).status == "created"
        assert worker.settle_stale_calls_if_due(due) is True
        assert get_call(db, call_id).status == "failed" and get_call(db, call_id).end_reason == "never_started"
        assert worker.settle_stale_calls_if_due(due + 299) is False  # not again before the interval
    finally:
        worker.shutdown()


def test_calls_that_cannot_be_settled_yet_do_not_block_the_ones_behind_them(app, db, tenant, make_tenant,
                                                                           monkeypatch):
    monkeypatch.setattr("telephony.services.stale_calls.BATCH", 2)
    keyless = make_tenant("No key")
    blocked = [add_call(db, keyless.agency_id, ultravox_call_id=str(uuid.uuid4())) for _ in range(2)]
    behind = add_call(db, tenant.agency_id, ultravox_call_id=None)
    for n, call_id in enumerate([*blocked, behind]):
        age(db, call_id, STALE_AFTER * 3 - timedelta(minutes=n))  # oldest first: blocked, then behind
    first = run(app, db)
    assert first.unreachable == 2 and first.resume_after is not None
    second = reconcile_stale_calls(db, app.extensions["telephony.credentials"], app.extensions["telephony.config"],
                                   after=first.resume_after)
    assert second.never_started == 1 and second.resume_after is None  # reached the end: from the oldest next
    assert get_call(db, behind).status == "failed"
    assert [get_call(db, call_id).status for call_id in blocked] == ["created", "created"]
