"""Campaign-dispatch benchmark: `make bench-campaign` (python -m bench.campaign).

The target (from the issue): 2,000 contacts at 20 calls/s with 2 worker processes on
PostgreSQL, against the simulators: no 1-second window with more than 20 call starts,
mean rate at least 19/s, zero duplicate dials, zero lost contacts. Again with one worker
killed (SIGKILL) mid-run: still zero duplicates and zero lost.

Per run: a fresh PostgreSQL database (required: exits 2 if none answers on
BENCH_PG_ADMIN_URL), the Ultravox and carrier simulators on free loopback ports, the
demo agency of bench/common.py (Twilio number + credentials + Ultravox agent), one
campaign created *paused* through the service layer (the same functions the API calls)
with 2,000 distinct contacts (+14155552000..+14155553999), 20 calls/s, a calling window
of 00:00-23:59 every day, no retries, and max_concurrent = 10,000 so the concurrency cap
never binds (the simulators never report an outcome, so every placed call stays live;
no status callbacks are sent). Then two `flask --app wsgi worker run` processes (the
Procfile's worker, default DISPATCH_THREADS) are started, the campaign is resumed, and
the run ends when no contact is queued and no attempt is claimed or dialling without a
carrier id (or at a time limit).

  run 1  "2 workers"         both workers run to the end.
  run 2  "1 worker SIGKILLed" worker 1 gets SIGKILL once 1/3 of the contacts have been
         dialled; it is NOT restarted, the survivor must finish. The dead worker's
         claimed attempts come back only after the dispatcher's CLAIM_TIMEOUT (120 s),
         so this run takes ~2.5 min and its mean rate is not a target.

Measured from the carrier simulator's GET /_sim/calls (each entry has a `created`
timestamp, microseconds, taken when the simulator handled the Twilio Calls.json POST):
  max starts in any 1 s window   sliding: the most starts in [t, t+1 s) over every start t
                                 (also reported per calendar second, which is how the
                                 service's pacer counts)
  mean rate                      (starts - 1) / (last start - first start)
  duplicate dials                numbers dialled more than once
  lost contacts                  contacts the carrier never dialled whose final state is not
                                 a deliberate non-dial (suppressed / cancelled / failed);
                                 "unknown" counts as lost when the carrier never saw it.
Prints a table, writes bench/results/campaign-<time>.json, exits 1 if a target is missed.
"""
from __future__ import annotations

import argparse
import bisect
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import requests
from cryptography.fernet import Fernet
from sqlalchemy import create_engine, text

from bench.common import (
    BIN,
    PG_ADMIN_URL,
    PUBLIC_BASE_URL,
    ROOT,
    ULTRAVOX_AGENT_ID,
    Proc,
    free_port,
    fresh_database,
    postgres_reachable,
    seed_demo,
    start,
    wait_ready,
)
from telephony.services.campaigns.pacing import pacing_plan

RESULTS = ROOT / "bench" / "results"
CONTACTS = 2000
CPS = 20
WORKERS = 2
MAX_CONCURRENT = 10_000  # >= CONTACTS: placed calls never end here, so the cap must not bind
KILL_AFTER_FRACTION = 1 / 3
RUN_TIMEOUT_S = {"2 workers": 150.0, "1 worker SIGKILLed": 240.0}
TARGETS = {"max_starts_any_1s_window": CPS, "mean_rate_per_s": 19.0, "duplicates": 0, "lost": 0}
FIRST_NUMBER = 14155552000


def contact_numbers() -> list[str]:
    return [f"+{FIRST_NUMBER + i}" for i in range(CONTACTS)]


