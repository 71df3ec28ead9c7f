"""One agency's slow event endpoints must not hold up another agency's events: the
worker runs jobs concurrently, each agency within its share of the slots, and a
delivery's total time is capped however slowly the receiver answers."""
from __future__ import annotations

import os
import signal
import socket
import threading
import time
from collections import Counter

import pytest
from sqlalchemy import select

from telephony.config import Config
from telephony.jobs import claim_jobs, enqueue
from telephony.models import EventDelivery, Job
from telephony.services import events
from telephony.services.events import emit_event
from telephony.worker import DEFAULT_CONCURRENCY, LEASE_SECONDS, Worker, agency_share

from .jobs_support import claim_from_threads

pytestmark = pytest.mark.private_event_endpoints


class HangingServer:
    """A loopback HTTP "endpoint" that accepts connections and never answers (or, with
    `trickle`, dribbles out a header one byte every `trickle` seconds). Every connection
    is dropped at close(), and at the latest after `lifetime` seconds, so nothing waits
    on it for long."""

    def __init__(self, trickle: float | None = None, lifetime: float = 15.0) -> None:
        self.trickle = trickle
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(0.05)
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}"
        self.connections: list[socket.socket] = []
        self.lock = threading.Lock()
        self.closed = threading.Event()
        self.timer = threading.Timer(lifetime, self.close)
        self.timer.daemon = True
        self.timer.start()
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def accepted(self) -> int:
        with self.lock:
            return len(self.connections)

    def _accept(self) -> None:
        while not self.closed.is_set():
            try:
                connection, _ = self.listener.accept()
            except (TimeoutError, OSError):
                continue
            with self.lock:
                self.connections.append(connection)
            if self.trickle:
                threading.Thread(target=self._dribble, args=(connection,), daemon=True).start()

    def _dribble(self, connection: socket.socket) -> None:
        try:
            connection.sendall(b"HTTP/1.1 200 OK\r\nX-Slow: ")
            while not self.closed.wait(self.trickle):
                connection.sendall(b"a")
        except OSError:
            pass

    def close(self) -> None:
        self.closed.set()
        self.timer.cancel()
        with self.lock:
            for connection in self.connections:
                try:
                    connection.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                connection.close()
        self.listener.close()


def _endpoint(client, tenant, url: str) -> str:
    response = client.post("/api/v1/event-endpoints", json={"url": url, "events": ["call.ended"]},
                           headers=tenant.admin())
    assert response.status_code == 201, response.json
    return response.json["id"]


def _statuses(db, agency_id) -> Counter:
    with db.session() as session:
        return Counter(session.scalars(select(EventDelivery.status).where(EventDelivery.agency_id == agency_id)))


def test_a_hanging_agency_does_not_hold_up_another_agencys_event(app, client, db, make_tenant, receiver):
    a, b = make_tenant("A"), make_tenant("B")
    hanging = HangingServer()
    worker = Worker(app, poll_interval=0.05)
    thread = threading.Thread(target=worker.run_forever, daemon=True)
    try:
        for n in range(20):
            _endpoint(client, a, f"{hanging.url}/a{n}")
        _endpoint(client, b, receiver.url)
        with app.app_context(), db.session() as session:
            emit_event(session, a.agency_id, "call.ended", {"call_id": "a"})  # 20 deliveries, queued first
        with app.app_context(), db.session() as session:
            emit_event(session, b.agency_id, "call.ended", {"call_id": "b"})

        started = time.monotonic()
        thread.start()
        while _statuses(db, b.agency_id)["delivered"] == 0 and time.monotonic() - started < 8:
            time.sleep(0.05)
        took = time.monotonic() - started
        assert _statuses(db, b.agency_id) == {"delivered": 1}
        assert took < 5, f"B's event took {took:.1f}s"
        assert len(receiver.requests) == 1
        # A's endpoints are still hanging, and A holds no more than its share of the slots.
        assert _statuses(db, a.agency_id) == {"pending": 20}
        assert 1 <= hanging.accepted <= agency_share(DEFAULT_CONCURRENCY) < DEFAULT_CONCURRENCY
        with db.session() as session:
            running = Counter(session.scalars(select(Job.agency_id).where(Job.status == "running")))
        assert running[a.agency_id] == agency_share(DEFAULT_CONCURRENCY)
    finally:
        worker.stop()
        hanging.close()  # A's requests end at once: the stopping worker's wait is short
        thread.join(timeout=15)
    assert not thread.is_alive()


def test_the_claim_takes_at_most_each_agencys_share(app, db, make_tenant):
    a, b = make_tenant("A"), make_tenant("B")
    with db.session() as session:
        for n in range(30):
            enqueue(session, "test.none", {"n": n}, agency_id=a.agency_id)
        enqueue(session, "test.none", {"n": "b"}, agency_id=b.agency_id)  # the newest job of all
        for n in range(5):
            enqueue(session, "test.none", {"n": f"none-{n}"})  # no agency: a group of its own

    claimed = claim_jobs(db, limit=8, per_agency=2)
    assert Counter(job.agency_id for job in claimed) == {a.agency_id: 2, b.agency_id: 1, None: 2}
    assert sorted(job.payload["n"] for job in claimed if job.agency_id == a.agency_id) == [0, 1]  # oldest first

    # What is already running in the worker counts against the share.
    again = claim_jobs(db, limit=8, per_agency=2, running={a.agency_id: 1, None: 2})
    assert Counter(job.agency_id for job in again) == {a.agency_id: 1}
    assert claim_jobs(db, limit=8, per_agency=2, running={a.agency_id: 3, None: 2}) == []

    # The limit still holds across groups.
    assert len(claim_jobs(db, limit=1, per_agency=2)) == 1


