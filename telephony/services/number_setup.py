"""Numbers set up through the carrier: registering a number checks with the agency's
carrier account that the account holds it, then points its voice and status webhooks
at this service; checking a number reports whether the carrier still sends them here.

The ownership check is what stops one agency from claiming another's number: the
question goes to the carrier with the registering agency's own credentials, so a number
of someone else's account is "not in your carrier account" (422), whoever holds it here.

``configure_carrier=False`` skips both steps and only stores the number, for numbers set
up by hand. Then nothing proves the agency owns the number (README, docs/security.md).

Nothing is stored unless the carrier answered: an unreachable carrier is a 502, a
number the account does not hold a 422, refused credentials a 422; the caller commits.
"""
from __future__ import annotations

import ipaddress
import logging
import uuid
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, TypeVar
from urllib.parse import urlsplit

import requests
from sqlalchemy.orm import Session

from ..carriers.numbers import CarrierNumber, NumberProvisioner, NumberSetupRefused
from ..carriers.registry import get_carriers
from ..config import get_config
from ..credentials import get_credentials
from ..errors import DomainError
from ..models import Carrier, PhoneNumber
from . import phone_numbers
from .outbound import CarrierNotConfigured, carrier_client

log = logging.getLogger(__name__)

T = TypeVar("T")


class NumberNotInCarrierAccount(DomainError):
    status = 422
    code = "number_not_in_carrier_account"


class CarrierCredentialsRejected(DomainError):
    status = 422
    code = "carrier_credentials_rejected"


class CarrierSetupRefused(DomainError):
    """The carrier refused a step of the set-up, or the account is set up in a way this
    service cannot point here; the message says which."""

    status = 422
    code = "carrier_setup_refused"


class CarrierSetupUnsupported(DomainError):
    status = 400
    code = "carrier_setup_unsupported"


class PublicUrlNotReachable(DomainError):
    status = 422
    code = "public_base_url_not_public"


class CarrierRateLimited(DomainError):
    status = 429
    code = "carrier_rate_limited"
    retry_after = 1


class CarrierUnreachable(DomainError):
    status = 502
    code = "carrier_unreachable"


@dataclass(frozen=True)
class CarrierSetup:
    """What registering did at the carrier."""

    carrier_number_id: str
    webhooks: dict[str, str]  # kind -> the URL the carrier now sends it to


@dataclass(frozen=True)
class NumberCheck:
    number: PhoneNumber
    in_account: bool
    expected: dict[str, str]  # kind -> our URL
    current: dict[str, str | None] = field(default_factory=dict)  # kind -> the carrier's URL now

    @property
    def points_here(self) -> bool:
        return self.in_account and bool(self.current) and all(
            self.current[kind] == self.expected.get(kind) for kind in self.current)

    @property
    def problem(self) -> str | None:
        if not self.in_account:
            return "the agency's carrier account no longer holds this number"
        if not self.current:
            return "the number is not assigned to an application that sends its calls anywhere we can read"
        wrong = sorted(kind for kind in self.current if self.current[kind] != self.expected.get(kind))
        return f"the carrier sends {', '.join(wrong)} webhooks elsewhere" if wrong else None


def webhook_urls(carrier: str) -> dict[str, str]:
    """kind -> the URL of this service the carrier should send that webhook to."""
    base = get_config().public_base_url
    return {kind: f"{base}/webhooks{path}" for kind, path in get_carriers().by_name(carrier).webhook_paths().items()}


def register_number(session: Session, agency_id: uuid.UUID, *, e164: str, carrier: Carrier | str,
                    agent_id: uuid.UUID | None = None, fallback_number: str | None = None,
                    recording_enabled: bool | None = None,
                    configure_carrier: bool = True) -> tuple[PhoneNumber, CarrierSetup | None]:
    """Add a number for the agency: checked with the carrier and pointed here, then stored
    (flushed, not committed). Without ``configure_carrier`` it is only stored."""
    if not configure_carrier:
        number = phone_numbers.add_number(session, agency_id, e164=e164, carrier=carrier, agent_id=agent_id,
                                          fallback_number=fallback_number, recording_enabled=recording_enabled)
        return number, None
    carrier = Carrier(carrier).value
    # Our own refusals first: a number this agency cannot register never reaches the carrier.
    e164, _ = phone_numbers.check_new_number(session, agency_id, e164=e164, agent_id=agent_id,
                                             fallback_number=fallback_number)
    urls = webhook_urls(carrier)
    _require_public(urls)
    provisioner, credentials = _provisioner(session, agency_id, carrier)
    client = _ask(carrier, lambda: carrier_client(carrier, credentials))
    found = _ask(carrier, lambda: provisioner.find(client, e164))
    if found is None:
        raise _not_in_account(carrier)
    in_use = _ask(carrier, lambda: provisioner.point_here(client, found, urls, credentials))
    log.info("number %s pointed at this service at %s", e164, carrier)
    number = phone_numbers.add_number(session, agency_id, e164=e164, carrier=carrier, agent_id=agent_id,
                                      fallback_number=fallback_number, recording_enabled=recording_enabled)
    return number, CarrierSetup(carrier_number_id=found.carrier_id, webhooks=in_use)


