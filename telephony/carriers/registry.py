"""The carrier adapters by name. Adding a carrier: one module, one line here."""
from __future__ import annotations

from .base import XmlCarrierAdapter
from .plivo import PlivoAdapter
from .telnyx import TelnyxCallControl, TelnyxTexmlAdapter
from .twilio import TwilioAdapter

# Carriers that fetch XML from a voice URL (inbound webhooks and status callbacks).
XML_CARRIERS: dict[str, XmlCarrierAdapter] = {
    adapter.name: adapter for adapter in (TwilioAdapter(), TelnyxTexmlAdapter(), PlivoAdapter())
}
# Telnyx Call Control: JSON events answered through the REST API.
TELNYX_CALL_CONTROL = TelnyxCallControl()


def xml_carrier(name: str) -> XmlCarrierAdapter:
    return XML_CARRIERS[name]
