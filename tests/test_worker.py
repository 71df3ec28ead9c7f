import socket
import uuid
from datetime import timedelta

import pytest
import responses
from flask import has_app_context
from sqlalchemy import select, update

from telephony.jobs import RetryLater, claim_jobs, enqueue, run_job
from telephony.models import Call, EventDelivery, Job, utcnow
from telephony.services import enrichment, events
from telephony.services.campaigns import imports as contact_imports
from telephony.services.enrichment import schedule_enrichment
from telephony.services.events import emit_event
from telephony.worker import JOB_HANDLERS, Worker, job_context

from .jobs_support import claim_from_threads
from .lifecycle_support import ULTRAVOX_KEY, add_call, get_call, set_ultravox_credentials, verify_standard_webhook


class Recorder:
    """A handler table with one kind, test.record, whose handler records its payloads."""

    def __init__(self):
        self.calls = []
        self.handlers = {"test.record": self.record}

    def record(self, context, payload):
        self.calls.append(payload)
        if payload.get("fail"):
            raise RuntimeError("boom")
        if payload.get("later"):
            raise RetryLater(30, "upstream busy")


@pytest.fixture
def recorder():
    return Recorder()


def test_a_queued_job_runs_once(app, db, recorder):
    with db.session() as session:
        enqueue(session, "test.record", {"n": 1})
    worker = Worker(app, handlers=recorder.handlers)
    assert worker.run_once() == 1
    assert worker.run_once() == 0
    assert recorder.calls == [{"n": 1}]
    with db.session() as session:
        job = session.scalar(select(Job))
        assert job.status == "done" and job.attempts == 1


def test_failures_back_off_then_fail_for_good(app, db, recorder):
    with db.session() as session:
        job_id = enqueue(session, "test.record", {"fail": True}, max_attempts=2).id
    for expected in ("queued", "failed"):
        [job] = claim_jobs(db, limit=1)
        assert run_job(job_context(app), recorder.handlers, job) == expected
        with db.session() as session:
            row = session.get(Job, job_id)
            assert "boom" in row.last_error
            if expected == "queued":
                assert row.run_at > utcnow() + timedelta(seconds=3)
                session.execute(update(Job).where(Job.id == job_id).values(run_at=utcnow()))


def test_retry_later_does_not_use_up_attempts(app, db, recorder):
    with db.session() as session:
        job_id = enqueue(session, "test.record", {"later": True}, max_attempts=1).id
    [job] = claim_jobs(db)
    assert run_job(job_context(app), recorder.handlers, job) == "queued"
    with db.session() as session:
        row = session.get(Job, job_id)
        assert row.attempts == 0 and row.status == "queued"
        assert row.run_at > utcnow() + timedelta(seconds=25)


def test_unknown_kind_fails_without_stopping_the_worker(app, db):
    with db.session() as session:
        enqueue(session, "nobody.handles.this")
    assert Worker(app).run_once() == 1
    with db.session() as session:
        assert session.scalar(select(Job.status)) == "failed"


def test_expired_lease_is_claimed_again(app, db):
    with db.session() as session:
        job_id = enqueue(session, "test.record", {"n": 2}).id
    assert len(claim_jobs(db, lease_seconds=300)) == 1
    assert claim_jobs(db) == []  # leased
    with db.session() as session:  # the worker holding it died; its lease runs out
        session.execute(update(Job).where(Job.id == job_id).values(locked_until=utcnow() - timedelta(seconds=1)))
    [again] = claim_jobs(db)
    assert again.id == job_id and again.attempts == 2


def test_concurrent_claims_never_share_a_job(app, db):
    with db.session() as session:
        for n in range(60):
            enqueue(session, "test.none", {"n": n})

    def claim_all() -> list[int]:
        mine = []
        while jobs := claim_jobs(db, limit=5):
            mine.extend(job.id for job in jobs)
        return mine

    every = claim_from_threads(claim_all)
    assert len(every) == 60 and len(set(every)) == 60


def test_the_worker_runs_every_kind_of_job_with_its_handler(app):
    assert JOB_HANDLERS == {events.DELIVER_JOB: events.deliver, enrichment.ENRICH_JOB: enrichment.enrich_call,
                            contact_imports.IMPORT_JOB: contact_imports.run_import}
    worker = Worker(app)
    assert worker.handlers is JOB_HANDLERS
    assert (worker.context.db.engine, worker.context.config, worker.context.credentials) == (
        app.extensions["telephony.db"].engine, app.extensions["telephony.config"],
        app.extensions["telephony.credentials"])


# -- the real handlers need no Flask app context: anything reaching for current_app
# -- would raise, and the job would be queued for a retry instead of done.

def _run_due_jobs_without_an_app_context(app, db) -> list[str]:
    assert not has_app_context()
    context = job_context(app)
    return [run_job(context, JOB_HANDLERS, job) for job in claim_jobs(db)]


def test_an_event_is_delivered_without_an_app_context(app, client, db, make_tenant, monkeypatch):
    real_getaddrinfo = socket.getaddrinfo

    def offline_dns(host, *args, **kwargs):  # the endpoint's host is public, and no DNS is asked
        if host == "hooks.example.com":
            return [(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", ("93.184.215.14", 443))]
        return real_getaddrinfo(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", offline_dns)
    tenant = make_tenant()
    url = "https://hooks.example.com/events"
    created = client.post("/api/v1/event-endpoints", json={"url": url, "events": ["call.ended"]},
                          headers=tenant.admin()).json
    with db.session() as session:
        emit_event(session, tenant.agency_id, "call.ended", {"call_id": "c-1"})
    with responses.RequestsMock() as mock:
        mock.add(responses.POST, url, status=204)
        assert _run_due_jobs_without_an_app_context(app, db) == ["done"]
        [sent] = mock.calls
    headers = {name.lower(): value for name, value in sent.request.headers.items()}
    assert verify_standard_webhook(created["secret"], headers, sent.request.body)  # unsealed from the context
    with db.session() as session:
        assert session.scalar(select(EventDelivery.status)) == "delivered"
        assert session.scalar(select(Job.last_error)) is None


def test_a_call_is_enriched_without_an_app_context(app, db, make_tenant):
    tenant = make_tenant()
    set_ultravox_credentials(app, db, tenant.agency_id)
    ultravox_call_id = str(uuid.uuid4())
    call_id = add_call(db, tenant.agency_id, ultravox_call_id=ultravox_call_id, status="completed")
    with db.session() as session:
        schedule_enrichment(session, session.get(Call, call_id))
    base = f"{app.extensions['telephony.config'].ultravox_api_base}/api/calls/{ultravox_call_id}"
    messages = [{"role": "MESSAGE_ROLE_AGENT", "text": "Hello"}, {"role": "MESSAGE_ROLE_USER", "text": "Hi"}]
    with responses.RequestsMock() as mock:
        mock.add(responses.GET, f"{base}/messages", json={"results": messages, "next": None})
        mock.add(responses.GET, base, json={"callId": ultravox_call_id, "summary": "A greeting.",
                                            "shortSummary": "Hello."})
        mock.add(responses.GET, f"{base}/recording", status=302,
                 headers={"Location": "https://storage.example.com/recording.wav"})
        assert _run_due_jobs_without_an_app_context(app, db) == ["done"]
        assert [sent.request.headers["X-API-Key"] for sent in mock.calls] == [ULTRAVOX_KEY] * 3
    call = get_call(db, call_id)
    assert call.transcript == messages and (call.summary, call.short_summary) == ("A greeting.", "Hello.")
    assert call.has_recording is True and call.enriched_at is not None
