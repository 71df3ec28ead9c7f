"""Inbound-webhook benchmark: `make bench-inbound` (python -m bench.inbound; `make bench` runs it too).

Starts the Ultravox simulator and the service under gunicorn (the real gunicorn.conf.py)
on free loopback ports with a fresh database (PostgreSQL when reachable, else SQLite;
--database to choose), then measures signed Twilio voice webhooks, each with its own
CallSid, sent over new connections as a carrier would:

  burst     200 simultaneous webhooks (3 rounds), Ultravox answering after 500 ms:
            every answer must be valid TwiML streaming to a wss:// joinUrl, zero errors,
            p99 < 2 s.
  overhead  20 concurrent (closed loop, workers started 25 ms apart so that requests do not
            arrive in lockstep bursts), Ultravox after 500 ms: what the service adds on
            top of the simulator is each webhook's response time minus the time the
            simulator took for that webhook's Ultravox call (its 500 ms included; the
            simulator logs it per request, matched by CallSid): p50 <= 5 ms, p99 <= 25 ms.
            (An upper bound: it also holds the load generator, loopback TCP and the
            simulator's HTTP server outside its WSGI app.) Shown next to it: response
            minus the configured 500 ms, the service's own Server-Timing, its wait on
            Ultravox minus the simulator's time, and the floor: GET /healthz (which does
            nothing) with the same 20 workers and the same 500 ms between requests.
  one at a time  with the simulator answering at once: the service's own time per webhook
            with no queueing, next to the simulator alone.
  saturation  20 workers in a closed loop with the simulator answering at once: the
            throughput of the whole set-up on this machine (requests queue for CPU, so
            these latencies are not overhead), next to the simulator alone.

Prints a table, writes bench/results/inbound-<time>.json, and exits 1 if a target is
missed. Bounded request counts: about a minute in all.
"""
from __future__ import annotations

import argparse
import http.client
import json
import math
import os
import platform
import queue
import sys
import threading
import time
import xml.etree.ElementTree as ET
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from typing import Callable

import requests
from sqlalchemy import create_engine, text

from bench.common import (
    ROOT,
    ULTRAVOX_AGENT_ID,
    ULTRAVOX_KEY,
    VOICE_PATH,
    Stack,
    new_call_sid,
    postgres_reachable,
    running_stack,
    signed_twilio_webhook,
)

RESULTS = ROOT / "bench" / "results"
LATENCY_MS = 500
BURST_SIZE, BURST_ROUNDS = 200, 3
CONCURRENCY = 20
OVERHEAD_REQUESTS = 600  # 20 workers x 30 sequential requests x ~0.5 s = ~15 s
ZERO_LATENCY_REQUESTS = 2000
SEQUENTIAL_REQUESTS = 300
TARGETS = {"burst_p99_s": 2.0, "overhead_p50_ms": 5.0, "overhead_p99_ms": 25.0}


@dataclass
class Result:
    seconds: float
    ok: bool
    error: str | None = None
    in_app_ms: float | None = None  # Server-Timing: app minus the wait on Ultravox
    key: str | None = None  # the webhook's CallSid
    ultravox_ms: float | None = None  # Server-Timing: the service's wait on Ultravox


@dataclass
class Stats:
    scenario: str
    requests: int
    errors: int
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    wall_s: float
    per_second: float


def percentile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank percentile."""
    return sorted_values[max(0, min(len(sorted_values) - 1, math.ceil(q * len(sorted_values)) - 1))]


Measure = Callable[[Result], "float | None"]


def response_ms(result: Result) -> float:
    return result.seconds * 1000


def stats(scenario: str, results: list[Result], wall: float, measure: Measure = response_ms, *,
          unmeasured_is_error: bool = False) -> Stats:
    """Percentiles of `measure` (ms) over the results it can measure. With
    unmeasured_is_error, a result it cannot measure counts as an error."""
    values = [measure(r) for r in results]
    times = sorted(v for v in values if v is not None)
    unmeasured = sum(v is None for v in values) if unmeasured_is_error else 0
    return Stats(scenario=scenario, requests=len(results), errors=sum(not r.ok for r in results) + unmeasured,
                 p50_ms=round(percentile(times, 0.50), 2), p90_ms=round(percentile(times, 0.90), 2),
                 p99_ms=round(percentile(times, 0.99), 2), max_ms=round(times[-1], 2), wall_s=round(wall, 2),
                 per_second=round(len(results) / wall, 1))


def in_app(result: Result) -> float | None:
    return result.in_app_ms


def minus_simulator(simulator_ms: dict[str, float]) -> Measure:
    """Response time minus the simulator's own time for the webhook's Ultravox call;
    None for a webhook whose call the simulator did not log."""
    return lambda r: r.seconds * 1000 - simulator_ms[r.key] if r.key in simulator_ms else None


def ultravox_wait_minus_simulator(simulator_ms: dict[str, float]) -> Measure:
    """The service's wait on Ultravox minus the simulator's own time: our Ultravox client,
    loopback TCP and the simulator's HTTP server outside its WSGI app."""
    return lambda r: (r.ultravox_ms - simulator_ms[r.key]
                      if r.key in simulator_ms and r.ultravox_ms is not None else None)


