"""Shared pieces of the outbound-call and campaign tests: an agency with an agent, a
caller number per carrier and credentials, pointed at the local simulators; helpers to
read what the carrier simulator was asked to dial and to post signed status callbacks."""
from __future__ import annotations

import threading
import uuid
from dataclasses import dataclass
from urllib.parse import urlencode

import requests

from telephony.auth import mint_token
from telephony.models import Role
from telephony.services import agents as agent_service
from telephony.services import phone_numbers as number_service
from telephony.services.agencies import add_user, create_agency
from telephony.services.campaigns import claim
from tests.conftest import JWT_SECRET
from tests.inbound_helpers import (
    PLIVO_ID,
    PLIVO_TOKEN,
    TELNYX_API_KEY,
    TELNYX_PUBLIC_KEY,
    TWILIO_SID,
    TWILIO_TOKEN,
    ULTRAVOX_KEY,
    twilio_signature,
)

PUBLIC_BASE = "https://voice.example.test"
AGENT_UV_ID = "3c90c3cc-0d44-4b50-8888-8dd25736052a"
NUMBERS = {"twilio": "+14155550100", "telnyx": "+14155550101", "plivo": "+14155550102"}
CALLEE = "+14155550123"


@dataclass
class Seeded:
    agency_id: uuid.UUID
    agent_id: uuid.UUID
    token: str

    def headers(self, **extra: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}", **extra}


def seed_agency(app, *, name: str = "Outbound", carrier: str = "twilio", number: str | None = None,
                agent_uv_id: str = AGENT_UV_ID) -> Seeded:
    db = app.extensions["telephony.db"]
    store = app.extensions["telephony.credentials"]
    suffix = uuid.uuid4().hex[:8]
    with app.app_context(), db.session() as session:
        agency = create_agency(session, name, credit_balance=3600)
        add_user(session, auth_subject=f"admin-{suffix}", agency_id=agency.id, role=Role.admin)
        agent = agent_service.create_agent(session, agency.id, name="Caller", ultravox_agent_id=agent_uv_id)
        number_service.add_number(session, agency.id, e164=number or NUMBERS[carrier], carrier=carrier,
                                  agent_id=agent.id)
        store.set(session, agency.id, "ultravox", {"api_key": ULTRAVOX_KEY})
        store.set(session, agency.id, "twilio", {"account_sid": TWILIO_SID, "auth_token": TWILIO_TOKEN})
        store.set(session, agency.id, "telnyx", {"api_key": TELNYX_API_KEY, "public_key": TELNYX_PUBLIC_KEY,
                                                 "connection_id": "conn-1"})
        store.set(session, agency.id, "plivo", {"auth_id": PLIVO_ID, "auth_token": PLIVO_TOKEN})
        agency_id, agent_id = agency.id, agent.id
    return Seeded(agency_id=agency_id, agent_id=agent_id, token=mint_token(JWT_SECRET, f"admin-{suffix}"))


def sim_calls(carrier_sim, carrier: str | None = None) -> list[dict]:
    params = {"carrier": carrier} if carrier else {}
    return requests.get(f"{carrier_sim.base_url}/_sim/calls", params=params, timeout=5).json()["calls"]


def dial_requests(carrier_sim) -> list[dict]:
    """Call-creating requests the carrier simulator received, in arrival order."""
    log = requests.get(f"{carrier_sim.base_url}/_sim/requests", timeout=5).json()["requests"]
    return [r for r in log if r["method"] == "POST" and (r["path"].endswith("/Calls.json") or r["path"] == "/v2/calls"
                                                         or r["path"].endswith("/Call/"))]


def inject(sim, *failures: dict) -> None:
    requests.post(f"{sim.base_url}/_sim/failures", json={"failures": list(failures)}, timeout=5).raise_for_status()


def twilio_status(client, call_id, call_sid: str, status: str, *, sequence: int = 3):
    path = f"/webhooks/outbound/twilio/status/{call_id}"
    params = {"CallSid": call_sid, "CallStatus": status, "AccountSid": TWILIO_SID, "SequenceNumber": str(sequence)}
    signature = twilio_signature(PUBLIC_BASE + path, params)
    return client.post(path, data=urlencode(params), headers={"X-Twilio-Signature": signature,
                                                              "Content-Type": "application/x-www-form-urlencoded"})


# -- campaigns -------------------------------------------------------------------------------


def create_campaign(client, seeded, contacts, **overrides):
    body = {"name": "Spring", "agent_id": AGENT_UV_ID, "contacts": contacts,
            "pacing": {"calls_per_second": 50, "max_concurrent": 50},
            "retry": {"on": ["busy", "no-answer"], "max_attempts": 3, "delay_seconds": 0}}
    body.update(overrides)
    response = client.post("/api/v1/campaigns", json=body, headers=seeded.headers())
    assert response.status_code == 201, response.json
    return response.json


def dispatch_once(app, *, now=None) -> list[str]:
    """One claim pass over every due campaign, dialling each claimed attempt inline."""
    from telephony.models import utcnow
    from telephony.services.campaigns import claim, dial, outcomes
    db = app.extensions["telephony.db"]
    results = []
    with app.app_context(), db.session() as session:
        outcomes.reconcile(session)
        at = now or utcnow()
        for campaign_id in claim.due_campaign_ids(session, at):
            for attempt_id in claim.claim_batch(session, campaign_id, 100, now=at):
                results.append(dial.dial_attempt(session, attempt_id))
    return results


def reconcile(app, **kwargs):
    from telephony.services.campaigns import outcomes
    db = app.extensions["telephony.db"]
    with app.app_context(), db.session() as session:
        return outcomes.reconcile(session, **kwargs)


def contacts_by_phone(app, campaign_id) -> dict:
    from sqlalchemy import select

    from telephony.models import CampaignContact
    db = app.extensions["telephony.db"]
    with db.session() as session:
        return {c.phone: c for c in session.scalars(select(CampaignContact).where(
            CampaignContact.campaign_id == uuid.UUID(str(campaign_id))))}


def attempts(app, campaign_id) -> list:
    from sqlalchemy import select

    from telephony.models import DialAttempt
    db = app.extensions["telephony.db"]
    with db.session() as session:
        return list(session.scalars(select(DialAttempt).where(DialAttempt.campaign_id == uuid.UUID(str(campaign_id)))
                                    .order_by(DialAttempt.created_at)))


def claim_concurrently(app, campaign_ids, *, claimers: int = 3, rounds: int = 6, batch: int = 2) -> list[uuid.UUID]:
    """Several dispatchers (threads, each with its own sessions) claim batches at once,
    taking turns over the campaigns; every attempt id claimed, in no particular order. A
    failure in a thread fails the test here instead of being lost with the thread."""
    db = app.extensions["telephony.db"]
    campaign_ids = [uuid.UUID(str(campaign_id)) for campaign_id in campaign_ids]
    barrier = threading.Barrier(claimers)
    claimed: list[uuid.UUID] = []
    errors: list[BaseException] = []
    lock = threading.Lock()

    def claimer(offset: int) -> None:
        try:
            barrier.wait(timeout=10)
            for i in range(rounds):
                with db.session() as session:
                    ids = claim.claim_batch(session, campaign_ids[(offset + i) % len(campaign_ids)], batch)
                with lock:
                    claimed.extend(ids)
        except BaseException as exc:  # reported below, not lost in the thread
            errors.append(exc)

    threads = [threading.Thread(target=claimer, args=(n,)) for n in range(claimers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not errors, errors
    return claimed
