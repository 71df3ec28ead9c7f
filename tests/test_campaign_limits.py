"""Campaign limits: the per-campaign and per-agency concurrency caps of `claim_batch`,
and the estimated finish time of `progress` (service and GET /api/v1/campaigns/<id>).

claim_batch needs no HTTP: attempts stay "claimed" (live) until the test ends them
through the dispatcher's own transitions (finish_attempt, abort_attempt, reconcile).
"""
from __future__ import annotations

import re
import uuid
from datetime import datetime, timedelta, timezone

from sqlalchemy import func, select, update

from telephony.models import Campaign, CampaignContact, DialAttempt, utcnow
from telephony.services.campaigns import claim, dial, outcomes
from telephony.services.campaigns import manage as campaign_service
from telephony.services.campaigns.attempts import LIVE_ATTEMPT_STATES
from tests.outbound_helpers import attempts, claim_concurrently, contacts_by_phone, create_campaign, seed_agency

LONG_AGO = "2020-01-01T00:00:00+00:00"
ISO_8601 = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:\d{2})$")


def _contacts(count: int, first: int = 1000) -> list[dict]:
    return [{"phone": f"+1415555{i:04d}"} for i in range(first, first + count)]


def _campaign(app, seeded, count: int, *, max_concurrent: int = 1000, agency_cap: int | None = None,
              calls_per_second: int = 50, **overrides) -> uuid.UUID:
    pacing = {"calls_per_second": calls_per_second, "max_concurrent": max_concurrent,
              "max_concurrent_agency": agency_cap}
    created = create_campaign(app.test_client(), seeded, _contacts(count), pacing=pacing, **overrides)
    assert created["import_report"]["added"] == count
    return uuid.UUID(created["id"])


def _claim(app, campaign_id: uuid.UUID, limit: int = 100, *, now: datetime | None = None) -> list[uuid.UUID]:
    db = app.extensions["telephony.db"]
    with app.app_context(), db.session() as session:
        return claim.claim_batch(session, campaign_id, limit, now=now)


def _live(app, *, agency_id: uuid.UUID | None = None, campaign_id: uuid.UUID | None = None) -> int:
    conditions = [DialAttempt.state.in_(LIVE_ATTEMPT_STATES)]
    if agency_id is not None:
        conditions.append(DialAttempt.agency_id == agency_id)
    if campaign_id is not None:
        conditions.append(DialAttempt.campaign_id == campaign_id)
    with app.extensions["telephony.db"].session() as session:
        return session.scalar(select(func.count()).select_from(DialAttempt).where(*conditions))


def _set_attempt_state(app, attempt_id: uuid.UUID, state: str) -> None:
    """What the dialer does between claiming and the carrier's answer (no HTTP here)."""
    with app.extensions["telephony.db"].session() as session:
        session.execute(update(DialAttempt).where(DialAttempt.id == attempt_id)
                        .values(state=state, dial_started_at=utcnow(), state_changed_at=utcnow()))


# -- concurrency caps --------------------------------------------------------------------


def test_agency_cap_holds_across_two_campaigns_of_one_agency(app):
    seeded = seed_agency(app)
    first = _campaign(app, seeded, 8, max_concurrent=50, agency_cap=5)
    second = _campaign(app, seeded, 8, max_concurrent=50, agency_cap=5)
    got = []
    for campaign_id in (first, second) * 4:
        got.append(len(_claim(app, campaign_id, 2)))
        assert _live(app, agency_id=seeded.agency_id) <= 5
    # 2 + 2, then only 1 slot is left for the agency, then none for either campaign.
    assert got == [2, 2, 1, 0, 0, 0, 0, 0]
    assert _claim(app, first, 100) == [] and _claim(app, second, 100) == []
    assert _live(app, campaign_id=first) == 3 and _live(app, campaign_id=second) == 2
    # No attempt rows beyond the live ones were written, and each live one holds one contact.
    rows = attempts(app, first) + attempts(app, second)
    assert len(rows) == 5 and {a.state for a in rows} == {"claimed"}
    assert len({a.contact_id for a in rows}) == 5
    dialing = [c for cid in (first, second) for c in contacts_by_phone(app, cid).values() if c.state == "dialing"]
    assert len(dialing) == 5 and all(c.attempts == 1 for c in dialing)


