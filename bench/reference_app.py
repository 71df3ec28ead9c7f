"""The bare minimum an inbound Twilio webhook needs, as the yardstick of `make bench-inbound`.

A Flask app that checks the Twilio signature with the SDK, creates the Ultravox agent
call with `requests`, and answers TwiML `<Connect><Stream>`: no database, no tenancy
(one hard-wired account), no logging, no metrics. Run by bench/inbound.py under gunicorn
with the service's shape (2 workers x 128 gthreads), beside the service, so that what the
service costs above it is the price of everything else it does.

Settings come from the environment (the benchmark sets them): REFERENCE_TWILIO_TOKEN,
REFERENCE_PUBLIC_BASE_URL, REFERENCE_ULTRAVOX_BASE, REFERENCE_ULTRAVOX_KEY,
REFERENCE_ULTRAVOX_AGENT_ID. The Ultravox call carries the carrier's CallSid in its
metadata, as the service's does, so the benchmark can subtract the simulator's time.
"""
from __future__ import annotations

import os

import requests
from flask import Flask, Response, abort, request
from twilio.request_validator import RequestValidator
from twilio.twiml.voice_response import VoiceResponse

TOKEN = os.environ.get("REFERENCE_TWILIO_TOKEN", "")
PUBLIC_BASE_URL = os.environ.get("REFERENCE_PUBLIC_BASE_URL", "")
ULTRAVOX_BASE = os.environ.get("REFERENCE_ULTRAVOX_BASE", "https://api.ultravox.ai")
ULTRAVOX_KEY = os.environ.get("REFERENCE_ULTRAVOX_KEY", "")
AGENT_ID = os.environ.get("REFERENCE_ULTRAVOX_AGENT_ID", "")

app = Flask(__name__)
validator = RequestValidator(TOKEN)
ultravox = requests.Session()  # pooled keep-alive connections, shared by the threads


@app.get("/healthz")
def healthz() -> dict[str, str]:
    return {"status": "ok"}


@app.post("/webhooks/twilio/voice")
def voice() -> Response:
    if not validator.validate(PUBLIC_BASE_URL + request.path, request.form,
                              request.headers.get("X-Twilio-Signature", "")):
        abort(403)
    created = ultravox.post(
        f"{ULTRAVOX_BASE}/api/agents/{AGENT_ID}/calls", headers={"X-API-Key": ULTRAVOX_KEY}, timeout=(3.05, 5),
        json={"medium": {"twilio": {}}, "firstSpeakerSettings": {"agent": {}},
              "templateContext": {"caller_number": request.form["From"], "called_number": request.form["To"]},
              "metadata": {"telephony.carrier_call_id": request.form["CallSid"]}})
    created.raise_for_status()
    twiml = VoiceResponse()
    twiml.connect().stream(url=created.json()["joinUrl"])
    return Response(str(twiml), mimetype="text/xml")
