"""SQLAlchemy 2 typed models. Alembic (migrations/) owns the schema.

Every table holding agency data carries `agency_id`; services always filter on
it, so one agency can never read or change another's rows.

The models live in submodules by area; import them from here.
"""
from __future__ import annotations

from .access import ApiKey, PublicKey, RateLimitWindow
from .agencies import Agency, AgencyCredential, AgentMapping, PhoneNumber, User
from .base import Base, CallDirection, CallSource, Carrier, Role, UTCDateTime, utcnow
from .calls import Call, ProcessedWebhookEvent
from .contact_imports import ContactImport, ContactImportChunk, ContactImportRejection
from .events import EventDelivery, EventEndpoint, Job
from .outbound import Campaign, CampaignContact, DialAttempt, DoNotCallEntry, IdempotencyKey
from .transfers import CallTransfer
from .workers import WorkerHeartbeat

__all__ = [
    # shared
    "Base", "UTCDateTime", "utcnow",
    "CallDirection", "CallSource", "Carrier", "Role",
    # agencies
    "Agency", "AgencyCredential", "AgentMapping", "PhoneNumber", "User",
    # access
    "ApiKey", "PublicKey", "RateLimitWindow",
    # calls
    "Call", "ProcessedWebhookEvent",
    # events and jobs
    "EventDelivery", "EventEndpoint", "Job",
    # outbound calls and campaigns
    "Campaign", "CampaignContact", "DialAttempt", "DoNotCallEntry", "IdempotencyKey",
    # contact imports run in the background
    "ContactImport", "ContactImportChunk", "ContactImportRejection",
    # live call control
    "CallTransfer",
    # worker processes
    "WorkerHeartbeat",
]
