"""`make demo` (python -m telephony.demo): the whole service on this machine, ready to try.

Starts the Ultravox and carrier simulators, migrates a fresh SQLite database (or the one
given), seeds a demo agency pointed at the simulators (an agent, a Twilio number, an API
key, a public web-call key, a dashboard user), starts the web server and the worker, and
prints copy-paste commands with the real ids and keys filled in. It runs until Ctrl-C,
then stops every process it started. Nothing leaves 127.0.0.1.

Every key here is made up for this run and only the simulators accept them: the demo
agency's Ultravox and Twilio credentials are fakes, stored encrypted like real ones.
"""
from __future__ import annotations

import argparse
import os
import secrets
import shlex
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlencode

import requests
from twilio.request_validator import RequestValidator

from . import create_app
from .auth import mint_token
from .config import Config, load_env_file
from .migrate import upgrade
from .models import Role
from .services import agents, api_keys, phone_numbers, public_keys
from .services.agencies import add_user, create_agency

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
# The Ultravox agent the demo maps (the simulator accepts any agent id).
ULTRAVOX_AGENT_ID = "3c90c3cc-0d44-4b50-8888-8dd25736052a"
CALLER = "+14155550199"
CALLEE = "+14155550123"
WIDGET_ORIGIN = "http://localhost:3000"  # the only browser origin the demo's public key accepts
DEMO_CREDITS = 3600
START_SECONDS = 60.0


@dataclass
class Seeded:
    agency_id: uuid.UUID
    agent_id: uuid.UUID
    number: str
    api_key: str
    public_key: str
    user: str
    twilio_account_sid: str
    twilio_auth_token: str


@dataclass
class Settings:
    port: int
    ultravox_port: int
    carriers_port: int
    database_url: str
    instance: Path

    @property
    def service_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ultravox_url(self) -> str:
        return f"http://127.0.0.1:{self.ultravox_port}"

    @property
    def carriers_url(self) -> str:
        return f"http://127.0.0.1:{self.carriers_port}"


def service_environment(settings: Settings, jwt_secret: str) -> dict[str, str]:
    """What the web server and the worker run with: the simulators as upstreams, the
    service's own URL as the public one (the demo signs webhooks for it), and the
    local-development opt-out that lets event endpoints be http://127.0.0.1 receivers."""
    return {
        "DATABASE_URL": settings.database_url, "PORT": str(settings.port), "BIND_HOST": "127.0.0.1",
        "PUBLIC_BASE_URL": settings.service_url, "SUPABASE_JWT_SECRET": jwt_secret,
        "ULTRAVOX_API_BASE": settings.ultravox_url, "TWILIO_API_BASE": settings.carriers_url,
        "TELNYX_API_BASE": f"{settings.carriers_url}/v2", "PLIVO_API_BASE": settings.carriers_url,
        "EVENT_ENDPOINTS_ALLOW_PRIVATE": "true", "WEB_CONCURRENCY": "1",
    }


