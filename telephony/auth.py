"""Who is calling: Supabase JWTs for dashboard users, API keys for servers.

Both resolve to a Principal bound to exactly one agency; every service call
takes that agency id, which is how tenancy is enforced.
"""
from __future__ import annotations

import hashlib
import hmac
import logging
import secrets
import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import timedelta
from functools import wraps
from typing import Any, Callable

import jwt
import requests
from flask import current_app, g, request
from sqlalchemy import select
from sqlalchemy.orm import Session

from .db import get_session
from .errors import ApiError
from .logging import agency_id_var
from .models import ApiKey, Role, User, utcnow

log = logging.getLogger(__name__)

API_KEY_PREFIX = "tk_"
ALL_SCOPES = ("calls:read", "calls:write", "campaigns:read", "campaigns:write", "admin")
MEMBER_SCOPES = frozenset(s for s in ALL_SCOPES if s != "admin")
ASYMMETRIC_ALGORITHMS = ("RS256", "RS384", "RS512", "ES256", "ES384", "PS256", "EdDSA")
JWT_LEEWAY_SECONDS = 10


@dataclass(frozen=True)
class Principal:
    kind: str  # "user" or "api_key"
    agency_id: uuid.UUID
    scopes: frozenset[str]
    user_id: uuid.UUID | None = None
    api_key_id: uuid.UUID | None = None
    role: Role = Role.member

    @property
    def is_admin(self) -> bool:
        return "admin" in self.scopes

    def has_scope(self, scope: str) -> bool:
        return scope in self.scopes or self.is_admin


class InvalidToken(Exception):
    """The bearer token is not acceptable. The message is safe to show."""


@dataclass
class JwtVerifier:
    """Checks signature, expiry and audience of Supabase access tokens.

    HS256 tokens are checked with the project's JWT secret; asymmetric ones
    (Supabase's newer signing keys) with the project's JWKS, fetched with our
    own pooled session and cached. Anything else, `alg: none` included, is
    refused because the algorithm is chosen from what is configured, never
    from what the token says it is.
    """

    secret: str | None
    jwks_url: str | None
    audience: str = "authenticated"
    timeout: tuple[float, float] = (3.05, 5.0)
    cache_seconds: float = 600.0
    refetch_interval: float = 30.0
    http: requests.Session = field(default_factory=requests.Session)
    _keys: dict[str, Any] = field(default_factory=dict, init=False)
    _fetched_at: float = field(default=0.0, init=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False)

    def verify(self, token: str) -> dict:
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise InvalidToken("malformed token") from None
        algorithm = header.get("alg")
        if algorithm == "HS256" and self.secret:
            key: Any = self.secret
        elif algorithm in ASYMMETRIC_ALGORITHMS and self.jwks_url:
            key = self._signing_key(header.get("kid"))
        else:
            raise InvalidToken(f"unsupported token algorithm {algorithm!r}")
        try:
            return jwt.decode(token, key, algorithms=[algorithm], audience=self.audience, leeway=JWT_LEEWAY_SECONDS,
                              options={"require": ["exp", "sub", "aud"]})
        except jwt.ExpiredSignatureError:
            raise InvalidToken("token expired") from None
        except jwt.InvalidAudienceError:
            raise InvalidToken("wrong token audience") from None
        except jwt.PyJWTError as exc:
            raise InvalidToken(f"invalid token: {exc.__class__.__name__}") from None

    def _signing_key(self, kid: str | None) -> Any:
        with self._lock:
            now = time.monotonic()
            stale = now - self._fetched_at > self.cache_seconds
            unknown = kid not in self._keys and now - self._fetched_at > self.refetch_interval
            if stale or unknown or not self._keys:
                self._refresh(now)
            if kid is None and len(self._keys) == 1:
                return next(iter(self._keys.values()))
            if kid not in self._keys:
                raise InvalidToken("token signed with an unknown key")
            return self._keys[kid]

    def _refresh(self, now: float) -> None:
        if self.jwks_url is None:  # cannot happen: verify() asks for a key only when a JWKS URL is set
            raise InvalidToken("signing keys unavailable")
        try:
            response = self.http.get(self.jwks_url, timeout=self.timeout)
            response.raise_for_status()
            jwk_set = jwt.PyJWKSet.from_dict(response.json())
        except (requests.RequestException, ValueError, jwt.PyJWTError) as exc:
            log.warning("could not fetch JWKS: %s", exc.__class__.__name__)
            if not self._keys:
                raise InvalidToken("signing keys unavailable") from None
            return
        self._keys = {key.key_id: key.key for key in jwk_set.keys if key.key_id}
        self._fetched_at = now


