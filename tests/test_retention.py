"""Expired bookkeeping rows are purged (services/retention.py); everything else stays."""
from __future__ import annotations

import json
import logging
import uuid
from datetime import timedelta

from sqlalchemy import select

from telephony.models import (
    EventDelivery,
    EventEndpoint,
    IdempotencyKey,
    Job,
    ProcessedWebhookEvent,
    RateLimitWindow,
    utcnow,
)
from telephony.services import retention
from telephony.services.agencies import create_agency
from telephony.worker import Worker

DAY = timedelta(days=1)


def seed(db, now):
    """Per table: rows that have expired (names start with "old") and rows that must stay."""
    with db.session() as session:
        agency = create_agency(session, "Retention Agency")
        endpoint = EventEndpoint(agency_id=agency.id, url="https://hooks.example.test/events", events=["call.ended"],
                                 secret_ciphertext="sealed")
        session.add(endpoint)
        session.flush()
        for name, received in [("old-1", now - 31 * DAY), ("old-2", now - 400 * DAY), ("recent", now - 29 * DAY)]:
            session.add(ProcessedWebhookEvent(provider="test", event_key=name, agency_id=agency.id,
                                              received_at=received))
        for status, created in [("delivered", now - 31 * DAY), ("failed", now - 31 * DAY),
                                ("pending", now - 90 * DAY), ("delivered", now - DAY)]:
            session.add(EventDelivery(agency_id=agency.id, endpoint_id=endpoint.id, event_id=uuid.uuid4(),
                                      event_type="call.ended", payload=json.dumps({"status": status}),
                                      status=status, created_at=created))
        for kind, status, finished in [("old-done", "done", now - 31 * DAY), ("old-failed", "failed", now - 31 * DAY),
                                       ("queued", "queued", None), ("running", "running", None),
                                       ("recent-done", "done", now - DAY)]:
            session.add(Job(kind=kind, status=status, finished_at=finished, run_at=now - 60 * DAY,
                            created_at=now - 60 * DAY))
        for key, created in [("old-done", now - 25 * timedelta(hours=1)), ("recent", now - timedelta(hours=23))]:
            session.add(IdempotencyKey(agency_id=agency.id, key=key, request_hash="0" * 64, state="done",
                                       created_at=created))
        epoch = int(now.timestamp())
        for bucket, start in [("old", epoch - 2 * 86400), ("current", epoch - epoch % 5)]:
            session.add(RateLimitWindow(bucket=bucket, window_start=start, count=3))


def test_purge_deletes_only_what_has_expired(db):
    now = utcnow()
    seed(db, now)

    deleted = retention.purge_expired(db, 30, now=now)

    assert deleted == {"processed_webhook_events": 2, "event_deliveries": 2, "jobs": 2, "idempotency_keys": 1,
                       "rate_limit_windows": 1}
    with db.session() as session:
        assert session.scalars(select(ProcessedWebhookEvent.event_key)).all() == ["recent"]
        assert sorted((d.status, d.created_at > now - 2 * DAY) for d in session.scalars(select(EventDelivery))) == [
            ("delivered", True), ("pending", False)]
        assert sorted(session.scalars(select(Job.kind))) == ["queued", "recent-done", "running"]
        assert session.scalars(select(IdempotencyKey.key)).all() == ["recent"]
        assert session.scalars(select(RateLimitWindow.bucket)).all() == ["current"]
    # Nothing left to do: a second purge (another worker, the next hour) deletes nothing.
    assert set(retention.purge_expired(db, 30, now=now).values()) == {0}


def test_retention_days_set_the_cutoff(db):
    now = utcnow()
    seed(db, now)
    assert retention.purge_expired(db, 365, now=now)["processed_webhook_events"] == 1  # only the 400-day one
    assert retention.purge_expired(db, 10, now=now)["processed_webhook_events"] == 2  # the 29-day one too


def test_a_backlog_is_deleted_in_batches(db):
    now = utcnow()
    with db.session() as session:
        for n in range(7):
            session.add(ProcessedWebhookEvent(provider="test", event_key=f"e{n}", received_at=now - 60 * DAY))
    assert retention.purge_expired(db, 30, now=now, batch_size=3)["processed_webhook_events"] == 7
    with db.session() as session:
        assert session.scalars(select(ProcessedWebhookEvent)).all() == []


def test_each_worker_purges_once_per_interval(app, db):
    now = utcnow()
    worker = Worker(app, maintenance_interval=100.0)
    start = worker._next_maintenance  # a random moment within the first interval

    assert worker.maintain_if_due(start - 1) is False
    seed(db, now)
    assert worker.maintain_if_due(start) is True
    with db.session() as session:
        assert session.scalars(select(ProcessedWebhookEvent.event_key)).all() == ["recent"]
        session.add(ProcessedWebhookEvent(provider="test", event_key="expired-meanwhile", received_at=now - 60 * DAY))
    assert worker.maintain_if_due(start + 99) is False
    assert worker.maintain_if_due(start + 100) is True
    with db.session() as session:
        assert session.scalars(select(ProcessedWebhookEvent.event_key)).all() == ["recent"]


def test_a_failing_purge_is_logged_and_does_not_stop_the_worker(app, monkeypatch, caplog):
    def broken(*_args, **_kwargs):
        raise RuntimeError("database unreachable")

    monkeypatch.setattr(retention, "purge_expired", broken)
    worker = Worker(app)
    with caplog.at_level(logging.ERROR, logger="telephony.services.retention"):
        assert worker.maintain_if_due(worker._next_maintenance) is True
    assert "purging expired bookkeeping rows failed" in caplog.text


def test_cli_purges_on_demand_with_the_configured_retention(app, db):
    now = utcnow()
    seed(db, now)
    result = app.test_cli_runner().invoke(args=["maintenance", "purge"], catch_exceptions=False)
    assert result.exit_code == 0
    assert json.loads(result.output)["processed_webhook_events"] == 2  # config default: 30 days
