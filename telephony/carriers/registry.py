"""The carrier adapters by name. Adding a carrier: one module, one line here."""
from __future__ import annotations

from ..context import get_config
from .base import CarrierDialer, XmlCarrierAdapter
from .plivo import PlivoAdapter, PlivoDialer
from .telnyx import TelnyxCallControl, TelnyxDialer, TelnyxTexmlAdapter
from .twilio import TwilioAdapter, TwilioDialer


def configured_telnyx_stream() -> tuple[str, int]:
    """TELNYX_STREAM_CODEC of the current app and its sampling rate. Read at each answer,
    so these module-level adapters follow the app's config (they are only used while
    handling a request, inside its app context)."""
    config = get_config()
    return config.telnyx_stream_codec, config.telnyx_stream_sampling_rate


# Carriers that fetch XML from a voice URL (inbound webhooks and status callbacks).
XML_CARRIERS: dict[str, XmlCarrierAdapter] = {
    adapter.name: adapter for adapter in (
        TwilioAdapter(), TelnyxTexmlAdapter(stream_format=configured_telnyx_stream), PlivoAdapter())
}
# Telnyx Call Control: JSON events answered through the REST API.
TELNYX_CALL_CONTROL = TelnyxCallControl(stream_format=configured_telnyx_stream)


# Outbound dials through each carrier's REST API.
DIALERS: dict[str, CarrierDialer] = {
    dialer.name: dialer for dialer in (
        TwilioDialer(), TelnyxDialer(stream_format=configured_telnyx_stream), PlivoDialer())
}


def xml_carrier(name: str) -> XmlCarrierAdapter:
    return XML_CARRIERS[name]


def dialer(name: str) -> CarrierDialer | None:
    return DIALERS.get(name)