def test_agency_cap_frees_slots_when_attempts_end(app):
    seeded = seed_agency(app)
    first = _campaign(app, seeded, 8, max_concurrent=50, agency_cap=5)
    second = _campaign(app, seeded, 8, max_concurrent=50, agency_cap=5)
    claimed = _claim(app, first, 3) + _claim(app, second, 100)
    assert len(claimed) == 5
    a1, a2, a3, a4, _a5 = claimed
    db = app.extensions["telephony.db"]
    # a1 is answered and completes; a2 never reaches the carrier (aborted, contact re-queued);
    # a3 and a4 move on in the dial but stay live.
    _set_attempt_state(app, a1, "placed")
    _set_attempt_state(app, a3, "dialing")
    _set_attempt_state(app, a4, "placed")
    with db.session() as session:
        assert outcomes.finish_attempt(session, a1, "completed")
        dial.abort_attempt(session, session.get(DialAttempt, a2), reason="test: never dialled")
    states = {a.id: a.state for a in attempts(app, first) + attempts(app, second)}
    assert [states[a] for a in claimed] == ["ended", "aborted", "dialing", "placed", "claimed"]
    assert _live(app, agency_id=seeded.agency_id) == 3
    # Exactly the two freed slots can be claimed again, whichever campaign asks.
    assert len(_claim(app, second, 100)) == 2
    assert _claim(app, first, 100) == [] and _claim(app, second, 100) == []
    assert _live(app, agency_id=seeded.agency_id) == 5
    # Time passes: the reaper ends every live attempt (claimed: aborted and re-queued,
    # dialing without carrier id: unknown, placed and silent: expired). None of those
    # states is live, so the whole cap is free again.
    with db.session() as session:
        stats = outcomes.reconcile(session, outcomes.DispatchSettings(claim_timeout=timedelta(0),
                                                                       dial_timeout=timedelta(0),
                                                                       live_timeout=timedelta(0)),
                                   now=utcnow() + timedelta(seconds=1))
    assert stats["requeued"] == 3 and stats["unknown"] == 1 and stats["expired"] == 1
    assert _live(app, agency_id=seeded.agency_id) == 0
    later = utcnow() + timedelta(seconds=2)
    assert len(_claim(app, first, 100, now=later)) == 5
    assert _claim(app, second, 100, now=later) == []
    assert _live(app, agency_id=seeded.agency_id) == 5


def test_another_agencys_live_attempts_do_not_count_against_the_cap(app):
    a = seed_agency(app, name="A")
    b = seed_agency(app, name="B", number="+14155550177")
    b_campaign = _campaign(app, b, 10, max_concurrent=50, agency_cap=7)
    assert len(_claim(app, b_campaign, 6)) == 6
    a_campaign = _campaign(app, a, 10, max_concurrent=50, agency_cap=3)
    # B's 6 live attempts leave A's cap of 3 untouched ...
    assert len(_claim(app, a_campaign, 100)) == 3
    assert _claim(app, a_campaign, 100) == []
    # ... and A's 3 do not eat into B's cap of 7: B has exactly one slot left.
    assert len(_claim(app, b_campaign, 100)) == 1
    assert _claim(app, b_campaign, 100) == []
    assert _live(app, agency_id=a.agency_id) == 3 and _live(app, agency_id=b.agency_id) == 7
    assert {x.agency_id for x in attempts(app, a_campaign)} == {a.agency_id}
    assert {x.agency_id for x in attempts(app, b_campaign)} == {b.agency_id}