def seed(config: Config, instance: Path, *, ultravox_webhook_secret: str) -> Seeded:
    """The demo agency, through the same services the management API and the CLI use.
    Its number and user are new on every run, so seeding a given database twice works."""
    app = create_app(config, instance_path=str(instance))
    store = app.extensions["telephony.credentials"]
    db = app.extensions["telephony.db"]
    twilio_sid, twilio_token = "AC" + secrets.token_hex(16), secrets.token_hex(16)
    try:
        with app.app_context(), db.session() as session:
            agency = create_agency(session, "Demo Agency", credit_balance=DEMO_CREDITS)
            user = f"demo-admin-{secrets.token_hex(3)}"
            add_user(session, auth_subject=user, agency_id=agency.id, role=Role.admin)
            agent = agents.create_agent(session, agency.id, name="Receptionist", ultravox_agent_id=ULTRAVOX_AGENT_ID,
                                        recording_enabled=True)
            number = phone_numbers.add_number(session, agency.id, e164=f"+1415555{secrets.randbelow(100):04d}",
                                              carrier="twilio", agent_id=agent.id).e164
            store.set(session, agency.id, "ultravox", {"api_key": f"demo{secrets.token_hex(2)}.{secrets.token_hex(16)}",
                                                       "webhook_secret": ultravox_webhook_secret})
            store.set(session, agency.id, "twilio", {"account_sid": twilio_sid, "auth_token": twilio_token})
            _, api_key = api_keys.create_api_key(session, agency.id, name="demo",
                                                 scopes=["calls:read", "calls:write", "campaigns:read",
                                                         "campaigns:write", "admin"])
            _, public_key = public_keys.create_public_key(session, agency.id, name="demo widget",
                                                          agent_ids=[agent.id], allowed_origins=[WIDGET_ORIGIN])
            return Seeded(agency_id=agency.id, agent_id=agent.id, number=number, api_key=api_key,
                          public_key=public_key, user=user, twilio_account_sid=twilio_sid,
                          twilio_auth_token=twilio_token)
    finally:
        db.dispose()


def commands(settings: Settings, seeded: Seeded, token: str) -> str:
    """The copy-paste part of the banner: shell commands with every value filled in.
    Each answer is printed; the ids later commands need are read from earlier answers."""
    base, quoted = settings.service_url, shlex.quote
    json_field = "python3 -c 'import json,sys; print(json.load(sys.stdin)[\"{}\"])'"
    inbound_form = {"CallSid": "CA" + uuid.uuid4().hex, "AccountSid": seeded.twilio_account_sid, "From": CALLER,
                    "To": seeded.number, "CallStatus": "ringing", "Direction": "inbound"}
    voice_url = f"{base}/webhooks/twilio/voice"
    signature = RequestValidator(seeded.twilio_auth_token).compute_signature(voice_url, inbound_form)
    return f"""\
export API={base} API_KEY={seeded.api_key}
export PUBLIC_KEY={seeded.public_key} UV_AGENT={ULTRAVOX_AGENT_ID} NUMBER={seeded.number}
export TOKEN={token}

# 1. Someone dials {seeded.number} (Twilio): the signed webhook Twilio sends. The answer is
#    TwiML that streams the call to a new Ultravox call; sent again, the same answer.
curl -sS --fail-with-body -X POST "$API/webhooks/twilio/voice" -H 'X-Twilio-Signature: {signature}' \\
     --data {quoted(urlencode(inbound_form))}; echo

# 2. An outbound call from $NUMBER to {CALLEE} (server API key; Idempotency-Key makes a retry safe).
CALL_ID=$(curl -sS --fail-with-body -X POST "$API/api/v1/calls" -H "X-API-Key: $API_KEY" \\
     -H 'Content-Type: application/json' -H "Idempotency-Key: $(date +%s)" \\
     -d '{{"agent_id": "'$UV_AGENT'", "to": "{CALLEE}", "from": "'$NUMBER'", "metadata": {{"crm_id": "demo-1"}}}}' \\
     | tee /dev/stderr | {json_field.format("call_id")}); echo

# 3. That call in the history (status, carrier, metadata; the transcript once it ended).
curl -sS --fail-with-body "$API/api/v1/calls/$CALL_ID" -H "X-API-Key: $API_KEY"; echo

# 4. A widget's web call: the public key works only from {WIDGET_ORIGIN} (the Origin header).
curl -sS --fail-with-body -X POST "$API/calls/public/create-web-call" -H "x-api-access-key: $PUBLIC_KEY" \\
     -H "voicehub-agent-id: $UV_AGENT" -H 'Origin: {WIDGET_ORIGIN}' \\
     -H 'Content-Type: application/json' -d '{{"type": "WebAudio"}}'; echo

# 5. The dashboard's test call (a Supabase-style token for the demo admin, valid 1 hour).
UV_CALL=$(curl -sS --fail-with-body -X POST "$API/functions/v1/calls-create" -H "Authorization: Bearer $TOKEN" \\
     -H 'Content-Type: application/json' -d '{{"agent_id": "'$UV_AGENT'"}}' \\
     | tee /dev/stderr | {json_field.format("ultravox_call_id")}); echo

# 6. End that call in the Ultravox simulator: its signed call.ended and call.billed webhooks
#    reach the service, which settles the call (failed: nobody joined it) and charges 42 s of credit.
curl -sS --fail-with-body -X POST "{settings.ultravox_url}/_sim/calls/$UV_CALL/end" \\
     -H 'Content-Type: application/json' -d '{{"billedDuration": "42s"}}'; echo
sleep 1; curl -sS --fail-with-body "$API/api/v1/calls?limit=5" -H "X-API-Key: $API_KEY"; echo
"""


