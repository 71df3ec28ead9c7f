"""What the worker does and every carrier REST request reach /metrics; worker liveness.

- Carrier requests are counted where each SDK sends them (requests adapter, httpx
  transport), by carrier, operation (ids generalised), outcome, with their duration.
- Jobs by kind and outcome, event deliveries, campaign dials and attempt outcomes.
- Queue depth, oldest-due age and live workers come from the database at scrape time.
- The samples of a separate worker process reach the web's /metrics through the shared
  PROMETHEUS_MULTIPROC_DIR (two real processes).
- Heartbeats: /readyz reports the live workers without depending on them;
  /readyz/workers answers 503 when none is alive.
"""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap
import urllib.request
from datetime import timedelta
from pathlib import Path

import pytest
import responses
from prometheus_client import REGISTRY
from sqlalchemy import select, update

from telephony import create_app
from telephony.carriers import sdk
from telephony.carriers.http_metrics import operation_name
from telephony.jobs import enqueue
from telephony.metrics import JOBS, export_worker_metrics, process_identifier
from telephony.models import DialAttempt, Job, WorkerHeartbeat, utcnow
from telephony.services import worker_heartbeats
from telephony.services.campaigns.loop import Dispatcher
from telephony.services.events import emit_event
from telephony.worker import Worker
from tests.outbound_helpers import CALLEE, create_campaign, seed_agency, twilio_status

ROOT = Path(__file__).resolve().parent.parent
TWILIO_SID = "AC" + "1" * 32
PLIVO_ID = "MA" + "A1" * 9


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


# -- carrier REST requests ------------------------------------------------------------------


@pytest.mark.parametrize(("method", "url", "operation"), [
    ("POST", f"https://api.twilio.com/2010-04-01/Accounts/{TWILIO_SID}/Calls.json",
     "POST /2010-04-01/Accounts/{id}/Calls.json"),
    ("POST", f"https://api.twilio.com/2010-04-01/Accounts/{TWILIO_SID}/Calls/CA{'f' * 32}.json",
     "POST /2010-04-01/Accounts/{id}/Calls/{id}.json"),
    ("POST", "https://api.telnyx.com/v2/calls/v3:AbC-123_xyz/actions/hangup", "POST /v2/calls/{id}/actions/hangup"),
    ("post", "https://api.telnyx.com/v2/calls", "POST /v2/calls"),
    ("DELETE", f"https://api.plivo.com/v1/Account/{PLIVO_ID}/Call/3a9d5c5e-0b0e-4a3c-9f0e-2d7f0d0b1c2a/",
     "DELETE /v1/Account/{id}/Call/{id}/"),
    ("GET", "https://api.twilio.com/2010-04-01/Accounts/AC1/IncomingPhoneNumbers.json?PhoneNumber=%2B1415",
     "GET /2010-04-01/Accounts/{id}/IncomingPhoneNumbers.json"),
])
def test_operation_names_keep_the_route_and_drop_the_ids(method, url, operation):
    assert operation_name(method, url) == operation


def test_every_twilio_request_is_counted_by_outcome_with_its_duration():
    client = sdk.twilio_client(TWILIO_SID, "token", api_base="https://twilio.test")
    operation = "POST /2010-04-01/Accounts/{id}/Calls.json"
    before = {outcome: sample("telephony_upstream_requests_total", upstream="twilio", operation=operation,
                              outcome=outcome) for outcome in ("ok", "rate_limited")}
    timed = sample("telephony_upstream_request_duration_seconds_count", upstream="twilio", operation=operation)
    with responses.RequestsMock() as mock:
        url = f"https://twilio.test/2010-04-01/Accounts/{TWILIO_SID}/Calls.json"
        mock.add(responses.POST, url, status=201, json={"sid": "CA" + "0" * 32, "status": "queued"})
        mock.add(responses.POST, url, status=429, json={"code": 20429, "message": "Too Many Requests"})
        client.calls.create(to="+15550001111", from_="+15550002222", twiml="<Response/>")
        with pytest.raises(Exception):
            client.calls.create(to="+15550001111", from_="+15550002222", twiml="<Response/>")
    for outcome in ("ok", "rate_limited"):
        assert sample("telephony_upstream_requests_total", upstream="twilio", operation=operation,
                      outcome=outcome) == before[outcome] + 1
    assert sample("telephony_upstream_request_duration_seconds_count", upstream="twilio",
                  operation=operation) == timed + 2