@dataclass
class RunResult:
    scenario: str
    contacts: int
    dialled: int = 0                 # carrier dials (sim log entries) to campaign numbers
    distinct_dialled: int = 0
    duplicates: int = 0              # numbers dialled more than once
    lost: int = 0
    max_starts_sliding_1s: int = 0
    max_starts_calendar_1s: int = 0
    mean_rate_per_s: float = 0.0
    first_to_last_s: float = 0.0
    wall_s: float = 0.0              # resume -> every contact settled
    finished: bool = False
    killed_at_dialled: int | None = None
    contact_states: dict[str, int] = field(default_factory=dict)
    attempt_states: dict[str, int] = field(default_factory=dict)
    never_dialled_by_state: dict[str, int] = field(default_factory=dict)
    db_vs_sim: dict[str, int] = field(default_factory=dict)
    # the same window counts over our own dial_attempts.dial_started_at (taken right after the
    # pacer released the slot, just before the carrier request): pacer vs what the carrier saw
    db_max_starts_sliding_1s: int = 0
    db_max_starts_calendar_1s: int = 0
    carrier_lag_ms: dict[str, float] = field(default_factory=dict)  # carrier `created` - dial_started_at
    # pacer slots nobody used between the first and the last start (from dial_started_at):
    # where the mean rate is lost below the pacer's own rate
    pacer_rate_per_s: float = 0.0
    unused_slots: int = 0
    largest_gaps_s: list[float] = field(default_factory=list)
    busiest_carrier_seconds: dict[str, int] = field(default_factory=dict)
    worker_exit_codes: list[int | None] = field(default_factory=list)
    worker_log_errors: list[str] = field(default_factory=list)


# -- set-up ------------------------------------------------------------------------------


def create_paused_campaign(database_url: str, key: str, workdir: Path, agency_id) -> str:
    """Through the service layer, like POST /api/v1/campaigns with start=false."""
    from telephony import create_app
    from telephony.config import Config
    from telephony.services.campaigns import manage as campaigns
    from telephony.services.campaigns.windows import CallingWindow, is_open, timezone_for

    window = {"days": ["mon", "tue", "wed", "thu", "fri", "sat", "sun"], "start": "00:00", "end": "23:59"}
    zone = timezone_for(f"+{FIRST_NUMBER}", "UTC")
    if not is_open(CallingWindow.from_dict(window), zone, datetime.now(timezone.utc)):
        raise SystemExit(f"the calling window 00:00-23:59 is closed right now in {zone}; run again in a minute")
    app = create_app(Config(database_url=database_url, credentials_keys=(key,), public_base_url=PUBLIC_BASE_URL),
                     instance_path=str(workdir / "seed-instance"))
    db = app.extensions["telephony.db"]
    try:
        with app.app_context(), db.session() as session:
            campaign = campaigns.create_campaign(
                session, agency_id, name="bench 2000 @ 20/s", agent_id=ULTRAVOX_AGENT_ID, from_numbers=None,
                start_at=None, calling_window=window, default_timezone="UTC", calls_per_second=CPS,
                max_concurrent=MAX_CONCURRENT, max_concurrent_agency=None, retry_on=[], max_attempts=1,
                retry_delay_seconds=0, template_context=None, start=False)
            report = campaigns.add_contacts(session, campaign, items=[{"phone": p} for p in contact_numbers()])
            if report["added"] != CONTACTS:
                raise RuntimeError(f"only {report['added']} of {CONTACTS} contacts added: {report}")
            return str(campaign.id)
    finally:
        db.dispose()


def resume_campaign(engine, campaign_id: str) -> None:
    # What POST /api/v1/campaigns/{id}/resume does (services.campaigns.manage.set_status).
    with engine.begin() as conn:
        conn.execute(text("UPDATE campaigns SET status = 'running', paused_reason = NULL, backoff_until = NULL "
                          "WHERE id = :id AND status = 'paused'"), {"id": campaign_id})