# -- one request ------------------------------------------------------------------------------


def valid_stream_twiml(status: int, content_type: str, body: bytes) -> str | None:
    """None if this is the answer a carrier needs, else what is wrong with it."""
    if status != 200:
        return f"HTTP {status}"
    if not content_type.startswith("text/xml"):
        return f"Content-Type {content_type!r}"
    try:
        stream = ET.fromstring(body).find("./Connect/Stream")
    except ET.ParseError as exc:
        return f"invalid XML: {exc}"
    if stream is None or not stream.get("url", "").startswith("wss://"):
        return "no <Connect><Stream url=wss://...>"
    return None


def send(host: str, port: int, path: str, body: bytes | None, headers: dict[str, str], key: str | None,
         check: Callable[[int, str, bytes], str | None]) -> Result:
    """One request on a new connection, as a carrier opens: POST with a body, GET without."""
    result = _send(host, port, path, body, headers, check)
    result.key = key
    return result


def _send(host: str, port: int, path: str, body: bytes | None, headers: dict[str, str],
          check: Callable[[int, str, bytes], str | None]) -> Result:
    started = time.perf_counter()
    conn = http.client.HTTPConnection(host, port, timeout=30)
    try:
        conn.request("GET" if body is None else "POST", path, body=body, headers=headers)
        response = conn.getresponse()
        data = response.read()
        elapsed = time.perf_counter() - started
        problem = check(response.status, response.getheader("Content-Type", ""), data)
        timing = server_timing(response.getheader("Server-Timing"))
        in_app = timing["app"] - timing["ultravox"] if "app" in timing and "ultravox" in timing else None
        return Result(elapsed, problem is None, problem, in_app, ultravox_ms=timing.get("ultravox"))
    except OSError as exc:
        return Result(time.perf_counter() - started, False, f"{type(exc).__name__}: {exc}")
    finally:
        conn.close()


def server_timing(header: str | None) -> dict[str, float]:
    """"app;dur=507.9, ultravox;dur=503.1" -> {"app": 507.9, "ultravox": 503.1}; {} if unreadable."""
    durations: dict[str, float] = {}
    for metric in (header or "").split(","):
        name, _, rest = metric.strip().partition(";dur=")
        try:
            durations[name] = float(rest)
        except ValueError:
            return {}
    return durations


# -- load shapes -----------------------------------------------------------------------------


Job = tuple[str, bytes | None, dict[str, str], str | None]  # path, body (None: GET), headers, CallSid


def burst(host: str, port: int, jobs: list[Job], check) -> tuple[list[Result], float]:
    """Every job on its own thread, released at the same instant."""
    barrier = threading.Barrier(len(jobs) + 1)
    results: list[Result] = []
    lock = threading.Lock()

    def run(job: Job) -> None:
        barrier.wait()
        result = send(host, port, *job, check)
        with lock:
            results.append(result)

    threads = [threading.Thread(target=run, args=(job,), daemon=True) for job in jobs]
    for thread in threads:
        thread.start()
    barrier.wait()
    started = time.perf_counter()
    for thread in threads:
        thread.join(timeout=60)
    return results, time.perf_counter() - started