def test_telnyx_and_plivo_requests_are_counted_against_the_simulator(carrier_sim):
    telnyx_op, plivo_op = "POST /v2/calls", "POST /v1/Account/{id}/Call/"
    before = (sample("telephony_upstream_requests_total", upstream="telnyx", operation=telnyx_op, outcome="ok"),
              sample("telephony_upstream_requests_total", upstream="plivo", operation=plivo_op, outcome="ok"))
    telnyx = sdk.telnyx_client("KEY-sim", api_base=f"{carrier_sim.base_url}/v2")
    telnyx.calls.dial(connection_id="1234567890", from_="+15550002222", to="+15550001111",
                      webhook_url="http://127.0.0.1:8000/telnyx/events")
    plivo = sdk.plivo_client(PLIVO_ID, "token", api_base=carrier_sim.base_url)
    plivo.calls.create(from_="+15550002222", to_="+15550001111", answer_url="http://127.0.0.1:8000/plivo/answer")
    after = (sample("telephony_upstream_requests_total", upstream="telnyx", operation=telnyx_op, outcome="ok"),
             sample("telephony_upstream_requests_total", upstream="plivo", operation=plivo_op, outcome="ok"))
    assert after == (before[0] + 1, before[1] + 1)


def test_a_carrier_that_does_not_answer_is_counted_as_a_timeout():
    # A listening socket that never accepts: the connection or the read times out.
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(0)
        base = f"http://127.0.0.1:{silent.getsockname()[1]}"
        operation = "POST /v2/calls"
        before = sample("telephony_upstream_requests_total", upstream="telnyx", operation=operation,
                        outcome="timeout")
        client = sdk.telnyx_client("KEY-sim", api_base=f"{base}/v2", timeout=0.2)
        with pytest.raises(Exception):
            client.calls.dial(connection_id="1", from_="+15550002222", to="+15550001111")
    assert sample("telephony_upstream_requests_total", upstream="telnyx", operation=operation,
                  outcome="timeout") == before + 1


# -- jobs, deliveries, campaigns ----------------------------------------------------------------


def test_jobs_are_counted_by_kind_and_outcome(app, db):
    def fails(_context, _payload):
        raise RuntimeError("boom")

    handlers = {"test.ok": lambda _context, _payload: None, "test.fails": fails}
    before = (sample("telephony_jobs_total", kind="test.ok", outcome="done"),
              sample("telephony_jobs_total", kind="test.fails", outcome="retry"),
              sample("telephony_jobs_total", kind="test.fails", outcome="failed"),
              sample("telephony_job_duration_seconds_count", kind="test.ok"))
    with db.session() as session:
        enqueue(session, "test.ok")
        enqueue(session, "test.ok")
        enqueue(session, "test.fails", max_attempts=2)
    assert Worker(app, handlers=handlers, concurrency=12).run_once() == 3  # a share of 3 for no agency
    with db.session() as session:  # the failed one is due again at once
        session.execute(update(Job).where(Job.kind == "test.fails").values(run_at=utcnow()))
    assert Worker(app, handlers=handlers).run_once() == 1
    after = (sample("telephony_jobs_total", kind="test.ok", outcome="done"),
             sample("telephony_jobs_total", kind="test.fails", outcome="retry"),
             sample("telephony_jobs_total", kind="test.fails", outcome="failed"),
             sample("telephony_job_duration_seconds_count", kind="test.ok"))
    assert after == (before[0] + 2, before[1] + 1, before[2] + 1, before[3] + 2)


@pytest.mark.private_event_endpoints
def test_event_deliveries_are_counted_by_outcome(app, client, db, make_tenant, receiver):
    tenant = make_tenant()
    client.post("/api/v1/event-endpoints", json={"url": receiver.url, "events": ["call.ended"]},
                headers=tenant.admin())
    before = {outcome: sample("telephony_event_deliveries_total", outcome=outcome)
              for outcome in ("delivered", "retry")}
    with db.session() as session:
        emit_event(session, tenant.agency_id, "call.ended", {"call_id": "c-1"})
    assert Worker(app).run_once() == 1
    receiver.statuses = [500]
    with db.session() as session:
        emit_event(session, tenant.agency_id, "call.ended", {"call_id": "c-2"})
    assert Worker(app).run_once() == 1
    assert sample("telephony_event_deliveries_total", outcome="delivered") == before["delivered"] + 1
    assert sample("telephony_event_deliveries_total", outcome="retry") == before["retry"] + 1


