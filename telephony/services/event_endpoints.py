"""An agency's event endpoints (where we POST call.* and campaign.* events) and their deliveries."""
from __future__ import annotations

import base64
import secrets
import uuid
from typing import Iterable

from sqlalchemy import select
from sqlalchemy.orm import Session

from ..config import get_config
from ..credentials import get_credentials
from ..errors import InvalidInput, NotFound
from ..models import EventDelivery, EventEndpoint, utcnow
from .events import EVENT_TYPES, PREVIOUS_SECRET_GRACE, SECRET_PREFIX, sealed_purpose, url_problem

DELIVERY_STATUSES = ("pending", "delivered", "failed")
MAX_ENDPOINTS_PER_AGENCY = 20


def new_secret() -> str:
    """`whsec_` + base64 of 32 random bytes (the Standard Webhooks format)."""
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(32)).decode()


def list_endpoints(session: Session, agency_id: uuid.UUID) -> list[EventEndpoint]:
    return list(session.scalars(select(EventEndpoint).where(EventEndpoint.agency_id == agency_id)
                                .order_by(EventEndpoint.created_at, EventEndpoint.id)))


def get_endpoint(session: Session, agency_id: uuid.UUID, endpoint_id: uuid.UUID) -> EventEndpoint:
    """Another agency's endpoint is reported exactly like a missing one."""
    endpoint = session.scalar(select(EventEndpoint).where(EventEndpoint.id == endpoint_id,
                                                          EventEndpoint.agency_id == agency_id))
    if endpoint is None:
        raise NotFound("Event endpoint not found", field="endpoint_id")
    return endpoint


def create_endpoint(session: Session, agency_id: uuid.UUID, *, url: str, events: Iterable[str],
                    enabled: bool = True) -> tuple[EventEndpoint, str]:
    """The new endpoint and its signing secret (shown to the agency once)."""
    if len(list_endpoints(session, agency_id)) >= MAX_ENDPOINTS_PER_AGENCY:
        raise InvalidInput(f"an agency can have at most {MAX_ENDPOINTS_PER_AGENCY} event endpoints", field="url")
    endpoint_id = uuid.uuid4()
    secret = new_secret()
    endpoint = EventEndpoint(id=endpoint_id, agency_id=agency_id, url=_checked_url(url),
                             events=_checked_events(events), enabled=enabled,
                             secret_ciphertext=get_credentials().seal(agency_id, sealed_purpose(endpoint_id), secret))
    session.add(endpoint)
    session.flush()
    return endpoint, secret


def update_endpoint(session: Session, agency_id: uuid.UUID, endpoint_id: uuid.UUID, *, url: str | None = None,
                    events: Iterable[str] | None = None, enabled: bool | None = None) -> EventEndpoint:
    endpoint = get_endpoint(session, agency_id, endpoint_id)
    if url is not None:
        endpoint.url = _checked_url(url)
    if events is not None:
        endpoint.events = _checked_events(events)
    if enabled is not None:
        endpoint.enabled = enabled
        if enabled:
            endpoint.disabled_reason = None
    session.flush()
    return endpoint


def delete_endpoint(session: Session, agency_id: uuid.UUID, endpoint_id: uuid.UUID) -> None:
    """Its deliveries go with it (ON DELETE CASCADE); their queued jobs find nothing and end."""
    session.delete(get_endpoint(session, agency_id, endpoint_id))
    session.flush()


def rotate_secret(session: Session, agency_id: uuid.UUID, endpoint_id: uuid.UUID) -> tuple[EventEndpoint, str]:
    """A new secret, returned once. The old one keeps signing alongside it for
    PREVIOUS_SECRET_GRACE (two signatures per delivery), then stops."""
    endpoint = get_endpoint(session, agency_id, endpoint_id)
    secret = new_secret()
    endpoint.previous_secret_ciphertext = endpoint.secret_ciphertext
    endpoint.previous_secret_expires_at = utcnow() + PREVIOUS_SECRET_GRACE
    endpoint.secret_ciphertext = get_credentials().seal(agency_id, sealed_purpose(endpoint.id), secret)
    session.flush()
    return endpoint, secret


def list_deliveries(session: Session, agency_id: uuid.UUID, endpoint_id: uuid.UUID, *, limit: int = 50,
                    status: str | None = None) -> list[EventDelivery]:
    """The endpoint's most recent deliveries, newest first."""
    get_endpoint(session, agency_id, endpoint_id)
    query = (select(EventDelivery)
             .where(EventDelivery.endpoint_id == endpoint_id, EventDelivery.agency_id == agency_id)
             .order_by(EventDelivery.created_at.desc(), EventDelivery.id.desc()).limit(limit))
    if status is not None:
        query = query.where(EventDelivery.status == status)
    return list(session.scalars(query))


def reseal_secrets(session: Session) -> int:
    """Re-encrypt every endpoint secret under the newest credentials key; the
    companion of CredentialStore.rotate for `flask credentials rotate`."""
    store = get_credentials()
    count = 0
    for endpoint in session.scalars(select(EventEndpoint)):
        endpoint.secret_ciphertext = store.reseal(endpoint.secret_ciphertext)
        if endpoint.previous_secret_ciphertext:
            endpoint.previous_secret_ciphertext = store.reseal(endpoint.previous_secret_ciphertext)
        count += 1
    session.flush()
    return count


def _checked_url(url: str) -> str:
    problem = url_problem(url, allow_private=get_config().event_endpoints_allow_private)
    if problem:
        raise InvalidInput(f"url {problem}", field="url")
    return url


def _checked_events(events: Iterable[str]) -> list[str]:
    chosen = list(dict.fromkeys(events))  # de-duplicated, order kept
    unknown = [event for event in chosen if event not in EVENT_TYPES]
    if unknown or not chosen:
        raise InvalidInput(f"events must be a non-empty list of: {', '.join(EVENT_TYPES)}", field="events")
    return chosen