def closed_loop(host: str, port: int, jobs: list[Job], concurrency: int, check, *,
                stagger_s: float = 0.0, pause_s: float = 0.0) -> tuple[list[Result], float]:
    """`concurrency` workers, each sending the next job as soon as its previous one answered
    (or `pause_s` after it: the same arrival pattern as requests that take that long).

    Worker i starts i * stagger_s / concurrency late: with a fixed upstream delay,
    workers started together stay in lockstep and every request would arrive in a burst
    of `concurrency` at once, which is not what 20 concurrent calls look like."""
    pending: queue.SimpleQueue[Job] = queue.SimpleQueue()
    for job in jobs:
        pending.put(job)
    results: list[Result] = []
    lock = threading.Lock()

    def worker(delay: float) -> None:
        time.sleep(delay)
        while True:
            try:
                job = pending.get_nowait()
            except queue.Empty:
                return
            result = send(host, port, *job, check)
            with lock:
                results.append(result)
            time.sleep(pause_s)

    threads = [threading.Thread(target=worker, args=(i * stagger_s / concurrency,), daemon=True)
               for i in range(concurrency)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    return results, time.perf_counter() - started


def webhook_jobs(count: int) -> list[Job]:
    # Signed before the clock starts: the load generator's own work is not measured.
    sids = [new_call_sid() for _ in range(count)]
    return [(VOICE_PATH, *signed_twilio_webhook(sid), sid) for sid in sids]


def ultravox_jobs(count: int) -> list[Job]:
    body = json.dumps({"medium": {"twilio": {}}, "firstSpeakerSettings": {"agent": {}},
                       "templateContext": {"caller_number": "+14155550199", "called_number": "+14155550100"},
                       "metadata": {"telephony.call_id": "bench"}}).encode()
    headers = {"Content-Type": "application/json", "X-API-Key": ULTRAVOX_KEY}
    return [(f"/api/agents/{ULTRAVOX_AGENT_ID}/calls", body, headers, None) for _ in range(count)]


def healthz_jobs(count: int) -> list[Job]:
    return [("/healthz", None, {}, None)] * count


def status_200(status: int, content_type: str, body: bytes) -> str | None:
    return None if status == 200 else f"HTTP {status}"


def created_201(status: int, content_type: str, body: bytes) -> str | None:
    return None if status == 201 else f"HTTP {status}"


# -- the run ----------------------------------------------------------------------------------


def simulator_times(stack: Stack) -> dict[str, float]:
    """CallSid -> how long the Ultravox simulator took for that webhook's call (ms): the
    service puts the carrier's call id into the Ultravox call's metadata."""
    log = requests.get(f"{stack.ultravox_url}/_sim/requests", timeout=30).json()["requests"]
    times = {}
    for entry in log:
        metadata = (entry.get("body") or {}).get("metadata") or {} if isinstance(entry.get("body"), dict) else {}
        sid = metadata.get("telephony.carrier_call_id")
        if sid and "duration_ms" in entry:
            times[sid] = entry["duration_ms"]
    return times


def set_latency(stack: Stack, latency_ms: int) -> None:
    requests.post(f"{stack.ultravox_url}/_sim/reset", timeout=5).raise_for_status()
    requests.post(f"{stack.ultravox_url}/_sim/config", json={"latency_ms": latency_ms}, timeout=5).raise_for_status()


def run(database: str) -> int:
    with running_stack(database) as stack:
        host, port = "127.0.0.1", int(stack.service_url.rsplit(":", 1)[1])
        uv_port = int(stack.ultravox_url.rsplit(":", 1)[1])
        print(f"service {stack.service_url} (gunicorn.conf.py), Ultravox simulator {stack.ultravox_url}, "
              f"database {stack.database}", flush=True)

        set_latency(stack, 0)
        closed_loop(host, port, webhook_jobs(200), CONCURRENCY, valid_stream_twiml)  # warm-up, not reported

        table: list[Stats] = []
        failures: list[str] = []

        set_latency(stack, LATENCY_MS)
        burst_results: list[Result] = []
        burst_wall = 0.0
        for _ in range(BURST_ROUNDS):
            results, wall = burst(host, port, webhook_jobs(BURST_SIZE), valid_stream_twiml)
            burst_results += results
            burst_wall += wall
            time.sleep(0.5)
        table.append(stats(f"burst {BURST_SIZE} simultaneous x{BURST_ROUNDS}, Ultravox {LATENCY_MS} ms",
                           burst_results, burst_wall))
        errors = [r.error for r in burst_results if not r.ok]

        set_latency(stack, LATENCY_MS)  # also empties the simulator's request log
        results, wall = closed_loop(host, port, webhook_jobs(OVERHEAD_REQUESTS), CONCURRENCY, valid_stream_twiml,
                                    stagger_s=LATENCY_MS / 1000)
        simulator_ms = simulator_times(stack)
        table.append(stats(f"{CONCURRENCY} concurrent, Ultravox {LATENCY_MS} ms: response time", results, wall))
        overhead = stats(f"{CONCURRENCY} concurrent: overhead = response - simulator's time", results, wall,
                         minus_simulator(simulator_ms), unmeasured_is_error=True)
        table.append(overhead)
        table.append(stats(f"{CONCURRENCY} concurrent: response - {LATENCY_MS} ms", results, wall,
                           lambda r: r.seconds * 1000 - LATENCY_MS))
        table.append(stats(f"{CONCURRENCY} concurrent: in-app time (Server-Timing app - ultravox)", results, wall,
                           in_app))
        table.append(stats(f"{CONCURRENCY} concurrent: Ultravox wait - simulator's time (client + HTTP)", results,
                           wall, ultravox_wait_minus_simulator(simulator_ms)))
        errors += [r.error for r in results if not r.ok]
        # The serving floor under the same arrival pattern: a request that does nothing
        # (GET /healthz), through the same load generator, loopback and gunicorn.
        results, wall = closed_loop(host, port, healthz_jobs(OVERHEAD_REQUESTS), CONCURRENCY, status_200,
                                    stagger_s=LATENCY_MS / 1000, pause_s=LATENCY_MS / 1000)
        table.append(stats(f"floor: {CONCURRENCY} concurrent GET /healthz, {LATENCY_MS} ms apart", results, wall))
        errors += [r.error for r in results if not r.ok]

        set_latency(stack, 0)
        results, wall = closed_loop(host, port, webhook_jobs(SEQUENTIAL_REQUESTS), 1, valid_stream_twiml)
        table.append(stats("one at a time, Ultravox 0 ms: response time", results, wall))
        table.append(stats("one at a time: in-app time (Server-Timing app - ultravox)", results, wall, in_app))
        errors += [r.error for r in results if not r.ok]
        results, wall = closed_loop(host, uv_port, ultravox_jobs(SEQUENTIAL_REQUESTS), 1, created_201)
        table.append(stats("one at a time: the Ultravox simulator alone", results, wall))

        results, wall = closed_loop(host, port, webhook_jobs(ZERO_LATENCY_REQUESTS), CONCURRENCY,
                                    valid_stream_twiml)
        table.append(stats(f"saturation: {CONCURRENCY} in a closed loop, Ultravox 0 ms", results, wall))
        errors += [r.error for r in results if not r.ok]
        results, wall = closed_loop(host, uv_port, ultravox_jobs(ZERO_LATENCY_REQUESTS), CONCURRENCY, created_201)
        table.append(stats("saturation: the Ultravox simulator alone, same load", results, wall))

        engine = create_engine(stack.database_url)
        with engine.connect() as conn:
            recorded = conn.execute(text("SELECT count(*) FROM calls WHERE join_url IS NOT NULL AND "
                                         "ultravox_call_id IS NOT NULL AND status = 'ringing'")).scalar_one()
        engine.dispose()
        sent = 200 + BURST_SIZE * BURST_ROUNDS + OVERHEAD_REQUESTS + SEQUENTIAL_REQUESTS + ZERO_LATENCY_REQUESTS

    burst_stats = table[0]
    checks = {
        "burst: zero errors": burst_stats.errors == 0,
        f"burst: p99 < {TARGETS['burst_p99_s']} s": burst_stats.p99_ms < TARGETS["burst_p99_s"] * 1000,
        f"overhead p50 <= {TARGETS['overhead_p50_ms']} ms": overhead.p50_ms <= TARGETS["overhead_p50_ms"],
        f"overhead p99 <= {TARGETS['overhead_p99_ms']} ms": overhead.p99_ms <= TARGETS["overhead_p99_ms"],
        "every webhook recorded with its joinUrl": recorded == sent and not errors,
    }
    failures = [name for name, ok in checks.items() if not ok]

    print()
    print(f"{'scenario':<66} {'requests':>8} {'errors':>6} {'p50 ms':>8} {'p90 ms':>8} {'p99 ms':>8} "
          f"{'max ms':>8} {'req/s':>7}")
    for row in table:
        print(f"{row.scenario:<66} {row.requests:>8} {row.errors:>6} {row.p50_ms:>8.1f} {row.p90_ms:>8.1f} "
              f"{row.p99_ms:>8.1f} {row.max_ms:>8.1f} {row.per_second:>7.0f}")
    print(f"\ncalls recorded with Ultravox id and joinUrl: {recorded} of {sent} webhooks sent")
    for name, ok in checks.items():
        print(f"  {'PASS' if ok else 'FAIL'}  {name}")
    if errors:
        print(f"  first errors: {sorted(set(errors))[:5]}")

    RESULTS.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    out = RESULTS / f"inbound-{stamp}.json"
    out.write_text(json.dumps({
        "when": stamp, "database": database, "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                                                          "platform": platform.platform()},
        "gunicorn": {"workers": os.environ.get("WEB_CONCURRENCY", "default"),
                     "threads": os.environ.get("GUNICORN_THREADS", "default")},
        "simulator_latency_ms": LATENCY_MS, "targets": TARGETS, "checks": checks,
        "rows": [asdict(row) for row in table], "recorded": recorded, "sent": sent,
    }, indent=2))
    print(f"\nresults: {out.relative_to(ROOT)}")
    return 1 if failures else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--database", choices=("auto", "postgresql", "sqlite"), default="auto",
                        help="auto: PostgreSQL when one answers on 127.0.0.1:5432 (BENCH_PG_ADMIN_URL), else SQLite")
    args = parser.parse_args(argv)
    database = args.database
    if database == "auto":
        database = "postgresql" if postgres_reachable() else "sqlite"
    return run(database)


if __name__ == "__main__":
    sys.exit(main())
