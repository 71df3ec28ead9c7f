"""`make demo`: the seed works on both databases, and the printed commands really work.

The end-to-end test runs `python -m telephony.demo` as a user would (simulators, gunicorn,
the worker, all on free loopback ports), pastes the commands it prints into bash, and
stops it with SIGTERM, after which none of its ports answers.
"""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests
from cryptography.fernet import Fernet

from telephony import create_app
from telephony.auth import mint_token
from telephony.demo import seed
from tests.conftest import JWT_SECRET

ROOT = Path(__file__).resolve().parent.parent
STARTUP_GUARD_SECONDS = 180  # a hang guard under load, not a speed target


def test_the_seed_gives_working_keys_and_can_run_twice_on_one_database(config, tmp_path):
    first = seed(config, tmp_path / "instance", ultravox_webhook_secret="demo-secret-0123456789")
    second = seed(config, tmp_path / "instance", ultravox_webhook_secret="demo-secret-0123456789")
    assert first.agency_id != second.agency_id and first.user != second.user
    app = create_app(config, instance_path=str(tmp_path / "instance"))
    client = app.test_client()
    for seeded in (first, second):
        me = client.get("/api/v1/me", headers={"X-API-Key": seeded.api_key})
        assert me.status_code == 200 and me.json["agency_id"] == str(seeded.agency_id)
        user = client.get("/api/v1/me", headers={"Authorization": f"Bearer {mint_token(JWT_SECRET, seeded.user)}"})
        assert user.status_code == 200 and user.json["agency_id"] == str(seeded.agency_id)
        numbers = client.get("/api/v1/phone-numbers", headers={"X-API-Key": seeded.api_key}).json
        assert [n["e164"] for n in numbers["phone_numbers"]] == [seeded.number]
        credentials = client.get("/api/v1/credentials", headers={"X-API-Key": seeded.api_key}).get_data(as_text=True)
        assert seeded.twilio_auth_token not in credentials  # write-only, as for any agency
    app.extensions["telephony.db"].dispose()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


@pytest.mark.skipif(shutil.which("curl") is None, reason="the printed commands use curl")
def test_make_demo_prints_commands_that_work_and_stops_everything(tmp_path):
    ports = {"--port": _free_port(), "--ultravox-port": _free_port(), "--carriers-port": _free_port()}
    args = [sys.executable, "-m", "telephony.demo", "--instance", str(tmp_path / "instance")]
    for flag, port in ports.items():
        args += [flag, str(port)]
    env = {**os.environ, "CREDENTIALS_KEYS": Fernet.generate_key().decode()}
    log = (tmp_path / "demo.out").open("w+")
    demo = subprocess.Popen(args, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + STARTUP_GUARD_SECONDS
        while "\nReady.\n" not in (output := (tmp_path / "demo.out").read_text()):
            assert demo.poll() is None, output
            assert time.monotonic() < deadline, output
            time.sleep(0.5)
        script = output.split("In another shell, paste:\n", 1)[1].split("\nReady.\n", 1)[0]
        assert "$(" in script and "<" not in script.replace("</", "")  # no placeholder left to fill in
        pasted = subprocess.run(["bash", "-euo", "pipefail", "-c", script], cwd=tmp_path, capture_output=True,
                                text=True, timeout=120)
        assert pasted.returncode == 0, pasted.stdout + pasted.stderr
        shown = pasted.stdout + pasted.stderr
        assert "<Connect><Stream" in shown  # 1: the inbound call streams to Ultravox
        assert '"carrier_call_id":"CA' in shown  # 2: the outbound call was dialled (carrier simulator)
        assert '"webCallSocketPath"' in shown  # 4: the widget's web call, from its allowed origin
        assert '"billedDuration":"42s"' in shown  # 6: the simulator ended the dashboard call
        api_key = next(line for line in script.splitlines() if line.startswith("export API="))
        api_key = api_key.split("API_KEY=", 1)[1].strip()
        service = f"http://127.0.0.1:{ports['--port']}"
        with requests.Session() as http:
            http.trust_env = False
            calls = http.get(f"{service}/api/v1/calls", headers={"X-API-Key": api_key}, timeout=10).json()["calls"]
        assert {(c["source"], c["direction"]) for c in calls} == {
            ("twilio", "inbound"), ("twilio", "outbound"), ("webrtc", "outbound")}
    finally:
        if demo.poll() is None:
            demo.send_signal(signal.SIGTERM)
        code = demo.wait(timeout=60)
        log.close()
    assert code == 0, (tmp_path / "demo.out").read_text()
    assert "stopped the service, the worker and the simulators" in (tmp_path / "demo.out").read_text()
    assert not [port for port in ports.values() if _answers(port)]
