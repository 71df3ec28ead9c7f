"""Prometheus metrics, counted in every process that does the work: the gunicorn
workers and the `flask worker run` processes.

Aggregation: when PROMETHEUS_MULTIPROC_DIR names a directory that the web and worker
processes of one host share (gunicorn.conf.py makes one for gunicorn alone; `make run`
and docker-compose.yml give both the same one), every process writes its samples
there and the web's /metrics sums them (api/ops.py). Each process's files are named
after its host name and pid (`process_identifier`), so processes in different
containers sharing the directory never write into the same file. Across hosts, a
worker process can serve its own samples instead (WORKER_METRICS_PORT, worker.py).

What only the database knows (queue depth, the oldest due job, live workers) is read
at scrape time by the web (services/ops_status.py), not counted here.
"""
from __future__ import annotations

import functools
import logging
import os
import socket
import time
from contextlib import contextmanager
from typing import Iterator
from wsgiref.simple_server import WSGIServer

from prometheus_client import Counter, Histogram, multiprocess, start_http_server, values

log = logging.getLogger(__name__)


def process_identifier(pid: int | None = None) -> str:
    """This process's name in the shared metrics directory: host name and pid. The pid
    alone is not unique across containers (each has its own pid 1); underscores are
    replaced because prometheus_client splits file names on them. Called at every
    sample update (prometheus_client checks for a fork), hence the cached host name."""
    return f"{_host_name()}-{os.getpid() if pid is None else pid}"


@functools.lru_cache(maxsize=1)
def _host_name() -> str:
    return socket.gethostname().replace("_", "-") or "host"


if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
    # Before any metric below is created: their values live in files named by this.
    values.ValueClass = values.MultiProcessValue(process_identifier=process_identifier)

HTTP_REQUESTS = Counter(
    "telephony_http_requests_total", "HTTP requests served, by route and status.",
    ["method", "route", "status"],
)
HTTP_LATENCY = Histogram(
    "telephony_http_request_duration_seconds", "Time to serve an HTTP request, by route.",
    ["method", "route"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10),
)
UPSTREAM_REQUESTS = Counter(
    "telephony_upstream_requests_total",
    "Calls to upstream APIs (Ultravox, carriers), by outcome: ok, client_error, "
    "rate_limited, server_error, timeout, connection_error.",
    ["upstream", "operation", "outcome"],
)
UPSTREAM_LATENCY = Histogram(
    "telephony_upstream_request_duration_seconds", "Latency of upstream API calls.",
    ["upstream", "operation"],
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30),
)

TRANSFERS = Counter(
    "telephony_call_transfers_total",
    "Transfers of live calls to a person, by carrier, mode (cold, warm; none when refused) and outcome: "
    "answered, busy, no-answer, declined, failed, refused.",
    ["carrier", "mode", "outcome"],
)


class UpstreamCall:
    """Mutable outcome holder for `track_upstream`; set `.outcome` before leaving."""

    def __init__(self) -> None:
        self.outcome = "ok"


@contextmanager
def track_upstream(upstream: str, operation: str) -> Iterator[UpstreamCall]:
    """Time one upstream call and count it by outcome.

    An exception escaping the block counts as `connection_error` unless the
    block already set a more precise outcome.
    """
    call = UpstreamCall()
    started = time.perf_counter()
    try:
        yield call
    except BaseException:
        if call.outcome == "ok":
            call.outcome = "connection_error"
        raise
    finally:
        UPSTREAM_LATENCY.labels(upstream, operation).observe(time.perf_counter() - started)
        UPSTREAM_REQUESTS.labels(upstream, operation, call.outcome).inc()


# -- the worker and what it does ---------------------------------------------------------

JOBS = Counter(
    "telephony_jobs_total",
    "Background jobs run, by kind and outcome: done, retry (scheduled again), failed "
    "(for good), unrecorded (the outcome could not be written; the lease brings it back).",
    ["kind", "outcome"],
)
JOB_DURATION = Histogram(
    "telephony_job_duration_seconds", "Time to run one background job, by kind.",
    ["kind"],
    buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60),
)
EVENT_DELIVERIES = Counter(
    "telephony_event_deliveries_total",
    "Agency event webhook delivery attempts, by outcome: delivered, retry, failed (for good).",
    ["outcome"],
)
EVENT_DELIVERY_DURATION = Histogram(
    "telephony_event_delivery_duration_seconds", "Time of one delivery attempt to an agency endpoint, by outcome.",
    ["outcome"],
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 15),
)
CAMPAIGN_DIALS = Counter(
    "telephony_campaign_dials_total",
    "Campaign dial attempts carried out by a dispatcher, by result (placed, failed, unknown, "
    "aborted, ...: services/campaigns/attempts.py).",
    ["result"],
)
CAMPAIGN_OUTCOMES = Counter(
    "telephony_campaign_attempt_outcomes_total",
    "Campaign attempts ended, by outcome: the call's terminal status (completed, busy, "
    "no-answer, failed, canceled), or expired / unknown when the reaper gave up on them.",
    ["outcome"],
)
CARRIER_UPSTREAMS = ("twilio", "telnyx", "plivo")  # `upstream` label values of the carriers' REST calls
# Every metric here has labels: a process writes into PROMETHEUS_MULTIPROC_DIR only once it
# counts something, so short-lived commands (a health check, the migration) leave no files.


def count_campaign_reaped(stats: dict) -> None:
    """The attempts a reconcile pass gave up on (outcomes.reconcile's counts), as outcomes."""
    for outcome in ("unknown", "expired"):
        if stats.get(outcome):
            CAMPAIGN_OUTCOMES.labels(outcome).inc(stats[outcome])


def count_job(kind: str, status: str | None, seconds: float) -> None:
    """One job run, with the status jobs.run_job recorded (None: nothing could be recorded)."""
    outcome = {"done": "done", "queued": "retry", "failed": "failed"}.get(status or "", "unrecorded")
    JOBS.labels(kind, outcome).inc()
    JOB_DURATION.labels(kind).observe(seconds)


def export_worker_metrics(port: int, host: str) -> WSGIServer | None:
    """How a worker process's samples leave it: its own /metrics on `port` if set (the
    server, which runs in a daemon thread, is returned), else through the shared
    PROMETHEUS_MULTIPROC_DIR (the web's /metrics). Neither: a warning, since nothing it
    counts would be seen."""
    if port:
        server, _thread = start_http_server(port, addr=host)
        log.info("worker metrics on http://%s:%d/metrics", host, port)
        return server
    if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        log.warning("worker metrics are not exported: set PROMETHEUS_MULTIPROC_DIR to the directory the web "
                    "processes use (same host), or WORKER_METRICS_PORT")
    return None


def metrics_process_exited(pid: int | None = None) -> None:
    """Bookkeeping for a process that ends (gunicorn's child_exit, the worker's exit): its
    live gauges leave the aggregation; its counters stay, as Prometheus expects."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        multiprocess.mark_process_dead(process_identifier(pid))
