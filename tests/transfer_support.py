"""Shared pieces of the transfer tests: an agency with a number, an agent with targets,
a live inbound call started through the real webhook, and the simulators' controls."""
from __future__ import annotations

import base64
import uuid
from dataclasses import dataclass
from typing import Any

import requests
from cryptography.hazmat.primitives import serialization
from sqlalchemy import select

from telephony.models import AgentMapping, Call, CallTransfer
from telephony.services.transfer_targets import validate_targets
from tests.inbound_helpers import _TELNYX_PRIVATE, CarrierCase, PlivoCase, TelnyxTexmlCase, TwilioCase, seed

SALES = "+14155550123"
SUPPORT = "+14155550124"
TARGETS = [
    {"name": "sales", "destination": SALES, "description": "New orders and prices", "mode": "cold",
     "ring_timeout_seconds": 20},
    {"name": "support", "destination": SUPPORT, "description": "Problems with an existing order", "mode": "cold"},
]
CASES: dict[str, CarrierCase] = {"twilio": TwilioCase(), "telnyx": TelnyxTexmlCase(), "plivo": PlivoCase()}
TELNYX_SIGNING_KEY = base64.b64encode(_TELNYX_PRIVATE.private_bytes(
    serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption())).decode()


@dataclass
class LiveCall:
    agency_id: uuid.UUID
    agent_id: uuid.UUID
    call_id: uuid.UUID
    ultravox_call_id: str
    carrier_call_id: str
    carrier: str


def set_targets(app: Any, agent_id: uuid.UUID, targets: list[dict[str, Any]]) -> None:
    with app.extensions["telephony.db"].session() as session:
        session.get(AgentMapping, agent_id).transfer_targets = validate_targets(targets)


def start_inbound_call(app: Any, carrier: str, *, number: str = "+14155550100",
                       targets: list[dict[str, Any]] | None = None) -> LiveCall:
    """A seeded agency whose agent has targets, and a call started by the carrier's
    signed inbound webhook (so the tool is attached exactly as in production)."""
    seeded = seed(app, carrier=carrier, number=number)
    assert seeded.agent_id is not None
    set_targets(app, seeded.agent_id, TARGETS if targets is None else targets)
    case = CASES[carrier]
    carrier_call_id = case.call_id()
    response = case.post(app.test_client(), case.voice_path, case.inbound_form(carrier_call_id, to=number))
    assert response.status_code == 200, response.get_data(as_text=True)
    with app.extensions["telephony.db"].session() as session:
        call = session.scalar(select(Call).where(Call.carrier_call_id == carrier_call_id))
        assert call is not None and call.ultravox_call_id
        return LiveCall(agency_id=seeded.agency_id, agent_id=seeded.agent_id, call_id=call.id,
                        ultravox_call_id=call.ultravox_call_id, carrier_call_id=carrier_call_id, carrier=carrier)


def invoke_tool(ultravox_sim: Any, ultravox_call_id: str, deliver_to: str, **parameters: Any) -> dict[str, Any]:
    """Ultravox invoking the call's transferCall tool, as the model asked."""
    response = requests.post(f"{ultravox_sim.base_url}/_sim/calls/{ultravox_call_id}/tools/transferCall",
                             json={"parameters": parameters, "deliver_to": deliver_to}, timeout=15)
    response.raise_for_status()
    return response.json()


def configure_legs(carrier_sim: Any, outcomes: dict[str, str] | None = None) -> None:
    requests.post(f"{carrier_sim.base_url}/_sim/transfers/config", timeout=5,
                  json={"outcomes": outcomes or {}, "telnyx_signing_key": TELNYX_SIGNING_KEY}).raise_for_status()


def legs(carrier_sim: Any) -> list[dict[str, Any]]:
    return requests.get(f"{carrier_sim.base_url}/_sim/transfers", timeout=5).json()["legs"]


def settle(carrier_sim: Any, deliver_to: str) -> list[dict[str, Any]]:
    response = requests.post(f"{carrier_sim.base_url}/_sim/transfers/settle", json={"deliver_to": deliver_to},
                             timeout=30)
    response.raise_for_status()
    return response.json()["legs"]


def transfers_of(app: Any, call_id: uuid.UUID) -> list[CallTransfer]:
    with app.extensions["telephony.db"].session() as session:
        rows = list(session.scalars(select(CallTransfer).where(CallTransfer.call_id == call_id)))
        session.expunge_all()
        return rows


def get_call(app: Any, call_id: uuid.UUID) -> Call:
    with app.extensions["telephony.db"].session() as session:
        call = session.get(Call, call_id)
        session.expunge_all()
        return call


def resumed_calls(app: Any, root_id: uuid.UUID) -> list[Call]:
    with app.extensions["telephony.db"].session() as session:
        rows = [call for call in session.scalars(select(Call)) if
                (call.metadata_ or {}).get("resumed_from_call_id") == str(root_id)]
        session.expunge_all()
        return rows
