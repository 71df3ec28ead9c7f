"""Short-lived signed URLs of our own (e.g. a recording the browser may fetch).

A link carries `expires` (unix seconds) and `signature` = hex HMAC-SHA256 over
"<purpose>\\n<message>\\n<expires>". The HMAC key is derived with HKDF from the
app's credential keys, so no new secret has to be configured, and a key made
for one purpose never validates another purpose's links. Links are signed with
the first key and checked against all of them, so rotating CREDENTIALS_KEYS
(prepend, rotate, drop) does not break links issued a moment before.
"""
from __future__ import annotations

import hashlib
import hmac
import re
import time
from typing import Sequence

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

HKDF_SALT = b"telephony signed urls v1"
_HEX_SHA256 = re.compile(r"[0-9a-f]{64}")


def derive_key(secret: str, purpose: str) -> bytes:
    """A 256-bit HMAC key for `purpose`, independent of the secret's other uses
    (the Fernet encryption of credentials)."""
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=HKDF_SALT,
                info=purpose.encode()).derive(secret.encode())


class UrlSigner:
    def __init__(self, secrets: Sequence[str], purpose: str) -> None:
        if not secrets:
            raise ValueError("at least one secret is required to sign URLs")
        self.purpose = purpose
        self._keys = [derive_key(secret, purpose) for secret in secrets]

    def _mac(self, key: bytes, message: str, expires: int) -> str:
        payload = f"{self.purpose}\n{message}\n{expires}".encode()
        return hmac.new(key, payload, hashlib.sha256).hexdigest()

    def sign(self, message: str, *, ttl_seconds: int, now: float | None = None) -> tuple[int, str]:
        """(expires, signature) for a link valid `ttl_seconds` from now."""
        expires = int(now if now is not None else time.time()) + ttl_seconds
        return expires, self._mac(self._keys[0], message, expires)

    def verify(self, message: str, expires: int, signature: str, *, now: float | None = None) -> bool:
        """True for an unexpired link signed with any configured key."""
        # compare_digest refuses non-ASCII strings: check the shape first.
        if not _HEX_SHA256.fullmatch(signature) or expires < (now if now is not None else time.time()):
            return False
        # compare_digest on every key: no early exit that would time which key matched.
        matches = [hmac.compare_digest(self._mac(key, message, expires), signature) for key in self._keys]
        return any(matches)
