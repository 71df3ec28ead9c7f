import threading
from datetime import timedelta

import pytest
from sqlalchemy import select, update

from telephony.models import Job, utcnow
from telephony.worker import HANDLERS, RetryLater, Worker, claim_jobs, enqueue, job_handler, run_job


@pytest.fixture
def recorded():
    calls = []

    @job_handler("test.record")
    def record(app, payload):
        calls.append(payload)
        if payload.get("fail"):
            raise RuntimeError("boom")
        if payload.get("later"):
            raise RetryLater(30, "upstream busy")

    yield calls
    HANDLERS.pop("test.record", None)


def test_a_queued_job_runs_once(app, db, recorded):
    with db.session() as session:
        enqueue(session, "test.record", {"n": 1})
    worker = Worker(app)
    assert worker.run_once() == 1
    assert worker.run_once() == 0
    assert recorded == [{"n": 1}]
    with db.session() as session:
        job = session.scalar(select(Job))
        assert job.status == "done" and job.attempts == 1


def test_failures_back_off_then_fail_for_good(app, db, recorded):
    with db.session() as session:
        job_id = enqueue(session, "test.record", {"fail": True}, max_attempts=2).id
    for expected in ("queued", "failed"):
        [job] = claim_jobs(db, limit=1)
        assert run_job(app, db, job) == expected
        with db.session() as session:
            row = session.get(Job, job_id)
            assert "boom" in row.last_error
            if expected == "queued":
                assert row.run_at > utcnow() + timedelta(seconds=3)
                session.execute(update(Job).where(Job.id == job_id).values(run_at=utcnow()))


def test_retry_later_does_not_use_up_attempts(app, db, recorded):
    with db.session() as session:
        job_id = enqueue(session, "test.record", {"later": True}, max_attempts=1).id
    [job] = claim_jobs(db)
    assert run_job(app, db, job) == "queued"
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


def test_expired_lease_is_claimed_again(app, db, recorded):
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
    claimed: list[list[int]] = []
    errors: list[BaseException] = []
    barrier = threading.Barrier(4)

    def claim():
        barrier.wait()
        mine = []
        try:
            while True:
                jobs = claim_jobs(db, limit=5)
                if not jobs:
                    break
                mine.extend(job.id for job in jobs)
        except BaseException as exc:  # surfaced below: a thread's error must fail the test
            errors.append(exc)
        claimed.append(mine)

    threads = [threading.Thread(target=claim) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    every = [job_id for mine in claimed for job_id in mine]
    assert len(every) == 60 and len(set(every)) == 60