def test_campaign_cap_alone_and_together_with_the_agency_cap(app):
    seeded = seed_agency(app)
    capped = _campaign(app, seeded, 10, max_concurrent=4)          # no agency cap
    assert len(_claim(app, capped, 1)) == 1                         # `limit` below the free slots
    assert len(_claim(app, capped, 100)) == 3
    assert _claim(app, capped, 100) == []
    # A campaign's cap is its own: a sibling campaign is not held back by these 4.
    sibling = _campaign(app, seeded, 10, max_concurrent=2)
    assert len(_claim(app, sibling, 100)) == 2
    assert _claim(app, sibling, 100) == []
    # One call of the capped campaign ends: exactly one more contact of it is claimed.
    ended = attempts(app, capped)[0].id
    _set_attempt_state(app, ended, "placed")
    with app.extensions["telephony.db"].session() as session:
        assert outcomes.finish_attempt(session, ended, "no-answer")
    assert _live(app, campaign_id=capped) == 3
    assert len(_claim(app, capped, 100)) == 1
    assert _claim(app, capped, 100) == []
    # Both caps together: the smaller one wins (campaign 2 < agency 5, then agency 5 - 2 = 3).
    other = seed_agency(app, name="Other", number="+14155550178")
    small = _campaign(app, other, 10, max_concurrent=2, agency_cap=5)
    big = _campaign(app, other, 10, max_concurrent=50, agency_cap=5)
    assert len(_claim(app, small, 100)) == 2
    assert len(_claim(app, big, 100)) == 3
    assert _claim(app, small, 100) == [] and _claim(app, big, 100) == []


def test_agency_cap_holds_with_concurrent_claimers(app):
    """Several dispatchers (threads, own sessions) claim across both campaigns at once:
    the agency and campaign rows are locked while live attempts are counted, so the
    total is exactly the cap, never more."""
    seeded = seed_agency(app)
    campaigns = [_campaign(app, seeded, 10, max_concurrent=50, agency_cap=5) for _ in range(2)]
    claimed = claim_concurrently(app, campaigns)
    assert len(claimed) == 5 == len(set(claimed))
    assert _live(app, agency_id=seeded.agency_id) == 5
    rows = attempts(app, campaigns[0]) + attempts(app, campaigns[1])
    assert len(rows) == 5 and len({r.contact_id for r in rows}) == 5


# -- estimated finish time ---------------------------------------------------------------

NOW = datetime(2031, 5, 6, 7, 8, 9, tzinfo=timezone.utc)


def _progress(app, campaign_id: uuid.UUID, monkeypatch) -> dict:
    monkeypatch.setattr(campaign_service, "utcnow", lambda: NOW)
    try:
        with app.extensions["telephony.db"].session() as session:
            return campaign_service.progress(session, session.get(Campaign, campaign_id))
    finally:
        monkeypatch.undo()


def _set_contact_states(app, campaign_id: uuid.UUID, states: list[str]) -> list[uuid.UUID]:
    """Give the campaign's first contacts (by phone) these states; returns their ids."""
    with app.extensions["telephony.db"].session() as session:
        ids = list(session.scalars(select(CampaignContact.id).where(CampaignContact.campaign_id == campaign_id)
                                   .order_by(CampaignContact.phone)))
        for contact_id, state in zip(ids, states):
            session.execute(update(CampaignContact).where(CampaignContact.id == contact_id).values(state=state))
    return ids[:len(states)]


def _add_dialled_attempts(app, campaign_id: uuid.UUID, agency_id: uuid.UUID, contact_ids: list[uuid.UUID],
                          started: list[datetime]) -> None:
    with app.extensions["telephony.db"].session() as session:
        for contact_id, at in zip(contact_ids, started, strict=True):
            session.add(DialAttempt(id=uuid.uuid4(), campaign_id=campaign_id, contact_id=contact_id,
                                    agency_id=agency_id, attempt_number=1, state="ended", outcome="completed",
                                    created_at=at, state_changed_at=at, dial_started_at=at, ended_at=at))


