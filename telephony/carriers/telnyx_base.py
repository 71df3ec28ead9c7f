"""What Telnyx's two webhook products (TeXML, Call Control) and its dialer share.

Both products are signed the same way: Ed25519 over ``"{telnyx-timestamp}|{raw body}"``
with the account's public key, and a timestamp more than 300 s away from now is refused
(replay). Every Telnyx media stream uses one codec for both directions.
"""
from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Final, Mapping, Self

from ..config import DEFAULT_TELNYX_STREAM_CODEC, TELNYX_STREAM_FORMATS
from . import sdk
from .base import CarrierSettings, WebhookRequest

# The SDK (~60 MB, 2+ s to import) is imported when a Telnyx webhook first needs it
# (sdk.lazy_module).
if TYPE_CHECKING:
    import telnyx.lib.webhook_verification as telnyx_webhooks
else:
    telnyx_webhooks = sdk.lazy_module("telnyx.lib.webhook_verification")

log = logging.getLogger(__name__)

NAME = "telnyx"
# Ultravox: codec and bidirectionalCodec "must have the same value because Telnyx only
# tells us about one of them"; L16 at 16 kHz is HD audio (the documented codecs and their
# rates: config.TELNYX_STREAM_FORMATS).
DEFAULT_CODEC = DEFAULT_TELNYX_STREAM_CODEC
DEFAULT_SAMPLING_RATE = TELNYX_STREAM_FORMATS[DEFAULT_CODEC]
SPEAK_VOICE = "female"
SPEAK_LANGUAGE: Final = "en-US"  # Final: typed as the literal the SDK's language parameter takes


def verify_ed25519(request: WebhookRequest, credentials: Mapping[str, str]) -> bool:
    public_key = credentials.get("public_key")
    if not public_key:
        return False
    try:
        # The raw bytes: re-serialised JSON or re-encoded form data would not match.
        # werkzeug's Headers offers the Mapping methods the SDK uses, but is not a typing Mapping.
        telnyx_webhooks.verify_webhook_signature(request.body, request.headers, public_key)  # type: ignore[arg-type]
    except telnyx_webhooks.WebhookVerificationError as exc:
        log.info("telnyx signature rejected: %s", exc.message)
        return False
    return True


class TelnyxStream:
    """One codec for both directions of the media stream (Ultravox must see one codec),
    fixed at construction: an app's registry builds its Telnyx adapters and dialer from
    its TELNYX_STREAM_CODEC (``CarrierSettings``)."""

    name = NAME

    def __init__(self, codec: str = DEFAULT_CODEC, sampling_rate: int = DEFAULT_SAMPLING_RATE) -> None:
        self.codec = codec
        self.sampling_rate = sampling_rate

    @classmethod
    def from_settings(cls, settings: CarrierSettings) -> Self:
        return cls(settings.telnyx_codec, settings.telnyx_sampling_rate)

    def stream_format(self) -> tuple[str, int]:
        """(codec, sampling rate): the codec is used for both directions."""
        return self.codec, self.sampling_rate


class TelnyxSigned(TelnyxStream):
    """What both Telnyx webhook products share: the account's Ed25519 signature and the
    media stream's codec."""

    def verify(self, request: WebhookRequest, credentials: Mapping[str, str]) -> bool:
        return verify_ed25519(request, credentials)
