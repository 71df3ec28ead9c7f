"""The carrier SDKs are imported when a carrier of their kind is first used, not when the
app (a web worker, a CLI command, a campaign worker) starts: together they weigh ~100 MB
and seconds of start-up, and most deployments use one carrier.

httpx, the Telnyx SDK's HTTP layer and nobody else's, comes with it (and with httpx its
command-line client's rich and pygments, ~4 MB).

Each check runs in a fresh interpreter, since this test process has long imported them.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from cryptography.fernet import Fernet

ROOT = Path(__file__).resolve().parent.parent
HEAVY = ("telnyx", "plivo", "twilio.rest", "twilio.http", "httpx")
# What httpx brings along (its command-line client), which nothing of ours uses.
HTTPX_EXTRAS = ("rich", "pygments")

PRELUDE = f"""
import json, sys
def loaded(packages={HEAVY!r}):
    return sorted(p for p in packages if any(m == p or m.startswith(p + ".") for m in sys.modules))
"""


def run(code: str, tmp_path: Path) -> dict:
    env = {"PATH": "/usr/bin:/bin", "DATABASE_URL": f"sqlite:///{tmp_path / 'lazy.db'}",
           "CREDENTIALS_KEYS": Fernet.generate_key().decode(), "PUBLIC_BASE_URL": "https://voice.example.test"}
    done = subprocess.run([sys.executable, "-c", PRELUDE + code], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_importing_the_app_loads_no_carrier_sdk_rest_client(tmp_path):
    result = run("""
import wsgi
from telephony.carriers.registry import get_carriers
from telephony import credentials, worker, cli
with wsgi.app.app_context():
    registry = get_carriers()
    names = registry.names
print(json.dumps({"loaded": loaded(), "extras": loaded(%r), "names": list(names)}))
""" % (HTTPX_EXTRAS,), tmp_path)
    assert result["names"] == ["twilio", "telnyx", "plivo"]  # every carrier is still registered
    assert result["loaded"] == []
    assert result["extras"] == []


def test_a_carrier_sdk_is_imported_when_its_carrier_is_first_used(tmp_path):
    result = run("""
import wsgi
from telephony.carriers.base import WebhookRequest
from telephony.carriers.registry import get_carriers
from werkzeug.datastructures import Headers, MultiDict
with wsgi.app.app_context():
    registry = get_carriers()
    steps = {"start": loaded()}
    request = WebhookRequest(method="POST", public_url="https://voice.example.test/webhooks/telnyx/texml",
                             headers=Headers({"telnyx-signature-ed25519": "AAAA", "telnyx-timestamp": "1"}),
                             form=MultiDict(), body=b"{}")
    steps["telnyx_verified"] = registry.xml_adapter("telnyx").verify(request, {"public_key": "AAAA"})
    steps["after_telnyx"] = loaded()
    steps["plivo_xml"] = registry.xml_adapter("plivo").say_and_hangup("Sorry")
    steps["after_plivo"] = loaded()
    registry.dialer("twilio").new_client({"account_sid": "AC" + "0" * 32, "auth_token": "t"},
                                         api_base="http://127.0.0.1:9", timeout=1)
    steps["after_twilio_client"] = loaded()
print(json.dumps(steps))
""", tmp_path)
    assert result["start"] == []
    assert result["telnyx_verified"] is False  # the real SDK check ran and refused the bad signature
    assert result["after_telnyx"] == ["httpx", "telnyx"]
    assert "<Speak>Sorry</Speak>" in result["plivo_xml"]
    assert result["after_plivo"] == ["httpx", "plivo", "telnyx"]
    assert result["after_twilio_client"] == ["httpx", "plivo", "telnyx", "twilio.http", "twilio.rest"]