def test_estimate_uses_the_configured_rate_without_recent_dials(app, monkeypatch):
    seeded = seed_agency(app)
    thirds = _campaign(app, seeded, 10, calls_per_second=3, start_at=LONG_AGO)
    fifths = _campaign(app, seeded, 10, calls_per_second=5, start_at=LONG_AGO)
    later = NOW + timedelta(hours=2)
    future = _campaign(app, seeded, 10, calls_per_second=3, start_at=later.isoformat())
    paused = _campaign(app, seeded, 10, calls_per_second=3, start_at=LONG_AGO, start=False)
    # 10 contacts at 3/s: ceil(3.33) = 4 s from now; at 5/s exactly 2 s (no rounding up).
    got = _progress(app, thirds, monkeypatch)
    assert got["estimated_finish_at"] == NOW + timedelta(seconds=4)
    assert got["contacts"]["queued"] == 10 and got["contacts_total"] == 10 and got["attempts"] == 0
    assert _progress(app, fifths, monkeypatch)["estimated_finish_at"] == NOW + timedelta(seconds=2)
    # Not started yet: counted from start_at, not from now.
    assert _progress(app, future, monkeypatch)["estimated_finish_at"] == later + timedelta(seconds=4)
    # A paused campaign with contacts left gets the same estimate (as if resumed now).
    assert _progress(app, paused, monkeypatch)["estimated_finish_at"] == NOW + timedelta(seconds=4)


def test_estimate_uses_the_rate_observed_over_the_last_five_minutes(app, monkeypatch):
    seeded = seed_agency(app)
    campaign_id = _campaign(app, seeded, 20, calls_per_second=50, start_at=LONG_AGO)
    done = _set_contact_states(app, campaign_id, ["completed"] * 8)
    window_start = NOW - timedelta(minutes=5)
    # 7 dials inside the window (one exactly at its start), one just before it.
    started = [window_start, NOW - timedelta(minutes=4), NOW - timedelta(minutes=3), NOW - timedelta(minutes=2),
               NOW - timedelta(minutes=1), NOW - timedelta(seconds=30), NOW - timedelta(seconds=1),
               window_start - timedelta(seconds=1)]
    _add_dialled_attempts(app, campaign_id, seeded.agency_id, done, started)
    # Another campaign's recent dials do not count for this one.
    other = _campaign(app, seeded, 3, calls_per_second=50, start_at=LONG_AGO)
    other_done = _set_contact_states(app, other, ["completed"] * 3)
    _add_dialled_attempts(app, other, seeded.agency_id, other_done, [NOW - timedelta(seconds=10)] * 3)
    # Two contacts are being dialled right now (claimed: not started, so not in the rate).
    assert len(_claim(app, campaign_id, 2, now=NOW)) == 2
    got = _progress(app, campaign_id, monkeypatch)
    assert got["contacts"]["queued"] == 10 and got["contacts"]["dialing"] == 2
    assert got["attempts"] == 10 and got["attempts_by_state"] == {"ended": 8, "claimed": 2}
    # 12 remaining at 7 per 300 s: 514.29 s, rounded up. (At the configured 50/s it would be 1 s.)
    assert got["estimated_finish_at"] == NOW + timedelta(seconds=515)


def test_estimate_of_a_young_campaign_uses_the_time_since_its_first_dial(app, monkeypatch):
    """50 dials in the 10 s since the campaign began: 5 per second, not 50 per 300 s."""
    seeded = seed_agency(app)
    campaign_id = _campaign(app, seeded, 60, calls_per_second=20, start_at=LONG_AGO)
    done = _set_contact_states(app, campaign_id, ["completed"] * 50)
    _add_dialled_attempts(app, campaign_id, seeded.agency_id, done,
                          [NOW - timedelta(seconds=10) + timedelta(seconds=i / 5) for i in range(50)])
    got = _progress(app, campaign_id, monkeypatch)
    assert got["contacts"]["queued"] == 10
    assert got["estimated_finish_at"] == NOW + timedelta(seconds=2)  # 10 remaining at 5/s


