"""What the benchmark and the try-it script share: a fresh database, the simulators and
the service as real processes on free loopback ports, a seeded demo agency, and signed
Twilio webhooks.

Everything here is loopback-only. Processes are started by us and stopped by us (by
their own pid), databases created by us are dropped by us.
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator
from urllib.parse import urlencode, urlsplit

from cryptography.fernet import Fernet
from sqlalchemy import create_engine, text

from telephony.demo import ChildExited, wait_until_answering

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
PUBLIC_BASE_URL = "https://voice.bench.test"  # what the "carrier" signs; the service is told the same
PG_ADMIN_URL = os.environ.get("BENCH_PG_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
ULTRAVOX_KEY = "Zk9Ht7Lm.wX7pN9fM3kLj6tRq2bGhA8yE5cZvD4sT"
ULTRAVOX_AGENT_ID = "3c90c3cc-0d44-4b50-8888-8dd25736052a"
TWILIO_SID = "AC" + "d" * 32
TWILIO_TOKEN = "bench-twilio-auth-token-000000000"
DEMO_NUMBER = "+14155550100"
DEMO_CALLER = "+14155550199"
VOICE_PATH = "/webhooks/twilio/voice"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def postgres_reachable() -> bool:
    host = urlsplit(PG_ADMIN_URL)
    try:
        with socket.create_connection((host.hostname or "127.0.0.1", host.port or 5432), timeout=0.5):
            return True
    except OSError:
        return False


@contextmanager
def fresh_database(kind: str, workdir: Path) -> Iterator[str]:
    """A new, migrated database: PostgreSQL (a throw-away database, dropped after) or
    SQLite (a file in workdir). Yields its SQLAlchemy URL."""
    from telephony.config import normalize_database_url
    from telephony.migrate import upgrade

    if kind == "sqlite":
        url = f"sqlite:///{workdir / 'telephony.db'}"
        upgrade(url)
        yield url
        return
    admin_url = normalize_database_url(PG_ADMIN_URL)
    name = f"telephony_bench_{uuid.uuid4().hex[:10]}"
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    url = urlsplit(admin_url)._replace(path=f"/{name}").geturl()
    try:
        upgrade(url)
        yield url
    finally:
        with admin.connect() as conn:
            conn.execute(text(f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}'"))
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}"'))
        admin.dispose()


@dataclass
class Demo:
    agency_id: uuid.UUID
    number: str


def seed_demo(database_url: str, credentials_key: str, workdir: Path, *, fallback: str | None = None) -> Demo:
    """A demo agency whose Twilio number is answered by an Ultravox agent, through the
    same services the management API and CLI use."""
    from telephony import create_app
    from telephony.config import Config
    from telephony.services import agents, phone_numbers
    from telephony.services.agencies import create_agency

    app = create_app(Config(database_url=database_url, credentials_keys=(credentials_key,),
                            public_base_url=PUBLIC_BASE_URL), instance_path=str(workdir / "seed-instance"))
    store = app.extensions["telephony.credentials"]
    db = app.extensions["telephony.db"]
    try:
        with app.app_context(), db.session() as session:
            agency = create_agency(session, "Demo Agency", credit_balance=3600)
            agent = agents.create_agent(session, agency.id, name="Receptionist", ultravox_agent_id=ULTRAVOX_AGENT_ID)
            phone_numbers.add_number(session, agency.id, e164=DEMO_NUMBER, carrier="twilio", agent_id=agent.id,
                                     fallback_number=fallback)
            store.set(session, agency.id, "twilio", {"account_sid": TWILIO_SID, "auth_token": TWILIO_TOKEN})
            store.set(session, agency.id, "ultravox", {"api_key": ULTRAVOX_KEY})
            return Demo(agency_id=agency.id, number=DEMO_NUMBER)
    finally:
        db.dispose()


def signed_twilio_webhook(call_sid: str, *, to: str = DEMO_NUMBER, from_: str = DEMO_CALLER) -> tuple[bytes, dict]:
    """The body and headers Twilio sends for an incoming call, signed with the agency's
    auth token: HMAC-SHA1 over the public URL + every field name and value, sorted."""
    form = {"CallSid": call_sid, "AccountSid": TWILIO_SID, "From": from_, "To": to, "CallStatus": "ringing",
            "Direction": "inbound", "ApiVersion": "2010-04-01"}
    payload = PUBLIC_BASE_URL + VOICE_PATH + "".join(name + form[name] for name in sorted(form))
    signature = base64.b64encode(hmac.new(TWILIO_TOKEN.encode(), payload.encode(), hashlib.sha1).digest()).decode()
    return urlencode(form).encode(), {"Content-Type": "application/x-www-form-urlencoded",
                                      "X-Twilio-Signature": signature}


def new_call_sid() -> str:
    return "CA" + uuid.uuid4().hex


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen
    log_path: Path

    def stop(self) -> None:
        """SIGTERM to the process we started (gunicorn then stops its own workers)."""
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(timeout=5)


def start(name: str, args: list[str], env: dict[str, str], workdir: Path) -> Proc:
    log_path = workdir / f"{name}.log"
    log_file = log_path.open("wb")  # a file, never a pipe nobody drains
    popen = subprocess.Popen(args, cwd=ROOT, env={**os.environ, **env}, stdout=log_file, stderr=subprocess.STDOUT)
    log_file.close()
    return Proc(name=name, popen=popen, log_path=log_path)


def wait_ready(proc: Proc, url: str, timeout: float = 30.0) -> None:
    try:
        wait_until_answering(proc.popen, url, timeout=timeout, poll_seconds=0.1)
    except ChildExited:
        tail = proc.log_path.read_text()[-3000:]
        raise RuntimeError(f"{proc.name} exited early; see {proc.log_path}:\n{tail}") from None
    except TimeoutError:
        raise RuntimeError(f"{proc.name} did not answer {url} within {timeout:.0f} s; see {proc.log_path}") from None


@dataclass
class Stack:
    database: str  # "postgresql" | "sqlite"
    database_url: str
    service_url: str
    ultravox_url: str
    workdir: Path
    web_pid: int | None = None  # the gunicorn master (to signal it, e.g. SIGTERM mid-flight)


@contextmanager
def running_stack(database: str, *, keep_workdir: bool = False, fallback: str | None = None,
                  service_env: dict[str, str] | None = None, ready_timeout: float = 30.0) -> Iterator[Stack]:
    """Ultravox simulator + a fresh database + the service under gunicorn, configured by the
    real gunicorn.conf.py (as `make run` and the Procfile start it), on free loopback ports."""
    workdir = Path(tempfile.mkdtemp(prefix="telephony-bench-"))
    procs: list[Proc] = []
    try:
        with fresh_database(database, workdir) as database_url:
            key = Fernet.generate_key().decode()
            seed_demo(database_url, key, workdir, fallback=fallback)
            uv_port, web_port = free_port(), free_port()
            # As many simulator threads as the burst sends webhooks at once (and some).
            ultravox = start("ultravox-sim", [sys.executable, "-m", "telephony.sim", "ultravox", "--port",
                                              str(uv_port), "--threads", "256"], {}, workdir)
            procs.append(ultravox)
            ultravox_url = f"http://127.0.0.1:{uv_port}"
            wait_ready(ultravox, f"{ultravox_url}/_sim/requests")
            metrics = workdir / "metrics"  # gunicorn.conf.py would otherwise make a temp dir of its own
            metrics.mkdir()
            web = start("gunicorn", [str(BIN / "gunicorn"), "--config", "gunicorn.conf.py", "wsgi:app"], {
                "PROMETHEUS_MULTIPROC_DIR": str(metrics),
                "BIND_HOST": "127.0.0.1", "PORT": str(web_port), "DATABASE_URL": database_url,
                "CREDENTIALS_KEYS": key, "PUBLIC_BASE_URL": PUBLIC_BASE_URL, "ULTRAVOX_API_BASE": ultravox_url,
                "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}", **(service_env or {}),
            }, workdir)
            procs.append(web)
            service_url = f"http://127.0.0.1:{web_port}"
            wait_ready(web, f"{service_url}/healthz", timeout=ready_timeout)
            yield Stack(database=database, database_url=database_url, service_url=service_url,
                        ultravox_url=ultravox_url, workdir=workdir, web_pid=web.popen.pid)
            for proc in reversed(procs):  # stop before the database is dropped
                proc.stop()
    finally:
        for proc in reversed(procs):
            proc.stop()
        if not keep_workdir:
            shutil.rmtree(workdir, ignore_errors=True)
