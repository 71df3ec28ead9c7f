"""The call.enrich job against the Ultravox simulator: transcript pages, summaries, recording, retries."""
import uuid
from datetime import timedelta

import pytest
import requests
from sqlalchemy import select, update

from telephony.jobs import enqueue
from telephony.models import Call, Job, utcnow
from telephony.services.enrichment import ENRICH_JOB, schedule_enrichment
from telephony.ultravox import UltravoxClient
from telephony.worker import Worker

from .lifecycle_support import ULTRAVOX_KEY, UV_AGENT, add_call, get_call, set_ultravox_credentials


@pytest.fixture
def db(sim_app):
    return sim_app.extensions["telephony.db"]


@pytest.fixture
def sim(ultravox_sim):
    class Sim:
        base_url = ultravox_sim.base_url

        def post(self, path: str, body: dict | None = None) -> dict:
            response = requests.post(f"{self.base_url}{path}", json=body or {}, timeout=5)
            response.raise_for_status()
            return response.json()

        def fail(self, path: str, **rule) -> None:
            self.post("/_sim/failures", {"failures": [{"path_prefix": path, **rule}]})

        def requests_to(self, path: str) -> int:
            log = requests.get(f"{self.base_url}/_sim/requests", timeout=5).json()["requests"]
            return sum(1 for entry in log if entry["path"] == path)

    return Sim()


@pytest.fixture
def ended_call(sim_app, db, sim, make_tenant):
    """An Ultravox call (in the simulator) that has ended, our row for it, and its enrichment queued."""
    tenant = make_tenant()
    set_ultravox_credentials(sim_app, db, tenant.agency_id)
    client = UltravoxClient(ULTRAVOX_KEY, base_url=sim.base_url)

    def make(*, recording: bool = True, messages: int = 6) -> tuple[uuid.UUID, str]:
        uv_id = client.create_agent_call(UV_AGENT, {"medium": {"webRtc": {}}, "recordingEnabled": recording})["callId"]
        sim.post(f"/_sim/calls/{uv_id}/join")
        sim.post(f"/_sim/calls/{uv_id}/end", {"endReason": "hangup", "billedDuration": "42s", "messageCount": messages})
        call_id = add_call(db, tenant.agency_id, ultravox_call_id=uv_id, status="completed")
        with db.session() as session:
            schedule_enrichment(session, session.get(Call, call_id))
        return call_id, uv_id

    return make


def _jobs(db) -> list[Job]:
    with db.session() as session:
        return list(session.scalars(select(Job).where(Job.kind == ENRICH_JOB).order_by(Job.id)))


def _make_due(db) -> None:
    with db.session() as session:
        session.execute(update(Job).where(Job.status == "queued").values(run_at=utcnow()))


@pytest.mark.parametrize("recording_mode", ["redirect", "direct"])
def test_transcript_summaries_and_recording_are_stored(sim_app, db, sim, ended_call, recording_mode):
    sim.post("/_sim/config", {"recording_mode": recording_mode})
    call_id, uv_id = ended_call(messages=250)
    assert Worker(sim_app).run_once() == 1
    call = get_call(db, call_id)
    assert len(call.transcript) == 250  # every page (100 per page)
    assert [m["callStageMessageIndex"] for m in call.transcript] == list(range(250))
    assert sim.requests_to(f"/api/calls/{uv_id}/messages") == 3
    assert call.summary.startswith("Simulated call") and call.short_summary == "Simulated call."
    assert call.has_recording is True and call.enriched_at is not None
    assert [job.status for job in _jobs(db)] == ["done"]


def test_a_lagging_recording_is_checked_again(sim_app, db, sim, ended_call):
    call_id, uv_id = ended_call()
    sim.fail(f"/api/calls/{uv_id}/recording", mode="error", status=404, count=1)
    Worker(sim_app).run_once()
    call = get_call(db, call_id)
    assert call.has_recording is False and len(call.transcript) == 6  # the rest is stored already
    first, follow_up = _jobs(db)
    assert first.status == "done" and follow_up.status == "queued"
    assert follow_up.payload == {"call_id": str(call_id), "recording_check": 2}
    assert timedelta(seconds=25) < follow_up.run_at - utcnow() <= timedelta(seconds=30)

    assert Worker(sim_app).run_once() == 0  # not due yet
    _make_due(db)
    assert Worker(sim_app).run_once() == 1
    assert get_call(db, call_id).has_recording is True
    assert sim.requests_to(f"/api/calls/{uv_id}/messages") == 1  # the transcript is not fetched twice
    assert [job.status for job in _jobs(db)] == ["done", "done"]


def test_a_recording_that_never_appears_is_given_up_after_backoff(sim_app, db, sim, ended_call):
    call_id, uv_id = ended_call()
    sim.fail(f"/api/calls/{uv_id}/recording", mode="error", status=404, count=None)
    delays = []
    for _ in range(10):
        if not Worker(sim_app).run_once():
            break
        queued = [job for job in _jobs(db) if job.status == "queued"]
        if queued:
            delays.append(round((queued[0].run_at - utcnow()).total_seconds() / 10) * 10)
        _make_due(db)
    assert delays == [30, 60, 120, 300]
    assert len(_jobs(db)) == 5 and get_call(db, call_id).has_recording is False


def test_a_call_without_recording_does_not_wait_for_one(sim_app, db, ended_call):
    call_id, _ = ended_call(recording=False)
    Worker(sim_app).run_once()
    assert get_call(db, call_id).has_recording is False
    assert [job.status for job in _jobs(db)] == ["done"]


def test_rate_limits_wait_for_retry_after(sim_app, db, sim, ended_call):
    call_id, uv_id = ended_call()
    sim.fail(f"/api/calls/{uv_id}/messages", mode="rate_limit", retry_after=42, count=1)
    Worker(sim_app).run_once()
    [job] = _jobs(db)
    assert job.status == "queued" and job.attempts == 0  # a rate limit is not a failure
    assert timedelta(seconds=38) < job.run_at - utcnow() <= timedelta(seconds=42)
    assert get_call(db, call_id).transcript is None
    _make_due(db)
    Worker(sim_app).run_once()
    assert len(get_call(db, call_id).transcript) == 6 and _jobs(db)[0].status == "done"


def test_other_upstream_errors_take_the_worker_backoff(sim_app, db, sim, ended_call):
    call_id, uv_id = ended_call()
    sim.fail(f"/api/calls/{uv_id}/messages", mode="error", status=500, count=1)
    Worker(sim_app).run_once()
    [job] = _jobs(db)
    assert job.status == "queued" and job.attempts == 1 and "HTTP 500" in job.last_error
    _make_due(db)
    Worker(sim_app).run_once()
    assert get_call(db, call_id).enriched_at is not None and _jobs(db)[0].status == "done"


def test_enrichment_is_queued_once_per_call(db, make_tenant):
    tenant = make_tenant()
    call_id = add_call(db, tenant.agency_id)
    for _ in range(3):
        with db.session() as session:
            schedule_enrichment(session, session.get(Call, call_id))
    assert len(_jobs(db)) == 1


def test_a_deleted_call_is_nothing_to_do(sim_app, db):
    with db.session() as session:
        enqueue(session, ENRICH_JOB, {"call_id": str(uuid.uuid4())})
    Worker(sim_app).run_once()
    assert [job.status for job in _jobs(db)] == ["done"]
