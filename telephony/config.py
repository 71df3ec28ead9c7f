"""Configuration from environment variables, validated once at start-up.

Every problem is reported as a ConfigError that names the variable, so a
misconfigured deployment fails at boot with a message an operator can act on
instead of failing later on the first webhook.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Mapping
from urllib.parse import urlsplit

from cryptography.fernet import Fernet
from dotenv import load_dotenv
from flask import current_app

log = logging.getLogger(__name__)

DEFAULT_ULTRAVOX_API_BASE = "https://api.ultravox.ai"
DEFAULT_TWILIO_API_BASE = "https://api.twilio.com"
DEFAULT_TELNYX_API_BASE = "https://api.telnyx.com/v2"
DEFAULT_PLIVO_API_BASE = "https://api.plivo.com"
GENERATED_KEY_FILE = "credentials.key"
# The Telnyx media-stream codecs Ultravox documents, each with its one sampling rate:
# L16 at 16 kHz (HD audio, the current recommendation), PCMU or PCMA (Europe) at 8 kHz
# (the earlier recommendation). Telnyx gets the same codec for both directions, because
# Ultravox must see one codec. Other Telnyx codecs (G722, OPUS, AMR-WB) are not documented
# as working with Ultravox and are refused.
TELNYX_STREAM_FORMATS: Mapping[str, int] = {"L16": 16000, "PCMU": 8000, "PCMA": 8000}
DEFAULT_TELNYX_STREAM_CODEC = "L16"
DEFAULT_WORKER_CONCURRENCY = 8
DEFAULT_CONTACT_IMPORT_MAX_BYTES = 25 * 1024 * 1024


@dataclass(frozen=True)
class DatabaseTimeouts:
    """Bounds on every wait for the database, so that a database that accepts connections
    but never answers cannot hold a request (or a carrier's webhook) past its deadline.
    PostgreSQL only; SQLite waits for its write lock (busy_timeout) instead."""

    connect: int = 3  # s: opening a connection, the startup exchange included (libpq: at least 2)
    pool: float = 5.0  # s: waiting for a pooled connection when every one is in use
    statement_ms: int = 30_000  # one statement (server side: statement_timeout)
    lock_ms: int = 10_000  # waiting for a row or table lock (server side: lock_timeout)


class ConfigError(ValueError):
    """A configuration variable is missing or invalid. The message names it."""

    def __init__(self, variable: str, problem: str):
        self.variable = variable
        super().__init__(f"{variable}: {problem}")


@dataclass(frozen=True)
class Config:
    database_url: str
    port: int = 8000
    public_base_url: str = "http://localhost:8000"
    credentials_keys: tuple[str, ...] = ()
    jwt_secret: str | None = None
    jwks_url: str | None = None
    jwt_audience: str = "authenticated"
    ultravox_api_base: str = DEFAULT_ULTRAVOX_API_BASE
    twilio_api_base: str = DEFAULT_TWILIO_API_BASE
    telnyx_api_base: str = DEFAULT_TELNYX_API_BASE
    plivo_api_base: str = DEFAULT_PLIVO_API_BASE
    upstream_connect_timeout: float = 3.05
    upstream_read_timeout: float = 10.0
    inbound_ultravox_budget: float = 5.0
    # The write that records an answered inbound call happens after the answer; a
    # per-process thread batches those arriving within this window (telephony/write_behind.py).
    # 0: the request's own thread writes it, one by one.
    write_behind_ms: int = 20
    telnyx_stream_codec: str = DEFAULT_TELNYX_STREAM_CODEC
    max_body_bytes: int = 64 * 1024
    # POST /api/v1/campaigns/<id>/contacts only: contact lists of real size (100,000 rows).
    contact_import_max_bytes: int = DEFAULT_CONTACT_IMPORT_MAX_BYTES
    retention_days: int = 30  # finished jobs, deliveries, processed webhook-event ids (services/retention.py)
    database_timeouts: DatabaseTimeouts = field(default_factory=DatabaseTimeouts)
    worker_concurrency: int = DEFAULT_WORKER_CONCURRENCY  # job slots per worker process
    dispatch_threads: int = 8  # campaign dialer threads per worker process; 0: no dispatcher
    cors_origins: tuple[str, ...] = ()  # browser origins allowed to call /api/v1 (the dashboard)
    log_level: str = "INFO"
    production: bool = False
    # Local development only: event endpoints may be http:// and point anywhere (loopback,
    # private networks). Off, they must be https:// to hosts that resolve only to public addresses.
    event_endpoints_allow_private: bool = False
    # A worker process serves its own /metrics here (0: it does not; its samples reach the
    # web's /metrics through PROMETHEUS_MULTIPROC_DIR on one host). See docs/deploy.md.
    worker_metrics_port: int = 0
    worker_metrics_host: str = "127.0.0.1"
    # PostgreSQL connections one process may open: kept open (pool) + opened when those
    # are busy (overflow). Every process has its own pool; docs/deploy.md adds them up.
    db_pool_size: int = 10
    db_max_overflow: int = 20
    # The inbound webhook's statements are prepared once per connection (telephony/direct_sql.py);
    # off behind a pooler in transaction mode (PgBouncer), which also turns them off by itself.
    db_prepared_statements: bool = True
    extra: Mapping[str, str] = field(default_factory=dict)
    # Played to an inbound caller waiting for a free slot of the agency's Ultravox plan
    # (services/capacity.py); "": a pause between the tries instead.
    hold_audio_url: str = ""

    def __post_init__(self) -> None:
        if self.telnyx_stream_codec not in TELNYX_STREAM_FORMATS:
            raise ConfigError("TELNYX_STREAM_CODEC", f"must be one of {', '.join(TELNYX_STREAM_FORMATS)}, "
                              f"got {self.telnyx_stream_codec!r}")
        if self.production and self.event_endpoints_allow_private:
            raise ConfigError("EVENT_ENDPOINTS_ALLOW_PRIVATE", "is for local development only and must not be "
                              "true in production")

    @property
    def telnyx_stream_sampling_rate(self) -> int:
        """Follows the codec: each documented codec has one sampling rate."""
        return TELNYX_STREAM_FORMATS[self.telnyx_stream_codec]

    @property
    def upstream_timeout(self) -> tuple[float, float]:
        return (self.upstream_connect_timeout, self.upstream_read_timeout)

    def with_overrides(self, **changes) -> "Config":
        return replace(self, **changes)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, instance_path: str | Path = "instance") -> "Config":
        env = os.environ if env is None else env
        instance = Path(instance_path)
        production = _bool(env, "APP_ENV_PRODUCTION", default=False) or env.get("APP_ENV", "") == "production"

        database_url = normalize_database_url(
            env.get("DATABASE_URL", "").strip() or f"sqlite:///{(instance / 'telephony.db').resolve()}")
        if not (database_url.startswith("sqlite") or database_url.startswith("postgresql")):
            raise ConfigError("DATABASE_URL", "must be a sqlite:// or postgresql:// URL")

        port = _int(env, "PORT", 8000, 1, 65535)
        public_base_url = _url(env, "PUBLIC_BASE_URL", f"http://localhost:{port}").rstrip("/")

        keys = tuple(k.strip() for k in env.get("CREDENTIALS_KEYS", "").split(",") if k.strip())
        for position, key in enumerate(keys, start=1):
            try:
                Fernet(key)
            except (ValueError, TypeError):
                raise ConfigError("CREDENTIALS_KEYS", f"key #{position} is not a valid Fernet key "
                                  "(32 url-safe base64-encoded bytes)") from None
        if not keys:
            if production or not database_url.startswith("sqlite"):
                raise ConfigError("CREDENTIALS_KEYS", "is required outside the SQLite development default "
                                  "(generate one with `flask credentials generate-key`)")
            keys = (_generated_dev_key(instance),)

        jwt_secret = env.get("SUPABASE_JWT_SECRET", "").strip() or None
        jwks_url = env.get("SUPABASE_JWKS_URL", "").strip() or None
        if jwks_url:
            _url(env, "SUPABASE_JWKS_URL", None)
        if jwt_secret is not None and len(jwt_secret) < 32:
            raise ConfigError("SUPABASE_JWT_SECRET", "must be at least 32 characters")
        if production and not (jwt_secret or jwks_url):
            raise ConfigError("SUPABASE_JWT_SECRET", "or SUPABASE_JWKS_URL is required in production")

        return cls(
            database_url=database_url,
            port=port,
            public_base_url=public_base_url,
            credentials_keys=keys,
            jwt_secret=jwt_secret,
            jwks_url=jwks_url,
            jwt_audience=env.get("SUPABASE_JWT_AUDIENCE", "authenticated").strip() or "authenticated",
            ultravox_api_base=_url(env, "ULTRAVOX_API_BASE", DEFAULT_ULTRAVOX_API_BASE).rstrip("/"),
            twilio_api_base=_url(env, "TWILIO_API_BASE", DEFAULT_TWILIO_API_BASE).rstrip("/"),
            telnyx_api_base=_url(env, "TELNYX_API_BASE", DEFAULT_TELNYX_API_BASE).rstrip("/"),
            plivo_api_base=_url(env, "PLIVO_API_BASE", DEFAULT_PLIVO_API_BASE).rstrip("/"),
            upstream_connect_timeout=_float(env, "UPSTREAM_CONNECT_TIMEOUT", 3.05, 0.01, 60),
            upstream_read_timeout=_float(env, "UPSTREAM_READ_TIMEOUT", 10.0, 0.01, 300),
            inbound_ultravox_budget=_float(env, "INBOUND_ULTRAVOX_BUDGET", 5.0, 0.1, 14),
            write_behind_ms=_int(env, "WRITE_BEHIND_MS", 20, 0, 1000),
            telnyx_stream_codec=_choice(env, "TELNYX_STREAM_CODEC", DEFAULT_TELNYX_STREAM_CODEC,
                                        tuple(TELNYX_STREAM_FORMATS)),
            log_level=_choice(env, "LOG_LEVEL", "INFO", ("DEBUG", "INFO", "WARNING", "ERROR")),
            retention_days=_int(env, "RETENTION_DAYS", 30, 1, 3650),
            database_timeouts=DatabaseTimeouts(
                connect=_int(env, "DB_CONNECT_TIMEOUT", DatabaseTimeouts.connect, 2, 60),
                pool=_float(env, "DB_POOL_TIMEOUT", DatabaseTimeouts.pool, 0.1, 60),
                statement_ms=_int(env, "DB_STATEMENT_TIMEOUT_MS", DatabaseTimeouts.statement_ms, 100, 3_600_000),
                lock_ms=_int(env, "DB_LOCK_TIMEOUT_MS", DatabaseTimeouts.lock_ms, 100, 3_600_000)),
            worker_concurrency=_int(env, "WORKER_CONCURRENCY", DEFAULT_WORKER_CONCURRENCY, 1, 256),
            dispatch_threads=_int(env, "DISPATCH_THREADS", 8, 0, 256),
            cors_origins=_origins(env, "CORS_ORIGINS"),
            production=production,
            event_endpoints_allow_private=_bool(env, "EVENT_ENDPOINTS_ALLOW_PRIVATE", default=False),
            hold_audio_url=_url(env, "HOLD_AUDIO_URL", None) if env.get("HOLD_AUDIO_URL", "").strip() else "",
            contact_import_max_bytes=_int(env, "CONTACT_IMPORT_MAX_BYTES", DEFAULT_CONTACT_IMPORT_MAX_BYTES,
                                          64 * 1024, 1024 ** 3),
            worker_metrics_port=_int(env, "WORKER_METRICS_PORT", 0, 0, 65535),
            worker_metrics_host=env.get("WORKER_METRICS_HOST", "").strip() or "127.0.0.1",
            db_pool_size=_int(env, "DB_POOL_SIZE", 10, 1, 1000),
            db_max_overflow=_int(env, "DB_MAX_OVERFLOW", 20, 0, 1000),
            db_prepared_statements=_bool(env, "DB_PREPARED_STATEMENTS", default=True),
        )


def load_env_file(path: str | Path) -> bool:
    """Read KEY=value lines from `path` (a `.env` file) into the environment, without
    overriding a variable that is already set. False when there is no such file."""
    if not Path(path).is_file():
        return False
    return load_dotenv(path, override=False)


def normalize_database_url(url: str) -> str:
    """Pin PostgreSQL URLs to psycopg2 (SQLAlchemy 2.1 would pick psycopg 3) and
    accept Heroku-style postgres:// URLs."""
    for prefix in ("postgres://", "postgresql://"):
        if url.startswith(prefix):
            return "postgresql+psycopg2://" + url[len(prefix):]
    return url


def _generated_dev_key(instance: Path) -> str:
    """Development convenience: one key generated once and kept in the instance folder."""
    path = instance / GENERATED_KEY_FILE
    if path.exists():
        return path.read_text().strip()
    instance.mkdir(parents=True, exist_ok=True)
    key = Fernet.generate_key().decode()
    path.write_text(key + "\n")
    path.chmod(0o600)
    log.warning("CREDENTIALS_KEYS is not set: generated a development key in %s. "
                "Set CREDENTIALS_KEYS in production.", path)
    return key


def _int(env: Mapping[str, str], name: str, default: int, low: int, high: int) -> int:
    return _number(env, name, default, low, high, int, "a whole number")


def _float(env: Mapping[str, str], name: str, default: float, low: float, high: float) -> float:
    return _number(env, name, default, low, high, float, "a number of seconds")


def _number(env: Mapping[str, str], name: str, default, low, high, cast, kind: str):
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = cast(raw)
    except ValueError:
        raise ConfigError(name, f"must be {kind}, got {raw!r}") from None
    if not low <= value <= high:
        raise ConfigError(name, f"must be between {low} and {high}, got {value}")
    return value


def _bool(env: Mapping[str, str], name: str, default: bool) -> bool:
    raw = env.get(name, "").strip().lower()
    if not raw:
        return default
    if raw in ("1", "true", "yes", "on"):
        return True
    if raw in ("0", "false", "no", "off"):
        return False
    raise ConfigError(name, f"must be true or false, got {raw!r}")


def _choice(env: Mapping[str, str], name: str, default: str, choices: tuple[str, ...]) -> str:
    raw = env.get(name, "").strip().upper() or default
    if raw not in choices:
        raise ConfigError(name, f"must be one of {', '.join(choices)}, got {raw!r}")
    return raw


def _origins(env: Mapping[str, str], name: str) -> tuple[str, ...]:
    """Comma-separated browser origins ("https://app.example.com"), as browsers send them."""
    origins = []
    for raw in env.get(name, "").split(","):
        origin = raw.strip().rstrip("/")
        if not origin:
            continue
        parts = urlsplit(origin)
        if parts.scheme not in ("http", "https") or not parts.netloc or parts.path or parts.query:
            raise ConfigError(name, f"{origin!r} is not an origin like https://app.example.com")
        origins.append(origin.lower())
    return tuple(origins)


def _url(env: Mapping[str, str], name: str, default: str | None) -> str:
    raw = env.get(name, "").strip() or default
    if raw is None:
        raise ConfigError(name, "is required")
    parts = urlsplit(raw)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ConfigError(name, f"must be an http(s) URL, got {raw!r}")
    return raw


def get_config() -> Config:
    """The current app's configuration (set up by create_app)."""
    return current_app.extensions["telephony.config"]