def banner(settings: Settings, seeded: Seeded, token: str, logs: Path) -> str:
    return f"""
Demo running. Ctrl-C stops everything.

  service      {settings.service_url}   (API explorer: {settings.service_url}/docs/)
  simulators   Ultravox {settings.ultravox_url}, Twilio/Telnyx/Plivo {settings.carriers_url}
  database     {settings.database_url}
  logs         {logs}/  (web.log, worker.log, simulators.log)

  demo agency  {seeded.agency_id}  ({DEMO_CREDITS} s of credit)
  agent        {seeded.agent_id}  "Receptionist" -> Ultravox agent {ULTRAVOX_AGENT_ID}
  number       {seeded.number} (Twilio) -> that agent
  dashboard    user {seeded.user} (admin)

In another shell, paste:

{commands(settings, seeded, token)}
Ready.
"""


# -- processes -----------------------------------------------------------------------------


class ChildExited(Exception):
    """The child process stopped before it answered."""


def wait_until_answering(process: subprocess.Popen, url: str, *, timeout: float, poll_seconds: float) -> None:
    """Poll `url` until the child answers below 500 (a started server). Raises ChildExited
    if the child stops first, TimeoutError if it has not answered within `timeout` seconds.
    bench/common.py starts its children the same way."""
    deadline = time.monotonic() + timeout
    with requests.Session() as http:
        http.trust_env = False  # loopback: never through a proxy from the environment
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise ChildExited(url)
            try:
                if http.get(url, timeout=1).status_code < 500:
                    return
            except requests.RequestException:
                pass
            time.sleep(poll_seconds)
    raise TimeoutError(url)


class Processes:
    """The children we start, stopped by their own pid (SIGTERM, then SIGKILL)."""

    def __init__(self, logs: Path) -> None:
        self.logs = logs
        self.running: list[tuple[str, subprocess.Popen]] = []

    def start(self, name: str, args: list[str], env: dict[str, str]) -> subprocess.Popen:
        with (self.logs / f"{name}.log").open("wb") as log:  # a file, never a pipe nobody drains
            # A session of its own: Ctrl-C reaches the demo only, which then stops each child
            # with SIGTERM (their graceful stop) instead of every process getting SIGINT at once.
            process = subprocess.Popen(args, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                                       stdin=subprocess.DEVNULL, start_new_session=True)
        self.running.append((name, process))
        return process

    def wait_until_answering(self, name: str, url: str) -> None:
        try:
            wait_until_answering(dict(self.running)[name], url, timeout=START_SECONDS, poll_seconds=0.2)
        except ChildExited:
            tail = (self.logs / f"{name}.log").read_text(errors="replace")[-2000:]
            raise SystemExit(f"demo: {name} stopped while starting (see {self.logs / name}.log):\n{tail}") from None
        except TimeoutError:
            raise SystemExit(f"demo: {name} did not answer {url} within {START_SECONDS:.0f} s "
                             f"(see {self.logs / name}.log)") from None

    def first_exited(self) -> str | None:
        return next((name for name, process in self.running if process.poll() is not None), None)

    def stop_all(self) -> None:
        for _, process in reversed(self.running):
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for _, process in reversed(self.running):
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=5)