def test_campaign_dials_and_outcomes_are_counted(sim_app, carrier_sim):
    seeded = seed_agency(sim_app)
    client = sim_app.test_client()
    create_campaign(client, seeded, [{"phone": CALLEE}])
    placed, completed = (sample("telephony_campaign_dials_total", result="placed"),
                         sample("telephony_campaign_attempt_outcomes_total", outcome="completed"))
    dispatcher = Dispatcher(sim_app, threads=1)
    assert dispatcher.run_once() == 1
    dispatcher._pool.shutdown(wait=True)  # the dial runs on the dispatcher's pool
    assert sample("telephony_campaign_dials_total", result="placed") == placed + 1
    with sim_app.extensions["telephony.db"].session() as session:
        attempt = session.scalar(select(DialAttempt))
    assert twilio_status(client, attempt.call_id, attempt.carrier_call_id, "completed").status_code == 204
    assert sample("telephony_campaign_attempt_outcomes_total", outcome="completed") == completed + 1


# -- what the database knows, at scrape time --------------------------------------------------


def metric_lines(client) -> list[str]:
    response = client.get("/metrics")
    assert response.status_code == 200
    return response.get_data(as_text=True).splitlines()


def test_metrics_report_queue_depth_oldest_due_age_and_live_workers(app, client, db):
    now = utcnow()
    with db.session() as session:
        enqueue(session, "test.queue", run_at=now - timedelta(seconds=120))
        enqueue(session, "test.queue", run_at=now - timedelta(seconds=5))
        enqueue(session, "test.queue", run_at=now + timedelta(hours=1))
        leased = enqueue(session, "test.queue", run_at=now - timedelta(seconds=30))
        leased.status, leased.locked_until = "running", now + timedelta(minutes=5)
    worker_heartbeats.beat(db, "worker-a")
    lines = metric_lines(client)
    assert 'telephony_jobs_due{kind="test.queue"} 2.0' in lines
    assert 'telephony_jobs_scheduled{kind="test.queue"} 1.0' in lines
    assert 'telephony_jobs_running{kind="test.queue"} 1.0' in lines
    [age] = [line for line in lines if line.startswith('telephony_jobs_oldest_due_age_seconds{kind="test.queue"}')]
    assert 119 <= float(age.split()[-1]) < 600
    assert "telephony_workers_alive 1.0" in lines and "telephony_database_up 1.0" in lines


def test_metrics_still_answer_when_the_database_does_not(config, tmp_path):
    broken = create_app(config.with_overrides(database_url="postgresql+psycopg2://nobody@127.0.0.1:1/none"),
                        instance_path=str(tmp_path))
    lines = metric_lines(broken.test_client())
    assert "telephony_database_up 0.0" in lines
    assert not any(line.startswith("telephony_jobs_due") for line in lines)


# -- worker liveness -----------------------------------------------------------------------------


def test_readyz_reports_live_workers_and_readyz_workers_fails_without_one(app, client, db):
    ready = client.get("/readyz")
    assert ready.status_code == 200 and ready.json == {"status": "ok", "database": "ok", "workers_alive": 0}
    # The web stays ready without workers; the workers' own check does not.
    assert client.get("/readyz/workers").status_code == 503
    assert client.get("/readyz/workers").json == {"status": "unavailable", "workers_alive": 0}

    worker = Worker(app, handlers={})
    assert worker.heartbeat_if_due() is True
    assert worker.heartbeat_if_due() is False  # not again before its interval
    assert client.get("/readyz").json["workers_alive"] == 1
    answer = client.get("/readyz/workers")
    assert answer.status_code == 200 and answer.json == {"status": "ok", "workers_alive": 1}

    worker.shutdown(timeout=1)  # a clean stop removes its heartbeat at once
    assert client.get("/readyz/workers").status_code == 503


def test_a_worker_that_stopped_beating_is_not_alive_and_is_forgotten_later(app, client, db):
    worker_heartbeats.beat(db, "crashed", now=utcnow() - timedelta(seconds=61))
    worker_heartbeats.beat(db, "long-dead", now=utcnow() - timedelta(days=2))
    assert client.get("/readyz/workers").status_code == 503
    worker_heartbeats.beat(db, "fresh")  # a new worker clears rows older than a day
    assert client.get("/readyz").json["workers_alive"] == 1
    with db.session() as session:
        assert set(session.scalars(select(WorkerHeartbeat.id))) == {"crashed", "fresh"}


def test_readyz_workers_is_in_the_openapi_document(client):
    assert "/readyz/workers" in client.get("/openapi.json").json["paths"]


# -- one scrape for every process of a host --------------------------------------------------------