def wait_for_log(proc: Proc, needle: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.popen.poll() is not None:
            raise RuntimeError(f"{proc.name} exited early; see {proc.log_path}:\n{proc.log_path.read_text()[-3000:]}")
        if needle in proc.log_path.read_text(errors="replace"):
            return
        time.sleep(0.2)
    raise RuntimeError(f"{proc.name} did not log {needle!r} within {timeout:.0f} s; see {proc.log_path}")


# -- measuring ---------------------------------------------------------------------------


def db_progress(engine, campaign_id: str) -> dict[str, int]:
    with engine.connect() as conn:
        row = conn.execute(text("""
            SELECT
              (SELECT count(*) FROM campaign_contacts WHERE campaign_id = :c AND state = 'queued') AS queued,
              (SELECT count(*) FROM dial_attempts WHERE campaign_id = :c AND state = 'claimed') AS claimed,
              (SELECT count(*) FROM dial_attempts WHERE campaign_id = :c AND state = 'dialing'
                                                  AND carrier_call_id IS NULL) AS dialing,
              (SELECT count(*) FROM dial_attempts WHERE campaign_id = :c AND dial_started_at IS NOT NULL) AS started
        """), {"c": campaign_id}).one()
    return dict(row._mapping)


def db_states(engine, campaign_id: str) -> tuple[dict[str, int], dict[str, int], dict[str, str], Counter]:
    with engine.connect() as conn:
        contacts = dict(conn.execute(text("SELECT state, count(*) FROM campaign_contacts WHERE campaign_id = :c "
                                          "GROUP BY state"), {"c": campaign_id}).all())
        attempts = dict(conn.execute(text("SELECT state, count(*) FROM dial_attempts WHERE campaign_id = :c "
                                          "GROUP BY state"), {"c": campaign_id}).all())
        by_phone = dict(conn.execute(text("SELECT phone, state FROM campaign_contacts WHERE campaign_id = :c"),
                                     {"c": campaign_id}).all())
        rows = conn.execute(text(
            "SELECT c.phone, a.dial_started_at FROM dial_attempts a JOIN campaign_contacts c ON c.id = a.contact_id "
            "WHERE a.campaign_id = :c AND a.dial_started_at IS NOT NULL"), {"c": campaign_id}).all()
    return contacts, attempts, by_phone, [(phone, when.timestamp()) for phone, when in rows]


def sim_starts(carriers_url: str) -> list[tuple[float, str]]:
    calls = requests.get(f"{carriers_url}/_sim/calls", params={"carrier": "twilio"}, timeout=30).json()["calls"]
    out = []
    for call in calls:
        if call.get("direction") != "outbound-api":
            continue
        when = datetime.strptime(call["created"], "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=timezone.utc)
        out.append((when.timestamp(), call["to"]))
    return sorted(out)


def max_in_window(times: list[float], width: float = 1.0) -> int:
    best = 0
    for i, t in enumerate(times):
        best = max(best, bisect.bisect_left(times, t + width, lo=i) - i)
    return best


def measure(result: RunResult, engine, campaign_id: str, carriers_url: str) -> None:
    starts = sim_starts(carriers_url)
    numbers = set(contact_numbers())
    starts = [(t, to) for t, to in starts if to in numbers]
    times = [t for t, _ in starts]
    per_number = Counter(to for _, to in starts)
    result.dialled = len(starts)
    result.distinct_dialled = len(per_number)
    result.duplicates = sum(1 for n in per_number.values() if n > 1)
    result.max_starts_sliding_1s = max_in_window(times)
    result.max_starts_calendar_1s = max(Counter(int(t) for t in times).values()) if times else 0
    if len(times) > 1:
        result.first_to_last_s = round(times[-1] - times[0], 3)
        result.mean_rate_per_s = round((len(times) - 1) / (times[-1] - times[0]), 2)
    contacts, attempts, by_phone, db_rows = db_states(engine, campaign_id)
    db_started = Counter(phone for phone, _ in db_rows)
    db_times = sorted(t for _, t in db_rows)
    result.db_max_starts_sliding_1s = max_in_window(db_times)
    result.db_max_starts_calendar_1s = max(Counter(int(t) for t in db_times).values()) if db_times else 0
    pacing = pacing_plan(CPS)
    result.pacer_rate_per_s = round(pacing.slots / pacing.window, 2)
    gaps = [b - a for a, b in zip(db_times, db_times[1:])]
    result.unused_slots = sum(max(0, round(gap / pacing.spacing) - 1) for gap in gaps)
    result.largest_gaps_s = [round(gap, 3) for gap in sorted(gaps)[-5:]]
    db_when = {phone: t for phone, t in db_rows}
    lags = sorted((t - db_when[to]) * 1000 for t, to in starts if to in db_when)
    if lags:
        result.carrier_lag_ms = {"p50": round(lags[len(lags) // 2], 1), "p99": round(lags[int(len(lags) * 0.99)], 1),
                                 "max": round(lags[-1], 1)}
    per_second = Counter(int(t) for t in times)
    result.busiest_carrier_seconds = {
        datetime.fromtimestamp(sec, timezone.utc).strftime("%H:%M:%S"): n for sec, n in per_second.most_common(5)}
    result.contact_states = contacts
    result.attempt_states = attempts
    never = Counter(state for phone, state in by_phone.items() if phone not in per_number)
    result.never_dialled_by_state = dict(never)
    result.lost = sum(n for state, n in never.items() if state not in ("suppressed", "cancelled", "failed"))
    result.db_vs_sim = {
        "attempts_with_dial_started_at": sum(db_started.values()),
        "numbers_with_2plus_started_attempts": sum(1 for n in db_started.values() if n > 1),
        "started_in_db_not_at_carrier": sum(1 for p in db_started if p not in per_number),
        "at_carrier_not_started_in_db": sum(1 for p in per_number if p not in db_started),
    }


# -- one run -----------------------------------------------------------------------------


def one_run(scenario: str, *, kill: bool, keep: bool) -> RunResult:
    result = RunResult(scenario=scenario, contacts=CONTACTS)
    workdir = Path(tempfile.mkdtemp(prefix="telephony-bench-campaign-"))
    procs: list[Proc] = []
    try:
        with fresh_database("postgresql", workdir) as database_url:
            key = Fernet.generate_key().decode()
            demo = seed_demo(database_url, key, workdir)
            campaign_id = create_paused_campaign(database_url, key, workdir, demo.agency_id)
            uv_port, ca_port = free_port(), free_port()
            ultravox = start("ultravox-sim", [sys.executable, "-m", "telephony.sim", "ultravox", "--port",
                                              str(uv_port)], {}, workdir)
            procs.append(ultravox)
            carriers = start("carriers-sim", [sys.executable, "-m", "telephony.sim", "carriers", "--port",
                                              str(ca_port)], {}, workdir)
            procs.append(carriers)
            ultravox_url, carriers_url = f"http://127.0.0.1:{uv_port}", f"http://127.0.0.1:{ca_port}"
            wait_ready(ultravox, f"{ultravox_url}/_sim/requests")
            wait_ready(carriers, f"{carriers_url}/_sim/requests")
            env = {"DATABASE_URL": database_url, "CREDENTIALS_KEYS": key, "PUBLIC_BASE_URL": PUBLIC_BASE_URL,
                   "ULTRAVOX_API_BASE": ultravox_url, "TWILIO_API_BASE": carriers_url,
                   "TELNYX_API_BASE": f"{carriers_url}/v2", "PLIVO_API_BASE": carriers_url,
                   "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
            workers = []
            for i in range(WORKERS):
                worker = start(f"worker-{i + 1}", [str(BIN / "flask"), "--app", "wsgi", "worker", "run"], env,
                               workdir)
                procs.append(worker)
                workers.append(worker)
            for worker in workers:
                wait_for_log(worker, "dispatcher started")
            engine = create_engine(database_url, pool_size=2)
            try:
                resume_campaign(engine, campaign_id)
                began = time.monotonic()
                deadline = began + RUN_TIMEOUT_S[scenario]
                last_print = 0.0
                while time.monotonic() < deadline:
                    progress = db_progress(engine, campaign_id)
                    if kill and result.killed_at_dialled is None and \
                            progress["started"] >= CONTACTS * KILL_AFTER_FRACTION:
                        workers[0].popen.kill()  # SIGKILL, by its own pid; not restarted
                        workers[0].popen.wait(timeout=10)
                        result.killed_at_dialled = progress["started"]
                        print(f"  [{time.monotonic() - began:6.1f} s] SIGKILL worker-1 (pid {workers[0].popen.pid}) "
                              f"at {progress['started']} dials started", flush=True)
                    if progress["queued"] == 0 and progress["claimed"] == 0 and progress["dialing"] == 0:
                        result.finished = True
                        break
                    if time.monotonic() - last_print >= 10:
                        last_print = time.monotonic()
                        print(f"  [{time.monotonic() - began:6.1f} s] {progress}", flush=True)
                    time.sleep(0.5)
                result.wall_s = round(time.monotonic() - began, 1)
                time.sleep(1.0)  # let any last carrier request land in the simulator's log
                measure(result, engine, campaign_id, carriers_url)
            finally:
                engine.dispose()
            for worker in workers:
                worker.stop()
                result.worker_exit_codes.append(worker.popen.returncode)
                lines = worker.log_path.read_text(errors="replace").splitlines()
                result.worker_log_errors += [f"{worker.name}: {line[:300]}" for line in lines
                                             if '"level": "error"' in line or "Traceback" in line][:10]
            for proc in reversed(procs):  # stop before the database is dropped
                proc.stop()
    finally:
        for proc in reversed(procs):
            proc.stop()
        if keep:
            print(f"  logs kept in {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    return result


# -- report ------------------------------------------------------------------------------


def checks_for(result: RunResult, *, rate_targets: bool) -> dict[str, bool]:
    checks = {
        f"{result.scenario}: finished (no contact queued / claimed / dialling without carrier id)": result.finished,
        f"{result.scenario}: zero duplicate dials": result.duplicates == 0,
        f"{result.scenario}: zero lost contacts": result.lost == 0,
    }
    if rate_targets:
        checks[f"{result.scenario}: no 1 s window with more than {CPS} starts"] = \
            result.max_starts_sliding_1s <= TARGETS["max_starts_any_1s_window"]
        checks[f"{result.scenario}: mean rate >= {TARGETS['mean_rate_per_s']}/s"] = \
            result.mean_rate_per_s >= TARGETS["mean_rate_per_s"]
    return checks


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--only", choices=("normal", "kill"), help="run one scenario only")
    parser.add_argument("--keep-logs", action="store_true", help="keep the worker / simulator logs")
    args = parser.parse_args(argv)
    if not postgres_reachable():
        print(f"PostgreSQL is required and does not answer at {PG_ADMIN_URL} (set BENCH_PG_ADMIN_URL).",
              file=sys.stderr)
        return 2
    results: list[RunResult] = []
    checks: dict[str, bool] = {}
    started = time.monotonic()
    if args.only in (None, "normal"):
        print(f"run 1: {CONTACTS} contacts, {CPS} calls/s, {WORKERS} workers", flush=True)
        results.append(one_run("2 workers", kill=False, keep=args.keep_logs))
        checks.update(checks_for(results[-1], rate_targets=True))
    if args.only in (None, "kill"):
        print("run 2: the same, worker-1 SIGKILLed after 1/3 of the contacts (not restarted)", flush=True)
        results.append(one_run("1 worker SIGKILLed", kill=True, keep=args.keep_logs))
        checks.update(checks_for(results[-1], rate_targets=False))

    print()
    header = (f"{'scenario':<20} {'contacts':>8} {'dialled':>7} {'distinct':>8} {'dup':>4} {'lost':>4} "
              f"{'max/1s sliding':>14} {'max/1s calendar':>15} {'mean/s':>7} {'first-last s':>12} {'wall s':>7}")
    print(header)
    for r in results:
        print(f"{r.scenario:<20} {r.contacts:>8} {r.dialled:>7} {r.distinct_dialled:>8} {r.duplicates:>4} "
              f"{r.lost:>4} {r.max_starts_sliding_1s:>14} {r.max_starts_calendar_1s:>15} {r.mean_rate_per_s:>7.2f} "
              f"{r.first_to_last_s:>12.1f} {r.wall_s:>7.1f}")
    for r in results:
        print(f"\n{r.scenario}: contacts {r.contact_states}; attempts {r.attempt_states}")
        print(f"  pacer (our dial_started_at): max {r.db_max_starts_sliding_1s} in any 1 s window, "
              f"{r.db_max_starts_calendar_1s} per calendar second; carrier saw it {r.carrier_lag_ms} ms later; "
              f"busiest carrier seconds {r.busiest_carrier_seconds}")
        print(f"  pacer rate {r.pacer_rate_per_s}/s; slots left unused between first and last start: "
              f"{r.unused_slots}; largest gaps {r.largest_gaps_s} s")
        print(f"  never dialled, by final state: {r.never_dialled_by_state or 'none'}; db vs carrier: {r.db_vs_sim}")
        if r.killed_at_dialled is not None:
            print(f"  worker-1 SIGKILLed at {r.killed_at_dialled} dials started")
        if r.worker_log_errors:
            print("  worker log errors: " + " | ".join(r.worker_log_errors[:5]))
    print()
    for name, ok in checks.items():
        print(f"  {'PASS' if ok else 'FAIL'}  {name}")

    RESULTS.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    out = RESULTS / f"campaign-{stamp}.json"
    out.write_text(json.dumps({
        "when": stamp, "database": "postgresql",
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
        "settings": {"contacts": CONTACTS, "calls_per_second": CPS, "workers": WORKERS,
                     "dispatch_threads": os.environ.get("DISPATCH_THREADS", "default (8)"),
                     "max_concurrent": MAX_CONCURRENT, "kill_after_fraction": KILL_AFTER_FRACTION,
                     "timestamps": "carrier simulator /_sim/calls `created`"},
        "targets": TARGETS, "checks": checks, "runs": [asdict(r) for r in results],
        "total_s": round(time.monotonic() - started, 1),
    }, indent=2, default=str))
    print(f"\nresults: {out.relative_to(ROOT)}  ({time.monotonic() - started:.0f} s in all)")
    return 0 if all(checks.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
