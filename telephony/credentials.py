"""The per-agency credential store: the only module that encrypts or decrypts.

Each secret is one row of agency_credentials holding a Fernet token. The
plaintext inside the token also names the agency and the secret, and is checked
on decryption, so a ciphertext copied into another agency's row (or another
field) is refused rather than silently used.

Keys come from CREDENTIALS_KEYS: the first encrypts, all decrypt (MultiFernet),
so a new key can be prepended, `flask credentials rotate` run, and the old key
removed afterwards.
"""
from __future__ import annotations

import functools
import hashlib
import hmac
import json
import uuid
from dataclasses import dataclass
from typing import Iterable, Mapping, Sequence

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from flask import current_app
from sqlalchemy import bindparam, delete, select
from sqlalchemy.orm import Session

from .carriers.registry import CARRIERS
from .carriers.spec import CarrierSpec
from .db import rows_affected
from .models import AgencyCredential, utcnow

ULTRAVOX_FIELDS: tuple[str, ...] = ("api_key", "webhook_secret")


def provider_fields(carriers: Iterable[CarrierSpec]) -> dict[str, tuple[str, ...]]:
    """provider -> the fields an agency can store for it: Ultravox's, then each carrier's
    (from its description). The order is the display order."""
    return {"ultravox": ULTRAVOX_FIELDS, **{carrier.name: carrier.credential_names for carrier in carriers}}


# Of every carrier; an app's store has those of its carrier registry (create_app).
PROVIDER_FIELDS: Mapping[str, tuple[str, ...]] = provider_fields(CARRIERS)
MAX_SECRET_LENGTH = 4096
_ROWS_CACHE = "telephony.credential_rows"
# Decrypted secrets kept per process (see CredentialStore.__init__): a few per agency.
_OPENED_CACHE_SIZE = 4096
# Built once: read on every webhook.
_ROWS_QUERY = select(AgencyCredential.name, AgencyCredential.ciphertext).where(
    AgencyCredential.agency_id == bindparam("agency_id"))


class CredentialError(Exception):
    """A stored credential cannot be decrypted (wrong keys, tampered row)."""


class UnknownCredential(ValueError):
    def __init__(self, field: str, message: str):
        self.field = field
        super().__init__(message)


class ProviderCredentials(Mapping[str, str]):
    """Decrypted secrets of one provider for one agency.

    Behaves as a read-only mapping; its repr names the fields but never shows a
    value, so an accidental log line or traceback cannot leak them.
    """

    def __init__(self, provider: str, values: Mapping[str, str]):
        self.provider = provider
        self._values = dict(values)

    def __getitem__(self, name: str) -> str:
        return self._values[name]

    def __iter__(self):
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)

    def __repr__(self) -> str:
        return f"<ProviderCredentials {self.provider}: {', '.join(sorted(self._values)) or 'none'} (hidden)>"

    __str__ = __repr__


@dataclass(frozen=True)
class SecretStatus:
    set: bool
    last4: str | None

    def as_dict(self) -> dict:
        return {"set": self.set, "last4": self.last4}


def mask(value: str) -> str:
    """The last 4 characters, and only when the secret is long enough that
    showing them does not give most of it away."""
    return value[-4:] if len(value) >= 12 else ""


def validate_fields(provider: str, names: Iterable[str],
                    providers: Mapping[str, Sequence[str]] = PROVIDER_FIELDS) -> None:
    if provider not in providers:
        raise UnknownCredential("provider", f"unknown provider {provider!r}; expected one of "
                                f"{', '.join(providers)}")
    for name in names:
        if name not in providers[provider]:
            raise UnknownCredential(name, f"{provider} has no credential field {name!r}; expected one of "
                                    f"{', '.join(providers[provider])}")