def test_a_worker_process_samples_reach_the_web_metrics_through_the_shared_directory(tmp_path, database_url):
    """Two real processes share PROMETHEUS_MULTIPROC_DIR: what the worker process counts
    (a job, a carrier request) is in the web process's /metrics."""
    shared = tmp_path / "metrics"
    shared.mkdir()
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(shared), "DATABASE_URL": database_url,
           "CREDENTIALS_KEYS": "", "PYTHONPATH": str(ROOT)}
    if not database_url.startswith("sqlite"):
        env["CREDENTIALS_KEYS"] = "ZmDfcTF7_60GrrY167zsiPd67pEvs0aGOv2oasOM1Pg="
    worker_side = textwrap.dedent("""
        from telephony.metrics import JOBS, UPSTREAM_REQUESTS
        JOBS.labels("test.other-process", "done").inc(3)
        UPSTREAM_REQUESTS.labels("plivo", "POST /v1/Account/{id}/Call/", "ok").inc()
    """)
    web_side = textwrap.dedent("""
        from telephony import create_app
        print(create_app(instance_path=%r).test_client().get("/metrics").get_data(as_text=True))
    """ % str(tmp_path / "instance"))
    # A process that counts nothing (a health check, the migration) leaves no file behind.
    subprocess.run([sys.executable, "-c", "from telephony import create_app; create_app(instance_path=%r)"
                    % str(tmp_path / "instance")], env=env, check=True, cwd=ROOT, timeout=120)
    assert os.listdir(shared) == []
    subprocess.run([sys.executable, "-c", worker_side], env=env, check=True, cwd=ROOT, timeout=60)
    scraped = subprocess.run([sys.executable, "-c", web_side], env=env, check=True, cwd=ROOT, timeout=120,
                             capture_output=True, text=True).stdout.splitlines()
    assert 'telephony_jobs_total{kind="test.other-process",outcome="done"} 3.0' in scraped
    assert 'telephony_upstream_requests_total{operation="POST /v1/Account/{id}/Call/",outcome="ok",' \
           'upstream="plivo"} 1.0' in scraped
    # Files are named by host and pid: processes of two containers never share one.
    host = socket.gethostname().replace("_", "-")
    assert os.listdir(shared) and all(name.startswith(f"counter_{host}-") or name.startswith(f"histogram_{host}-")
                                      for name in os.listdir(shared))


def test_a_worker_on_another_host_serves_its_own_metrics_on_its_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    JOBS.labels("test.own-port", "done").inc()
    server = export_worker_metrics(port, "127.0.0.1")
    assert server is not None
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as answer:
            body = answer.read().decode()
    finally:
        server.shutdown()
        server.server_close()
    assert 'telephony_jobs_total{kind="test.own-port",outcome="done"}' in body
    assert export_worker_metrics(0, "127.0.0.1") is None  # off by default


def test_process_identifiers_differ_across_hosts_with_the_same_pid(monkeypatch):
    from telephony import metrics
    try:
        metrics._host_name.cache_clear()
        monkeypatch.setattr(socket, "gethostname", lambda: "web_1")
        web = process_identifier(1)
        metrics._host_name.cache_clear()
        monkeypatch.setattr(socket, "gethostname", lambda: "worker_1")
        assert web != process_identifier(1) and "_" not in web
    finally:
        metrics._host_name.cache_clear()


# -- the Grafana dashboard of the deployment kit -----------------------------------------------------


def test_the_dashboard_only_charts_metrics_the_service_exports(client):
    import json
    import re
    dashboard = json.loads((ROOT / "deploy" / "grafana" / "telephony.json").read_text())
    exprs = [target["expr"] for panel in dashboard["panels"] for target in panel.get("targets", [])]
    used = {re.sub(r"_(total|bucket|count|sum)$", "", name) for expr in exprs
            for name in re.findall(r"\btelephony_[a-z_]+", expr)}
    exported = {re.sub(r"_(total|bucket|count|sum)$", "", line.split()[2]) for line in metric_lines(client)
                if line.startswith("# TYPE ")}
    assert used and used <= exported, sorted(used - exported)
    # Every family this change added is on the dashboard.
    assert {"telephony_jobs", "telephony_jobs_due", "telephony_jobs_oldest_due_age_seconds", "telephony_workers_alive",
            "telephony_event_deliveries", "telephony_campaign_dials", "telephony_campaign_attempt_outcomes",
            "telephony_upstream_requests", "telephony_upstream_request_duration_seconds"} <= used


def test_the_web_is_ready_without_the_heartbeat_table(app, client, monkeypatch):
    """New code before its migration (a rolling deploy): readiness is about the database
    answering, so the web stays ready; the workers' check cannot tell, and says so."""
    from sqlalchemy.exc import ProgrammingError

    from telephony.api import ops

    def missing_table(_session, **_kwargs):
        raise ProgrammingError("SELECT count(*) FROM worker_heartbeats", {}, Exception("no such table"))

    monkeypatch.setattr(ops, "count_alive", missing_table)
    ready = client.get("/readyz")
    assert ready.status_code == 200 and ready.json == {"status": "ok", "database": "ok", "workers_alive": None}
    assert client.get("/readyz/workers").status_code == 503
