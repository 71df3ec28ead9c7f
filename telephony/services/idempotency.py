"""Do-once markers on the processed_webhook_events ledger.

`first_time` inserts (provider, key) inside a SAVEPOINT of the caller's
transaction: the marker commits or rolls back together with the work it
guards, and a second attempt (a duplicate webhook, a concurrent worker) hits
the unique constraint and learns that the work is done or in progress. On
PostgreSQL a concurrent insert of the same key waits for the first
transaction, so exactly one of them ever sees True.
"""
from __future__ import annotations

import uuid

from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from ..models import ProcessedWebhookEvent


def first_time(session: Session, provider: str, key: str, agency_id: uuid.UUID | None) -> bool:
    """True if (provider, key) was not recorded before; records it."""
    try:
        with session.begin_nested():
            session.add(ProcessedWebhookEvent(provider=provider, event_key=key[:255], agency_id=agency_id))
            session.flush()
    except IntegrityError:
        return False
    return True
