"""Helpers shared by the call-lifecycle tests: signed Ultravox webhooks, call
rows, and a loopback receiver for our outgoing event webhooks."""
from __future__ import annotations

import base64
import hashlib
import hmac
import json
import threading
import time
import uuid
from datetime import datetime, timedelta, timezone
from typing import Any

from flask import Flask, Response, request
from sqlalchemy import select

from telephony.models import AgentMapping, Call, CallDirection, CallSource, utcnow

WEBHOOK_SECRET = "uv-webhook-secret-0123456789abcdef"
ULTRAVOX_KEY = "Zk9Ht7Lm.wX7pN9fM3kLj6tRq2bGhA8yE5cZvD4sT"
UV_AGENT = "3c90c3cc-0d44-4b50-8888-8dd25736052a"


def iso(moment: datetime) -> str:
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def set_ultravox_credentials(app, db, agency_id: uuid.UUID, *, webhook_secret: str = WEBHOOK_SECRET,
                             api_key: str = ULTRAVOX_KEY) -> None:
    with db.session() as session:
        app.extensions["telephony.credentials"].set(session, agency_id, "ultravox",
                                                    {"api_key": api_key, "webhook_secret": webhook_secret})


def add_agent(db, agency_id: uuid.UUID, ultravox_agent_id: str = UV_AGENT) -> uuid.UUID:
    with db.session() as session:
        agent = AgentMapping(agency_id=agency_id, name="Reception", ultravox_agent_id=ultravox_agent_id)
        session.add(agent)
        session.flush()
        return agent.id


def add_call(db, agency_id: uuid.UUID, **fields: Any) -> uuid.UUID:
    values: dict[str, Any] = {"source": CallSource.webrtc, "direction": CallDirection.inbound,
                              "ultravox_call_id": str(uuid.uuid4()), "status": "created"}
    values.update(fields)
    with db.session() as session:
        call = Call(agency_id=agency_id, **values)
        session.add(call)
        session.flush()
        return call.id


def get_call(db, call_id: uuid.UUID) -> Call:
    with db.session() as session:
        return session.get(Call, call_id)


def call_by_ultravox_id(db, ultravox_call_id: str) -> Call | None:
    with db.session() as session:
        return session.scalar(select(Call).where(Call.ultravox_call_id == ultravox_call_id))


def our_metadata(call_id: uuid.UUID, agency_id: uuid.UUID, agent_id: uuid.UUID | None = None,
                 source: str = "webrtc", direction: str = "inbound") -> dict[str, str]:
    metadata = {"telephony.call_id": str(call_id), "telephony.agency_id": str(agency_id),
                "telephony.source": source, "telephony.direction": direction}
    if agent_id is not None:
        metadata["telephony.agent_id"] = str(agent_id)
    return metadata


def snapshot(ultravox_call_id: str, *, joined: datetime | None = None, ended: datetime | None = None,
             end_reason: str | None = None, billed: str | None = None, metadata: dict | None = None,
             agent_id: str | None = None, medium: dict | None = None, created: datetime | None = None,
             summary: str | None = None) -> dict[str, Any]:
    """An Ultravox Call object as webhooks carry it (the fields we read, plus some noise)."""
    return {
        "callId": ultravox_call_id, "clientVersion": None,
        "created": iso(created or utcnow() - timedelta(minutes=10)),
        "joined": iso(joined) if joined else None, "ended": iso(ended) if ended else None,
        "endReason": end_reason, "billedDuration": billed,
        "billingStatus": "BILLING_STATUS_BILLED" if billed else "BILLING_STATUS_PENDING",
        "medium": medium or {"webRtc": {}}, "recordingEnabled": True,
        "shortSummary": "Short." if summary else None, "summary": summary,
        "agent": {"agentId": agent_id, "name": "x"} if agent_id else None, "agentId": agent_id,
        "metadata": metadata or {},
    }


def sign(body: bytes, timestamp: str, secret: str = WEBHOOK_SECRET) -> str:
    """Independent of the code under test: hex HMAC-SHA256(secret, body + timestamp)."""
    return hmac.new(secret.encode(), body + timestamp.encode(), hashlib.sha256).hexdigest()


def post_webhook(client, event: str | None, call: dict[str, Any], *, agency_id: uuid.UUID | None = None,
                 secret: str = WEBHOOK_SECRET, timestamp: str | None = None, signature: str | None = None,
                 body: bytes | None = None):
    if body is None:
        payload: dict[str, Any] = {"call": call} if event is None else {"event": event, "call": call}
        body = json.dumps(payload).encode()
    timestamp = timestamp if timestamp is not None else iso(utcnow())
    headers = {"Content-Type": "application/json", "X-Ultravox-Webhook-Timestamp": timestamp,
               "X-Ultravox-Webhook-Signature": signature if signature is not None else sign(body, timestamp, secret)}
    url = f"/webhooks/ultravox/{agency_id}" if agency_id else "/webhooks/ultravox"
    return client.post(url, data=body, headers=headers)


# -- receiving our event webhooks ------------------------------------------------------------

def verify_standard_webhook(secret: str, headers: dict[str, str], body: bytes) -> bool:
    """An independent Standard Webhooks verifier, as an agency would write it."""
    key = base64.b64decode(secret.removeprefix("whsec_"))
    signed = f"{headers['webhook-id']}.{headers['webhook-timestamp']}.".encode() + body
    expected = base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
    fresh = abs(time.time() - int(headers["webhook-timestamp"])) < 300
    candidates = [part.split(",", 1)[1] for part in headers["webhook-signature"].split() if part.startswith("v1,")]
    return fresh and any(hmac.compare_digest(expected, candidate) for candidate in candidates)


class Receiver:
    """A loopback agency endpoint: records every request and answers from a script
    (e.g. [500, 500] then 200 for ever)."""

    def __init__(self, statuses: list[int] | None = None, delay_s: float = 0.0) -> None:
        self.statuses = list(statuses or [])
        self.delay_s = delay_s
        self.requests: list[tuple[dict[str, str], bytes]] = []
        self.lock = threading.Lock()
        self.app = Flask("agency-receiver")
        self.app.add_url_rule("/events", view_func=self._events, methods=["POST"])

    def _events(self) -> Response:
        with self.lock:
            self.requests.append(({k.lower(): v for k, v in request.headers.items()}, request.get_data()))
            status = self.statuses.pop(0) if self.statuses else 200
        if self.delay_s:
            time.sleep(self.delay_s)
        if status in (301, 302, 307, 308):
            return Response(status=status, headers={"Location": "http://127.0.0.1:9/elsewhere"})
        return Response(status=status)

    def bodies(self) -> list[dict[str, Any]]:
        with self.lock:
            return [json.loads(body) for _, body in self.requests]
