"""Do-once markers on the processed_webhook_events ledger.

`first_time` inserts (provider, key) with INSERT ... ON CONFLICT DO NOTHING in the
caller's transaction: the marker commits or rolls back together with the work it
guards, and a second attempt (a duplicate webhook, a concurrent worker) learns that
the work is done or in progress. On PostgreSQL a concurrent insert of the same key
waits for the first transaction, so exactly one of them ever sees True.
"""
from __future__ import annotations

import uuid

from sqlalchemy.orm import Session

from ..db import insert_if_absent
from ..models import ProcessedWebhookEvent


def first_time(session: Session, provider: str, key: str, agency_id: uuid.UUID | None) -> bool:
    """True if (provider, key) was not recorded before; records it."""
    return insert_if_absent(session, ProcessedWebhookEvent,
                            {"provider": provider, "event_key": key[:255], "agency_id": agency_id},
                            ["provider", "event_key"])
