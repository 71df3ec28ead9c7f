"""The carrier side of an agency's phone number: does the agency's carrier account hold
it, and do its voice and status webhooks point at this service?

One ``NumberProvisioner`` per carrier (each carrier module defines its own and names it
in its ``CarrierSpec.numbers``). It talks to the carrier with the same official SDK
client its dialer builds, and knows nothing of agencies or databases: the use case
``services/number_setup.py`` drives it.

Where the webhook URLs live differs per carrier, and each provisioner changes only what
belongs to this service:

- Twilio: on the number itself (``voice_url``, ``status_callback``).
- Telnyx: on the application the number is assigned to. A number already on a TeXML or
  Call Control application pointing here is left alone; otherwise it is assigned to the
  agency's Call Control connection (its ``connection_id`` credential, which this service
  already dials with) or, without one, to a TeXML application of this service's own,
  found by name or created. An application of the agency's used for other things is
  never rewritten.
- Plivo: on the application the number is linked to; as with Telnyx, a number whose
  application does not point here is linked to this service's own application.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, ClassVar, Mapping
from urllib.parse import urlsplit

# Webhook kinds, as in CarrierSpec.webhook_paths(): where a carrier sends a call that
# comes in, its status callbacks, and (Telnyx) Call Control events.
INBOUND, STATUS, CALL_CONTROL = "inbound", "status", "call-control"


@dataclass(frozen=True)
class CarrierNumber:
    """A number as the carrier's account holds it."""

    e164: str
    carrier_id: str  # the carrier's own id: Twilio PN sid, Telnyx number id, Plivo number (digits)
    routing: str = ""  # what its calls go to when not its own URLs: an application / connection id
    urls: Mapping[str, str | None] | None = None  # its own webhook URLs, where the number holds them (Twilio)


class NumberSetupRefused(Exception):
    """The carrier account is not set up in a way this service can point here (e.g. the
    stored Telnyx connection id is not a Call Control application). The message says
    what to change and holds no secret."""


def application_name(urls: Mapping[str, str]) -> str:
    """The name of the application this service creates at a carrier (Telnyx TeXML,
    Plivo): one per service host, so two deployments sharing an account do not meet."""
    host = urlsplit(urls[INBOUND]).hostname or "service"
    return f"Voice agents ({host})"


class NumberProvisioner(ABC):
    """One carrier's phone-number operations. Stateless; the SDK client comes from the
    carrier's dialer (``CarrierDialer.new_client``). The SDK's exceptions propagate (the
    dialer's ``error_status`` says what they mean)."""

    name: ClassVar[str]
    # The credentials these operations need (a subset of the carrier's fields).
    credential_fields: ClassVar[tuple[str, ...]]

    @abstractmethod
    def find(self, client: Any, e164: str) -> CarrierNumber | None:
        """The number in the client's account, or None when the account does not hold it."""

    @abstractmethod
    def current_urls(self, client: Any, number: CarrierNumber) -> dict[str, str | None]:
        """kind -> the URL the carrier sends that kind of webhook to now (None: none set).
        Only the kinds in use: Telnyx Call Control has one, the others two."""

    @abstractmethod
    def point_here(self, client: Any, number: CarrierNumber, urls: Mapping[str, str],
                   credentials: Mapping[str, str]) -> dict[str, str]:
        """Make the carrier send the number's webhooks to ``urls`` (kind -> our URL, every
        kind of the carrier's CarrierSpec.webhook_paths); returns the kinds in use now."""

    def already_here(self, client: Any, number: CarrierNumber, urls: Mapping[str, str]) -> dict[str, str] | None:
        """The kinds in use, when the number's webhooks reach ``urls`` already; else None."""
        current = self.current_urls(client, number)
        if current and all(current[kind] == urls.get(kind) for kind in current):
            return {kind: urls[kind] for kind in current}
        return None