class CredentialStore:
    def __init__(self, keys: Sequence[str], providers: Mapping[str, Sequence[str]] = PROVIDER_FIELDS):
        if not keys:
            raise ValueError("at least one encryption key is required")
        self._fernet = MultiFernet([Fernet(key) for key in keys])
        self._keys = tuple(keys)
        self._providers: dict[str, tuple[str, ...]] = {name: tuple(fields) for name, fields in providers.items()}
        # Decrypted values by (agency, name, ciphertext): every inbound webhook opens the same
        # few tokens (the carrier's and Ultravox's secrets), and decrypting and checking one
        # costs ~50 us. Keyed by the ciphertext itself, so a changed or rotated secret (a new
        # token) is never served stale; a token that fails to open is not remembered.
        self._open_cached = functools.lru_cache(maxsize=_OPENED_CACHE_SIZE)(self._open_uncached)

    @property
    def providers(self) -> Mapping[str, tuple[str, ...]]:
        """provider -> the fields this store accepts for it, in display order."""
        return self._providers

    # -- writing -----------------------------------------------------------
    def set(self, session: Session, agency_id: uuid.UUID, provider: str, values: Mapping[str, str | None]) -> None:
        """Store (or, with None, delete) some fields of one provider. Fields not
        named are left as they are."""
        validate_fields(provider, values, self._providers)
        session.info.pop(_ROWS_CACHE, None)
        for name, value in values.items():
            if value is not None and (not isinstance(value, str) or not value.strip()):
                raise UnknownCredential(name, f"{name} must be a non-empty string")
            if value is not None and len(value) > MAX_SECRET_LENGTH:
                raise UnknownCredential(name, f"{name} is longer than {MAX_SECRET_LENGTH} characters")
        existing = {row.name: row for row in session.scalars(
            select(AgencyCredential).where(AgencyCredential.agency_id == agency_id,
                                           AgencyCredential.name.in_([f"{provider}.{n}" for n in values])))}
        for name, value in values.items():
            full_name = f"{provider}.{name}"
            row = existing.get(full_name)
            if value is None:
                if row is not None:
                    session.delete(row)
                continue
            token = self._encrypt(agency_id, full_name, value.strip())
            if row is None:
                session.add(AgencyCredential(agency_id=agency_id, name=full_name, ciphertext=token))
            else:
                row.ciphertext = token
                row.updated_at = utcnow()
        session.flush()

    def delete_provider(self, session: Session, agency_id: uuid.UUID, provider: str) -> int:
        validate_fields(provider, (), self._providers)
        session.info.pop(_ROWS_CACHE, None)
        result = session.execute(delete(AgencyCredential).where(
            AgencyCredential.agency_id == agency_id, AgencyCredential.name.like(f"{provider}.%")))
        return rows_affected(result) or 0

    # -- reading -----------------------------------------------------------
    def get(self, session: Session, agency_id: uuid.UUID, provider: str) -> ProviderCredentials:
        """All stored fields of one provider, decrypted.

        The agency's rows are read once per session (one query, kept encrypted in
        session.info) so a webhook needing carrier and Ultravox credentials pays
        for one round trip; writes through this store drop that cache."""
        validate_fields(provider, (), self._providers)
        prefix = f"{provider}."
        values = {name[len(prefix):]: self._open(agency_id, name, token)
                  for name, token in self._rows(session, agency_id).items() if name.startswith(prefix)}
        return ProviderCredentials(provider, values)

    def remember_rows(self, session: Session, agency_id: uuid.UUID, rows: Mapping[str, str]) -> None:
        """Keep ALL of the agency's rows (name -> ciphertext), read by another query of
        this session, so `get` needs no query of its own (the inbound webhook reads them
        joined to the dialled number). Still encrypted: `get` decrypts and checks them."""
        session.info.setdefault(_ROWS_CACHE, {})[agency_id] = dict(rows)

    def _rows(self, session: Session, agency_id: uuid.UUID) -> dict[str, str]:
        cache = session.info.setdefault(_ROWS_CACHE, {})
        if agency_id not in cache:
            cache[agency_id] = dict(session.execute(_ROWS_QUERY, {"agency_id": agency_id}).all())
        return cache[agency_id]

    def describe(self, session: Session, agency_id: uuid.UUID) -> dict[str, dict[str, dict]]:
        """What the API may show: per provider and field, whether it is set and its last 4 characters."""
        rows = session.scalars(select(AgencyCredential).where(AgencyCredential.agency_id == agency_id))
        stored = {row.name: self._decrypt(agency_id, row) for row in rows}
        result: dict[str, dict[str, dict]] = {}
        for provider, fields in self._providers.items():
            result[provider] = {}
            for name in fields:
                value = stored.get(f"{provider}.{name}")
                status = SecretStatus(set=value is not None, last4=mask(value) if value is not None else None)
                result[provider][name] = status.as_dict()
        return result

    # -- key rotation --------------------------------------------------------
    def rotate(self, session: Session, batch_size: int = 500) -> int:
        """Re-encrypt every stored secret under the first (newest) key."""
        session.info.pop(_ROWS_CACHE, None)
        count = 0
        last_id = None
        while True:
            query = select(AgencyCredential).order_by(AgencyCredential.id).limit(batch_size)
            if last_id is not None:
                query = query.where(AgencyCredential.id > last_id)
            rows = list(session.scalars(query))
            if not rows:
                return count
            for row in rows:
                try:
                    row.ciphertext = self._fernet.rotate(row.ciphertext.encode()).decode()
                except InvalidToken:
                    raise CredentialError(f"credential {row.id} cannot be decrypted with any configured key") \
                        from None
                count += 1
            session.flush()
            last_id = rows[-1].id

    # -- sealed values kept in other tables -------------------------------------
    # Secrets that belong to a row elsewhere (e.g. an event endpoint's signing
    # secret) use the same Fernet keys and agency binding. `purpose` names the
    # owner (e.g. "event_endpoint:<id>") and is checked on unsealing, so a token
    # moved to another agency or another row is refused. The "sealed:" prefix
    # keeps these names apart from agency_credentials names.
    def seal(self, agency_id: uuid.UUID, purpose: str, value: str) -> str:
        return self._encrypt(agency_id, f"sealed:{purpose}", value)

    def unseal(self, agency_id: uuid.UUID, purpose: str, token: str) -> str:
        return self._open(agency_id, f"sealed:{purpose}", token)

    def mac(self, purpose: str, value: str) -> str:
        """A hex HMAC-SHA256 of ``value`` under a key derived from the newest key for
        ``purpose`` (e.g. a per-call tool token): nothing to store, nothing to decrypt."""
        return self._macs(purpose, value)[0]

    def mac_matches(self, purpose: str, value: str, mac: str) -> bool:
        """True if ``mac`` is ``value``'s MAC under any configured key (so rotation does
        not break values issued under the previous key), compared in constant time."""
        return any(hmac.compare_digest(expected, mac) for expected in self._macs(purpose, value))

    def _macs(self, purpose: str, value: str) -> list[str]:
        return [hmac.new(hashlib.sha256(f"mac:{purpose}\0{key}".encode()).digest(), value.encode(),
                         hashlib.sha256).hexdigest() for key in self._keys]

    def reseal(self, token: str) -> str:
        """The same sealed value re-encrypted under the newest key (key rotation)."""
        try:
            return self._fernet.rotate(token.encode()).decode()
        except InvalidToken:
            raise CredentialError("a sealed value cannot be decrypted with any configured key") from None

    # -- internals -----------------------------------------------------------
    def _encrypt(self, agency_id: uuid.UUID, name: str, value: str) -> str:
        plaintext = json.dumps({"a": str(agency_id), "n": name, "v": value}, separators=(",", ":"))
        return self._fernet.encrypt(plaintext.encode()).decode()

    def _decrypt(self, agency_id: uuid.UUID, row: AgencyCredential) -> str:
        return self._open(agency_id, row.name, row.ciphertext)

    def _open(self, agency_id: uuid.UUID, name: str, token: str) -> str:
        return self._open_cached(agency_id, name, token)

    def _open_uncached(self, agency_id: uuid.UUID, name: str, token: str) -> str:
        try:
            payload = json.loads(self._fernet.decrypt(token.encode()))
        except (InvalidToken, ValueError):
            raise CredentialError(f"credential {name} of agency {agency_id} cannot be decrypted "
                                  "with the configured keys") from None
        if payload.get("a") != str(agency_id) or payload.get("n") != name:
            raise CredentialError(f"credential {name} of agency {agency_id} does not belong to this row")
        return payload["v"]


def get_credentials() -> CredentialStore:
    """The current app's credential store (set up by create_app)."""
    return current_app.extensions["telephony.credentials"]
