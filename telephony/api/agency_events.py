"""The events agencies receive at their endpoints, as OpenAPI 3.1 `webhooks`.

services/events.py sends them (EVENT_TYPES, `call_event_data`, the Standard Webhooks
signature); these models say what a receiver gets. tests/test_openapi_complete.py
checks a real emitted body against them, so the two cannot drift apart.
"""
from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from ..models.base import CallDirection, CallSource
from ..services.events import EVENT_TYPES


class CallEventData(BaseModel):
    """The call as `GET /api/v1/calls/{call_id}` shows it, without summary and transcript."""
    model_config = ConfigDict(extra="forbid")
    call_id: uuid.UUID
    ultravox_call_id: str | None
    agent_id: uuid.UUID | None = Field(description="Our agent mapping id")
    source: CallSource
    direction: CallDirection
    status: str
    from_number: str | None
    to_number: str | None
    end_reason: str | None
    created_at: datetime
    joined_at: datetime | None
    ended_at: datetime | None
    duration_seconds: int | None
    billed_duration_seconds: int | None
    metadata: dict[str, Any]
    answered_by: Literal["human", "machine", "fax", "unknown"] | None = Field(
        description="Outbound calls: who answered, by the carrier's answering-machine detection (null until known)")
    answered_by_detail: str | None = Field(description="The carrier's own verdict word (e.g. machine_end_beep)")
    machine_action: str | None = Field(
        description="What the on_machine policy did: hangup, wait_beep, message or continue (null: nothing)")


class CampaignCompletedData(BaseModel):
    model_config = ConfigDict(extra="forbid")
    campaign_id: uuid.UUID
    name: str
    contacts: dict[str, int] = Field(description="Contacts per state (pending, done, failed, ...)")


class CallTransferredData(BaseModel):
    """One transfer of a live call to a person (services/transfers.py), as `transfers` in
    `GET /api/v1/calls/{call_id}` shows it."""
    model_config = ConfigDict(extra="forbid")
    id: uuid.UUID
    call_id: uuid.UUID
    target: str = Field(description="The transfer target's name")
    destination: str = Field(description="E.164 number or SIP URI dialled")
    mode: Literal["cold", "warm"]
    reason: str | None = Field(description="What the agent said the caller needs")
    status: str
    outcome: str | None = Field(description="answered, busy, no-answer, declined or failed")
    carrier: str
    carrier_leg_id: str | None = Field(description="The carrier's id of the person's leg")
    resumed_call_id: uuid.UUID | None = Field(description="The call that took the caller back to the agent")
    started_at: datetime
    answered_at: datetime | None
    ended_at: datetime | None


class _Event(BaseModel):
    """What every event has; each event type's model adds its `type` and `data`."""
    model_config = ConfigDict(extra="forbid")
    id: uuid.UUID = Field(description="The event id, also in the webhook-id header; deduplicate on it")
    timestamp: datetime


class CallEvent(_Event):
    type: Literal["call.started", "call.answered", "call.ended", "call.failed", "call.answered_by"]
    data: CallEventData


class CallTransferredEvent(_Event):
    type: Literal["call.transferred"]
    data: CallTransferredData


class CampaignCompletedEvent(_Event):
    type: Literal["campaign.completed"]
    data: CampaignCompletedData


EVENT_MODELS: dict[str, type[BaseModel]] = {
    "call.started": CallEvent, "call.answered": CallEvent, "call.ended": CallEvent, "call.failed": CallEvent,
    "call.answered_by": CallEvent, "call.transferred": CallTransferredEvent,
    "campaign.completed": CampaignCompletedEvent,
}
assert set(EVENT_MODELS) == set(EVENT_TYPES), "every event type needs its model here"

EVENT_SUMMARIES = {
    "call.started": "A call was created and handed to Ultravox",
    "call.answered": "The callee (or caller) joined the call",
    "call.ended": "The call ended after it was answered (exactly one of call.ended / call.failed per call)",
    "call.failed": "The call ended without being answered, or could not be placed",
    "campaign.completed": "A campaign has no contact left to dial",
    "call.transferred": "A transfer of a live call to a person ended (answered, or the caller is back with the agent)",
    "call.answered_by": "An outbound call's answering-machine verdict arrived (once per call; `answered_by`)",
}

SIGNATURE_HEADERS = [
    {"name": "webhook-id", "in": "header", "required": True, "schema": {"type": "string", "format": "uuid"},
     "description": "The event id: the same on every attempt and every endpoint."},
    {"name": "webhook-timestamp", "in": "header", "required": True, "schema": {"type": "string"},
     "description": "Unix seconds of this attempt."},
    {"name": "webhook-signature", "in": "header", "required": True, "schema": {"type": "string"},
     "description": "`v1,<base64 HMAC-SHA256(key, \"{webhook-id}.{webhook-timestamp}.{body}\")>` where key is "
                    "the base64-decoded part of the endpoint secret after `whsec_`; during a secret rotation, "
                    "one per active secret, space-separated (Standard Webhooks)."},
]

DELIVERY_RESPONSES = {
    "2XX": {"description": "Delivered."},
    "410": {"description": "Gone: retrying stops and the endpoint is disabled (the agency can re-enable it)."},
    "default": {"description": "Anything else (redirects included, they are never followed), a timeout or a "
                               "connection error: retried up to 8 attempts over about 7.7 hours."},
}
