"""The carrier's side of a transfer, which every step of it needs: the carrier's transfer
adapter, the URLs of the transfer's callbacks, a callback checked against the owning
agency's credentials, and the target's dial settings as the agent lists them.
"""
from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy.orm import Session

from ..carriers.base import WebhookRequest
from ..carriers.registry import get_carriers
from ..carriers.transfers import CallTransferer, PlivoTransferer, TelnyxTransferer, TwilioTransferer
from ..config import get_config
from ..errors import InvalidInput, NotFound
from ..models import AgentMapping, Call, CallTransfer
from . import carrier_webhooks
from .transfer_targets import find_target

# Seconds per carrier request: the tool must answer within its Ultravox timeout
# (transfer_tool.TOOL_TIMEOUT, 8 s), and a warm transfer makes two requests.
CARRIER_TIMEOUT = 3.0


def transferer(carrier: str) -> CallTransferer:
    """The carrier's transfer adapter (the app's registry holds its Telnyx codec)."""
    if carrier == "twilio":
        return TwilioTransferer()
    if carrier == "plivo":
        return PlivoTransferer()
    if carrier == "telnyx":
        return TelnyxTransferer(get_carriers().call_control("telnyx"))
    raise InvalidInput(f"transfers are not available on {carrier}", field="carrier")


def callback_url(transfer_id: uuid.UUID, kind: str) -> str:
    return f"{get_config().public_base_url}/webhooks/transfers/{transfer_id}/{kind}"


def verified_transfer(session: Session, transfer_id: uuid.UUID, request: WebhookRequest,
                      *, call_control: bool = False) -> CallTransfer:
    """The transfer a carrier callback is about, once its signature checks out with the
    owning agency's credentials (SignatureRejected otherwise; NotFound if unknown)."""
    transfer = session.get(CallTransfer, transfer_id)
    if transfer is None:
        raise NotFound("Transfer not found")
    carriers = get_carriers()
    adapter = carriers.call_control(transfer.carrier) if call_control else carriers.xml_adapter(transfer.carrier)
    carrier_webhooks.verified_credentials(session, adapter, request, transfer.agency_id)
    return transfer


def target_settings(session: Session, transfer: CallTransfer) -> dict[str, Any]:
    """The transfer's target as its agent lists it now (caller id, accept key); empty if
    the agent or the target is gone."""
    call = session.get(Call, transfer.call_id)
    agent = session.get(AgentMapping, call.agent_id) if call and call.agent_id else None
    return find_target(agent.transfer_targets if agent else None, transfer.target_name) or {}
