"""Try the inbound side of capacity locally: `make try-capacity` (python -m bench.try_capacity).

Starts the Ultravox simulator and the service (gunicorn, SQLite in a temp dir), gives the
demo agency a concurrency limit of 2 (`flask agency set-capacity` / PATCH /api/v1/capacity
do the same), and calls its Twilio number three times: two callers are connected, the
third is held (hold TwiML with a signed <Redirect>); one caller hangs up, and the third
caller's redirect connects. Then everything is shut down. Nothing leaves 127.0.0.1.
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import sys
import xml.etree.ElementTree as ET
from urllib.parse import urlencode

import requests
from sqlalchemy import create_engine, select
from sqlalchemy.orm import Session

from bench.common import (
    DEMO_CALLER,
    DEMO_NUMBER,
    PUBLIC_BASE_URL,
    TWILIO_SID,
    TWILIO_TOKEN,
    VOICE_PATH,
    new_call_sid,
    running_stack,
)
from telephony.models import Agency
from telephony.services.capacity import set_capacity

STATUS_PATH = "/webhooks/twilio/status"


def signed(path: str, form: dict[str, str]) -> tuple[bytes, dict[str, str]]:
    """A Twilio request to PUBLIC_BASE_URL + path (query included), signed as Twilio signs it."""
    payload = PUBLIC_BASE_URL + path + "".join(name + form[name] for name in sorted(form))
    signature = base64.b64encode(hmac.new(TWILIO_TOKEN.encode(), payload.encode(), hashlib.sha1).digest()).decode()
    return urlencode(form).encode(), {"Content-Type": "application/x-www-form-urlencoded",
                                      "X-Twilio-Signature": signature}


def voice_form(call_sid: str) -> dict[str, str]:
    return {"CallSid": call_sid, "AccountSid": TWILIO_SID, "From": DEMO_CALLER, "To": DEMO_NUMBER,
            "CallStatus": "ringing", "Direction": "inbound", "ApiVersion": "2010-04-01"}


def main() -> int:
    with running_stack("sqlite", fallback="+14155550111") as stack:
        print(f"Ultravox simulator: {stack.ultravox_url}   service: {stack.service_url}   database: SQLite")
        engine = create_engine(stack.database_url)
        with Session(engine) as session, session.begin():
            agency_id = session.scalar(select(Agency.id))
            assert agency_id is not None
            settings = set_capacity(session, agency_id, max_concurrent_calls=2, inbound_wait_seconds=30)
        engine.dispose()
        print(f"demo agency: Twilio number {DEMO_NUMBER}, max_concurrent_calls={settings.max_concurrent_calls}, "
              f"inbound_wait_seconds={settings.inbound_wait_seconds}\n")
        with requests.Session() as http:
            http.trust_env = False
            http.post(f"{stack.ultravox_url}/_sim/config", json={"max_concurrent_calls": 2}, timeout=5)

            def call(path: str, call_sid: str) -> str:
                body, headers = signed(path, voice_form(call_sid))
                return http.post(stack.service_url + path, data=body, headers=headers, timeout=15).text

            first, second, third = new_call_sid(), new_call_sid(), new_call_sid()
            for label, sid in (("caller 1", first), ("caller 2", second)):
                answer = call(VOICE_PATH, sid)
                print(f"{label}: POST {VOICE_PATH} -> {'connected' if '<Connect><Stream' in answer else answer}")
            held = call(VOICE_PATH, third)
            print(f"caller 3: POST {VOICE_PATH} -> held:\n{held}\n")
            redirect = (ET.fromstring(held).findtext("./Redirect") or "").strip()

            # Caller 1 hangs up: Ultravox ends its call, Twilio reports it completed.
            [uv_call] = [c for c in http.get(f"{stack.ultravox_url}/_sim/calls", timeout=5).json()["calls"]
                         if c["call"]["metadata"].get("telephony.carrier_call_id") == first]
            http.post(f"{stack.ultravox_url}/_sim/calls/{uv_call['call']['callId']}/end", json={}, timeout=5)
            body, headers = signed(STATUS_PATH, {"CallSid": first, "AccountSid": TWILIO_SID,
                                                 "CallStatus": "completed", "SequenceNumber": "3"})
            status = http.post(stack.service_url + STATUS_PATH, data=body, headers=headers, timeout=15)
            print(f"caller 1 hangs up: POST {STATUS_PATH} CallStatus=completed -> {status.status_code}")

            path = redirect[len(PUBLIC_BASE_URL):]
            answer = call(path, third)
            print(f"caller 3, after the pause: POST {path.split('?')[0]}?hold_since=... -> {answer}")
            ok = "<Redirect" in held and "<Connect><Stream" in answer and status.status_code == 204
    print("\nstopped the service and the simulator; removed the temp dir")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