def check_number(session: Session, agency_id: uuid.UUID, number_id: uuid.UUID) -> NumberCheck:
    """Whether the carrier still holds the agency's number and sends its webhooks here."""
    number = phone_numbers.get_number(session, agency_id, number_id)
    carrier = number.carrier.value
    urls = webhook_urls(carrier)
    provisioner, credentials = _provisioner(session, agency_id, carrier)
    client = _ask(carrier, lambda: carrier_client(carrier, credentials))
    found: CarrierNumber | None = _ask(carrier, lambda: provisioner.find(client, number.e164))
    if found is None:
        return NumberCheck(number=number, in_account=False, expected=urls)
    current = _ask(carrier, lambda: provisioner.current_urls(client, found))
    expected = {kind: urls[kind] for kind in current if kind in urls} if current else urls
    return NumberCheck(number=number, in_account=True, expected=expected, current=current)


def _provisioner(session: Session, agency_id: uuid.UUID, carrier: str) -> tuple[NumberProvisioner, Mapping[str, str]]:
    spec = get_carriers().by_name(carrier)
    if spec.numbers is None:
        raise CarrierSetupUnsupported(f"{spec.title} numbers cannot be set up through the carrier here; "
                                      "set the number up by hand and register it with configure_carrier false",
                                      field="carrier")
    provisioner = spec.numbers()
    credentials = get_credentials().get(session, agency_id, carrier)
    missing = [name for name in provisioner.credential_fields if not credentials.get(name)]
    if missing:
        raise CarrierNotConfigured(f"{carrier} credentials missing: {', '.join(missing)} (needed to check the "
                                   f"number with {spec.title})", field="carrier")
    return provisioner, credentials


def _require_public(urls: Mapping[str, str]) -> None:
    """A carrier pointed at localhost would send every call of the number nowhere."""
    host = urlsplit(next(iter(urls.values()))).hostname or ""
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = host == "localhost" or host.endswith(".localhost")
    if loopback:
        raise PublicUrlNotReachable(f"PUBLIC_BASE_URL is {get_config().public_base_url}, which no carrier can "
                                    "reach: set it to this service's public origin, or register the number "
                                    "with configure_carrier false", field="configure_carrier")


def _not_in_account(carrier: str) -> NumberNotInCarrierAccount:
    title = get_carriers().by_name(carrier).title
    return NumberNotInCarrierAccount(f"this number is not in your {title} account (the one whose credentials "
                                     f"are stored); buy or port it there first", field="e164")


def _ask(carrier: str, step: Callable[[], T]) -> T:
    """Run one carrier step; the SDK's failures become domain errors (no secret in them)."""
    try:
        return step()
    except NumberSetupRefused as exc:
        raise CarrierSetupRefused(str(exc), field="carrier") from None
    except Exception as exc:  # classified below; anything unknown counts as unreachable
        raise _carrier_error(carrier, exc) from None


def _carrier_error(carrier: str, exc: Exception) -> DomainError:
    title = get_carriers().by_name(carrier).title
    dialer = get_carriers().dialer(carrier)
    described = dialer.error_status(exc) if dialer is not None else None
    status, message = described if described is not None else (None, exc.__class__.__name__)
    if described is None and not isinstance(exc, requests.RequestException):
        log.warning("%s number set-up failed: %s", carrier, exc.__class__.__name__)
    if status in (401, 403):
        return CarrierCredentialsRejected(f"{title} refused the stored credentials (HTTP {status}); check them "
                                          f"with PUT /api/v1/credentials/{carrier}", field="carrier")
    if status == 429:
        return CarrierRateLimited(f"{title} is rate limiting this account; try again shortly")
    if status is not None and 400 <= status < 500:
        return CarrierSetupRefused(f"{title} refused the set-up: {message}", field="carrier")
    return CarrierUnreachable(f"{title} did not answer ({message}); nothing was stored, try again")


def describe_setup(setup: CarrierSetup | None) -> dict[str, Any] | None:
    return None if setup is None else {"carrier_number_id": setup.carrier_number_id, "webhooks": setup.webhooks}


def describe_check(check: NumberCheck) -> dict[str, Any]:
    """The check as plain values (the API's NumberCheckOut, the CLI's JSON line)."""
    return {"id": check.number.id, "e164": check.number.e164, "carrier": check.number.carrier.value,
            "in_account": check.in_account, "points_here": check.points_here, "problem": check.problem,
            "expected": check.expected, "current": check.current}
