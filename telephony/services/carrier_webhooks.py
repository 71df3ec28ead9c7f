"""Who sent a carrier webhook: signature checks with the owning agency's credentials.

Every carrier request (inbound voice webhooks, status callbacks, outbound callbacks,
Telnyx Call Control events) is verified here before anything is written: the signature
must check out with the carrier credentials of the agency the request is about (the
dialled number's or the call's). A forged, unsigned or (Telnyx) replayed request is
SignatureRejected, answered 403 with nothing written. The signature schemes themselves
are the carrier adapters' (`CarrierAdapter.verify`).
"""
from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from ..carriers.base import CarrierAdapter, WebhookRequest
from ..credentials import ProviderCredentials, get_credentials
from ..errors import Forbidden
from ..models import Call, CallSource

log = logging.getLogger(__name__)


class SignatureRejected(Forbidden):
    """A carrier webhook without a valid signature (any route): 403, nothing written."""

    code = "invalid_signature"

    def __init__(self) -> None:
        super().__init__("Missing or invalid webhook signature")


@dataclass(frozen=True)
class VerifiedCall:
    call_id: uuid.UUID
    agency_id: uuid.UUID
    credentials: ProviderCredentials


def verified_call(session: Session, adapter: CarrierAdapter, request: WebhookRequest,
                  carrier_call_id: str) -> VerifiedCall | None:
    """The call a callback is about, once its signature checks out with the owning
    agency's credentials. None for a call we do not know (nothing is written then, so
    there is nothing to protect); SignatureRejected for a bad signature."""
    row = session.execute(select(Call.id, Call.agency_id)
                          .where(Call.source == CallSource(adapter.name), Call.carrier_call_id == carrier_call_id)
                          ).first() if carrier_call_id else None
    if row is None:
        session.rollback()
        log.info("%s callback for unknown call %r ignored", adapter.name, carrier_call_id)
        return None
    credentials = verified_credentials(session, adapter, request, row.agency_id)
    return VerifiedCall(call_id=row.id, agency_id=row.agency_id, credentials=credentials)


def credentials_if_signed(session: Session, adapter: CarrierAdapter, request: WebhookRequest,
                          agency_id: uuid.UUID) -> ProviderCredentials | None:
    """The agency's carrier credentials if the request's signature checks out with them,
    else None, with nothing logged: for a check the caller may make again with fresher
    credentials (services/inbound.py, a kept route)."""
    credentials = get_credentials().get(session, agency_id, adapter.name)
    return credentials if adapter.verify(request, credentials) else None


def verified_credentials(session: Session, adapter: CarrierAdapter, request: WebhookRequest,
                         agency_id: uuid.UUID) -> ProviderCredentials:
    """The agency's carrier credentials, once the request's signature checks out with
    them; SignatureRejected (nothing written) otherwise."""
    credentials = get_credentials().get(session, agency_id, adapter.name)
    if not adapter.verify(request, credentials):
        session.rollback()
        log.warning("%s webhook for agency %s rejected: bad or missing signature%s", adapter.name, agency_id,
                    "" if credentials else f" (no {adapter.name} credentials stored)")
        raise SignatureRejected()
    return credentials