def test_concurrent_fair_claims_never_share_a_job(app, db, make_tenant):
    agencies = [make_tenant(f"T{n}").agency_id for n in range(3)] + [None]
    with db.session() as session:
        for n in range(60):
            enqueue(session, "test.none", {"n": n}, agency_id=agencies[n % 4])

    def claim_all() -> list[int]:
        mine = []
        for _ in range(200):
            jobs = claim_jobs(db, limit=3, per_agency=2)
            assert len(jobs) <= 3 and max(Counter(job.agency_id for job in jobs).values(), default=0) <= 2
            mine.extend(job.id for job in jobs)
            with db.session() as session:
                if not session.scalar(select(Job.id).where(Job.status == "queued").limit(1)):
                    break
        return mine

    every = claim_from_threads(claim_all)
    assert len(every) == 60 and len(set(every)) == 60


def test_the_worker_claims_only_its_free_slots_and_each_agencys_share(app, db, make_tenant):
    a, b = make_tenant("A"), make_tenant("B")
    release = threading.Event()
    started: list[str] = []

    def block(_context, payload):
        started.append(payload["who"])
        release.wait(10)

    with db.session() as session:
        for _ in range(10):
            enqueue(session, "test.block", {"who": "a"}, agency_id=a.agency_id)
        for _ in range(10):
            enqueue(session, "test.block", {"who": "b"}, agency_id=b.agency_id)
        for _ in range(10):
            enqueue(session, "test.block", {"who": "none"})
    worker = Worker(app, concurrency=4, handlers={"test.block": block})  # 4 slots, 1 per agency
    try:
        assert worker.run_once(wait=False) == 3
        assert worker.run_once(wait=False) == 0  # every group is at its share
        assert worker.running() == 3
    finally:
        release.set()
        assert worker.shutdown(timeout=10) == 0
    assert sorted(started) == ["a", "b", "none"]
    assert worker.run_once() == 0  # a stopped worker claims nothing
    with db.session() as session:
        assert Counter(session.scalars(select(Job.status))) == {"done": 3, "queued": 27}


def test_sigterm_stops_claiming_and_waits_for_the_running_jobs(app, db):
    finished: list[float] = []

    def slow(_context, payload):
        time.sleep(0.6)
        finished.append(time.monotonic())

    with db.session() as session:
        for n in range(3):
            enqueue(session, "test.slow", {"n": n})  # no agency: one group, 1 slot of 4 at a time
    worker = Worker(app, concurrency=4, poll_interval=0.05, handlers={"test.slow": slow})
    previous = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    killer = threading.Timer(0.3, os.kill, (os.getpid(), signal.SIGTERM))
    killer.start()
    try:
        worker.run_forever()  # in the main thread, as `flask worker run` does
        returned = time.monotonic()
    finally:
        killer.cancel()
        signal.signal(signal.SIGTERM, previous[0])
        signal.signal(signal.SIGINT, previous[1])
    assert len(finished) == 1 and finished[0] <= returned  # the running job was waited for
    with db.session() as session:
        assert Counter(session.scalars(select(Job.status))) == {"done": 1, "queued": 2}  # nothing new claimed


def test_a_trickling_endpoint_costs_a_delivery_at_most_its_cap(app, client, db, make_tenant, monkeypatch):
    # Each byte arrives well within the read timeout; only the cap on the whole attempt ends it.
    monkeypatch.setattr(events, "TIMEOUT", (1.0, 0.5))
    monkeypatch.setattr(events, "TOTAL_TIMEOUT", 1.0)
    tenant = make_tenant()
    trickling = HangingServer(trickle=0.1, lifetime=8.0)
    try:
        _endpoint(client, tenant, f"{trickling.url}/slow")
        with app.app_context(), db.session() as session:
            emit_event(session, tenant.agency_id, "call.ended", {"call_id": "c"})
        started = time.monotonic()
        assert Worker(app).run_once() == 1
        took = time.monotonic() - started
    finally:
        trickling.close()
    assert trickling.accepted == 1
    assert took < 3, f"the attempt took {took:.1f}s"
    with db.session() as session:
        delivery = session.scalar(select(EventDelivery))
        assert (delivery.status, delivery.last_error) == ("pending", "timed out")


def test_the_lease_outlasts_a_capped_delivery_many_times_over():
    assert LEASE_SECONDS >= 10 * (events.TOTAL_TIMEOUT + events.TIMEOUT[0])


@pytest.mark.parametrize("value, expected", [(None, DEFAULT_CONCURRENCY), ("", DEFAULT_CONCURRENCY), ("3", 3),
                                             ("0", ValueError), ("many", ValueError)])
def test_worker_concurrency_comes_from_the_environment(value, expected):
    environ = {"DATABASE_URL": "sqlite://"} if value is None else {"DATABASE_URL": "sqlite://",
                                                                   "WORKER_CONCURRENCY": value}
    if expected is ValueError:
        with pytest.raises(ValueError, match="WORKER_CONCURRENCY"):
            Config.from_env(environ)
    else:
        assert Config.from_env(environ).worker_concurrency == expected