def get_jwt_verifier() -> JwtVerifier:
    """The current app's verifier (created by create_app)."""
    return current_app.extensions["telephony.jwt"]


def mint_token(secret: str, subject: str, *, audience: str = "authenticated", ttl_seconds: int = 3600,
               email: str | None = None) -> str:
    """An HS256 token shaped like Supabase's, for development and tests."""
    now = utcnow()
    claims = {"sub": subject, "aud": audience, "role": "authenticated", "iat": now,
              "exp": now + timedelta(seconds=ttl_seconds)}
    if email:
        claims["email"] = email
    return jwt.encode(claims, secret, algorithm="HS256")


# -- API keys ------------------------------------------------------------------

def hash_api_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def new_api_key() -> tuple[str, str, str]:
    """(plaintext key, display prefix, hash). The plaintext is shown once."""
    key = API_KEY_PREFIX + secrets.token_urlsafe(32)
    return key, key[:11], hash_api_key(key)


def principal_for_api_key(session: Session, key: str) -> Principal | None:
    if not key.startswith(API_KEY_PREFIX) or len(key) > 200:
        return None
    row = session.scalar(select(ApiKey).where(ApiKey.key_hash == hash_api_key(key)))
    # The lookup is by hash; compare again in constant time for good measure.
    if row is None or row.revoked_at is not None or not hmac.compare_digest(row.key_hash, hash_api_key(key)):
        return None
    now = utcnow()
    if row.last_used_at is None or now - row.last_used_at > timedelta(minutes=1):
        row.last_used_at = now  # coarse, to avoid a write on every request
        session.commit()
    return Principal(kind="api_key", agency_id=row.agency_id, scopes=frozenset(row.scopes), api_key_id=row.id,
                     role=Role.admin if "admin" in row.scopes else Role.member)


def principal_for_token(session: Session, verifier: JwtVerifier, token: str) -> Principal:
    """Raises ApiError 401 for a bad token and 403 for a user without an agency."""
    try:
        claims = verifier.verify(token)
    except InvalidToken as exc:
        raise ApiError(401, str(exc), headers={"WWW-Authenticate": 'Bearer error="invalid_token"'}) from None
    user = session.scalar(select(User).where(User.auth_subject == str(claims["sub"])))
    if user is None or user.agency_id is None:
        raise ApiError(403, "User is not associated with an agency", code="no_agency")
    scopes = MEMBER_SCOPES | {"admin"} if user.role == Role.admin else MEMBER_SCOPES
    return Principal(kind="user", agency_id=user.agency_id, scopes=frozenset(scopes), user_id=user.id,
                     role=user.role)


def authenticate(*, allow_user: bool = True, allow_api_key: bool = True) -> Principal:
    session = get_session()
    authorization = request.headers.get("Authorization", "")
    api_key = request.headers.get("X-API-Key", "")
    if authorization and allow_user:
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise ApiError(401, "Authorization header must be 'Bearer <token>'",
                           headers={"WWW-Authenticate": "Bearer"})
        return principal_for_token(session, get_jwt_verifier(), token.strip())
    if api_key and allow_api_key:
        principal = principal_for_api_key(session, api_key.strip())
        if principal is None:
            raise ApiError(401, "Invalid or revoked API key")
        return principal
    wanted = " or ".join(filter(None, ["Authorization: Bearer <token>" if allow_user else "",
                                       "X-API-Key" if allow_api_key else ""]))
    raise ApiError(401, f"Missing credentials: send {wanted}", headers={"WWW-Authenticate": "Bearer"})


def require_auth(*, scope: str | None = None, allow_user: bool = True,
                 allow_api_key: bool = True) -> Callable:
    """Authenticate the request, check the scope, and put the Principal on g."""

    def decorator(view: Callable) -> Callable:
        @wraps(view)
        def wrapper(*args, **kwargs):
            principal = authenticate(allow_user=allow_user, allow_api_key=allow_api_key)
            if scope is not None and not principal.has_scope(scope):
                raise ApiError(403, f"This action needs the {scope!r} permission", code="insufficient_scope")
            g.principal = principal
            agency_id_var.set(str(principal.agency_id))
            return view(*args, **kwargs)

        return wrapper

    return decorator


def current_principal() -> Principal:
    return g.principal