# -- main ----------------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m telephony.demo", description=__doc__.split("\n")[0])
    parser.add_argument("--port", type=int, default=int(os.environ.get("PORT", "8000")),
                        help="the service's port (default $PORT or 8000)")
    parser.add_argument("--ultravox-port", type=int, default=9100)
    parser.add_argument("--carriers-port", type=int, default=9200)
    parser.add_argument("--database-url", default=None,
                        help="a database to migrate and seed (default: a fresh instance/demo.db, "
                             "recreated on every run)")
    parser.add_argument("--instance", type=Path, default=ROOT / "instance",
                        help="folder for the demo database, logs and the development encryption key")
    return parser


def main(argv: list[str] | None = None) -> int:
    load_env_file(ROOT / ".env")  # as wsgi.py does: the same PORT and CREDENTIALS_KEYS as `make run`
    args = _parser().parse_args(argv)
    instance: Path = args.instance.resolve()
    logs = instance / "demo-logs"
    logs.mkdir(parents=True, exist_ok=True)
    database_url = args.database_url
    if database_url is None:
        database = instance / "demo.db"
        database.unlink(missing_ok=True)
        database_url = f"sqlite:///{database}"
    settings = Settings(port=args.port, ultravox_port=args.ultravox_port, carriers_port=args.carriers_port,
                        database_url=database_url, instance=instance)
    jwt_secret = os.environ.get("SUPABASE_JWT_SECRET") or secrets.token_urlsafe(32)
    webhook_secret = secrets.token_urlsafe(24)
    environment = {**os.environ, **service_environment(settings, jwt_secret),
                   "DEMO_ULTRAVOX_WEBHOOK_SECRET": webhook_secret,
                   "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}

    print(f"demo: migrating {database_url}", flush=True)
    upgrade(database_url)
    config = Config.from_env(environment, instance_path=instance)
    seeded = seed(config, instance, ultravox_webhook_secret=webhook_secret)
    token = mint_token(jwt_secret, seeded.user)

    # The web server and the worker get the keys the seed used (generated into the instance
    # folder when none are configured), through their environment.
    environment["CREDENTIALS_KEYS"] = ",".join(config.credentials_keys)

    processes = Processes(logs)
    # Ctrl-C and SIGTERM stop the demo (KeyboardInterrupt); the children are stopped in
    # `finally`. SIGINT is set explicitly: a shell starts background jobs with it ignored.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        print("demo: starting the simulators, the web server and the worker", flush=True)
        processes.start("simulators", [sys.executable, "-m", "telephony.sim", "all",
                                       "--ultravox-port", str(settings.ultravox_port),
                                       "--carriers-port", str(settings.carriers_port),
                                       "--webhook-url", f"{settings.service_url}/webhooks/ultravox/{seeded.agency_id}",
                                       "--webhook-secret-env", "DEMO_ULTRAVOX_WEBHOOK_SECRET"], environment)
        processes.wait_until_answering("simulators", f"{settings.ultravox_url}/_sim/requests")
        processes.start("web", [str(BIN / "gunicorn"), "--config", "gunicorn.conf.py", "wsgi:app"], environment)
        processes.start("worker", [str(BIN / "flask"), "--app", "wsgi", "worker", "run"], environment)
        processes.wait_until_answering("web", f"{settings.service_url}/readyz")
        print(banner(settings, seeded, token, logs), flush=True)
        while (exited := processes.first_exited()) is None:
            time.sleep(0.5)
        print(f"demo: {exited} stopped unexpectedly (see {logs / exited}.log); stopping the rest",
              file=sys.stderr, flush=True)
        return 1
    except KeyboardInterrupt:
        return 0
    finally:
        processes.stop_all()
        print("demo: stopped the service, the worker and the simulators", flush=True)

if __name__ == "__main__":
    sys.exit(main())