def test_estimate_when_nothing_remains_or_the_campaign_is_over(app, monkeypatch):
    seeded = seed_agency(app)
    # Running, every contact settled but not yet marked completed by the reconciler: now.
    settled = _campaign(app, seeded, 4, calls_per_second=1, start_at=LONG_AGO)
    _set_contact_states(app, settled, ["completed", "failed", "unknown", "suppressed"])
    got = _progress(app, settled, monkeypatch)
    assert got["contacts"]["queued"] == got["contacts"]["dialing"] == 0
    assert got["estimated_finish_at"] == NOW
    # Running without any contact: now as well.
    assert _progress(app, _campaign(app, seeded, 0, start_at=LONG_AGO), monkeypatch)["estimated_finish_at"] == NOW
    # Paused with nothing remaining: no estimate.
    paused = _campaign(app, seeded, 2, start_at=LONG_AGO, start=False)
    _set_contact_states(app, paused, ["completed", "completed"])
    assert _progress(app, paused, monkeypatch)["estimated_finish_at"] is None
    # Cancelled: no estimate, even with a call still being dialled.
    cancelled = _campaign(app, seeded, 3, start_at=LONG_AGO)
    assert len(_claim(app, cancelled, 1)) == 1
    client = app.test_client()
    assert client.post(f"/api/v1/campaigns/{cancelled}/cancel", headers=seeded.headers()).status_code == 200
    got = _progress(app, cancelled, monkeypatch)
    assert got["contacts"]["dialing"] == 1 and got["contacts"]["cancelled"] == 2
    assert got["estimated_finish_at"] is None
    # Completed (by the reconciler): the completion time itself.
    with app.extensions["telephony.db"].session() as session:
        assert outcomes.complete_finished_campaigns(session) == 1  # `settled`; `paused` is not running
    with app.extensions["telephony.db"].session() as session:
        completed = session.get(Campaign, settled)
        assert completed.status == "completed" and completed.completed_at is not None
        completed_at = completed.completed_at
    assert _progress(app, settled, monkeypatch)["estimated_finish_at"] == completed_at != NOW


def test_api_reports_the_estimate_as_iso_8601(app):
    seeded = seed_agency(app)
    client = app.test_client()
    running = _campaign(app, seeded, 10, calls_per_second=3, start_at=LONG_AGO)
    before = utcnow()
    response = client.get(f"/api/v1/campaigns/{running}", headers=seeded.headers())
    after = utcnow()
    assert response.status_code == 200, response.json
    raw = response.json["progress"]["estimated_finish_at"]
    assert isinstance(raw, str) and ISO_8601.match(raw), raw
    estimated = datetime.fromisoformat(raw)
    assert estimated.utcoffset() == timedelta(0)
    # now + ceil(10 / 3) s, `now` being read while the request was served.
    assert before + timedelta(seconds=4) <= estimated <= after + timedelta(seconds=4)

    done = _campaign(app, seeded, 2, start_at=LONG_AGO)
    _set_contact_states(app, done, ["completed", "failed"])
    with app.extensions["telephony.db"].session() as session:
        assert outcomes.complete_finished_campaigns(session) == 1
    body = client.get(f"/api/v1/campaigns/{done}", headers=seeded.headers()).json
    assert body["status"] == "completed" and ISO_8601.match(body["progress"]["estimated_finish_at"])
    assert datetime.fromisoformat(body["progress"]["estimated_finish_at"]) == \
        datetime.fromisoformat(body["completed_at"])
    # Another agency cannot read it.
    stranger = seed_agency(app, name="Stranger", number="+14155550179")
    assert client.get(f"/api/v1/campaigns/{running}", headers=stranger.headers()).status_code == 404
