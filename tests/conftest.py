"""Shared fixtures. Database tests run on SQLite and on PostgreSQL.

The PostgreSQL leg uses TEST_DATABASE_URL, or postgresql://postgres@127.0.0.1:5432/test
when a server answers there. Each test session creates its own throw-away
database next to it (so parallel runs do not collide) and applies the real
Alembic migrations to it. With REQUIRE_POSTGRES=1 (CI) an unreachable server
fails the run instead of skipping the leg.
"""
from __future__ import annotations

import os
import socket
import uuid
from dataclasses import dataclass
from urllib.parse import urlsplit

import pytest
from cryptography.fernet import Fernet
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import create_engine, text

from telephony import create_app
from telephony.config import Config, normalize_database_url
from telephony.migrate import upgrade
from telephony.models import Base
from tests.browser_helpers import headless_chrome


class ServerLikeClient(FlaskClient):
    """Closes each response before handing it over, as a WSGI server does once the
    body is sent: work a view defers until then (`response.call_on_close`, e.g. the
    inbound webhook's record of its answer) has happened when a test reads the database."""

    def open(self, *args, buffered: bool = True, **kwargs):
        return super().open(*args, buffered=buffered, **kwargs)


Flask.test_client_class = ServerLikeClient

DEFAULT_PG_URL = "postgresql://postgres@127.0.0.1:5432/test"
JWT_SECRET = "test-jwt-secret-that-is-long-enough-0123456789"


def _pg_base_url() -> str | None:
    url = os.environ.get("TEST_DATABASE_URL")
    if url:
        return normalize_database_url(url)
    try:
        with socket.create_connection(("127.0.0.1", 5432), timeout=0.5):
            return normalize_database_url(DEFAULT_PG_URL)
    except OSError:
        return None


@pytest.fixture(scope="session")
def sqlite_url(tmp_path_factory) -> str:
    url = f"sqlite:///{tmp_path_factory.mktemp('db') / 'test.db'}"
    upgrade(url)
    return url


@pytest.fixture(scope="session")
def postgresql_url():
    base = _pg_base_url()
    if base is None:
        if os.environ.get("REQUIRE_POSTGRES") == "1":
            pytest.fail("REQUIRE_POSTGRES=1 but no PostgreSQL answers (set TEST_DATABASE_URL)")
        pytest.skip("PostgreSQL not reachable; set TEST_DATABASE_URL to run this leg")
    name = f"telephony_test_{uuid.uuid4().hex[:12]}"
    admin = create_engine(base, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
    except Exception as exc:
        if os.environ.get("REQUIRE_POSTGRES") == "1":
            raise
        pytest.skip(f"cannot create a PostgreSQL test database: {exc.__class__.__name__}")
    parts = urlsplit(base)
    url = parts._replace(path=f"/{name}").geturl()
    upgrade(url)
    yield url
    with admin.connect() as conn:
        conn.execute(text(f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}'"))
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}"'))
    admin.dispose()


def _clean(url: str) -> None:
    engine = create_engine(url)
    with engine.begin() as conn:
        for table in reversed(Base.metadata.sorted_tables):
            conn.execute(table.delete())
    engine.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request) -> str:
    url = request.getfixturevalue(f"{request.param}_url")
    _clean(url)
    return url


@pytest.fixture
def config(request, database_url, tmp_path) -> Config:
    # Tests that deliver agency events to receivers on 127.0.0.1 mark themselves
    # `private_event_endpoints`: the local-development opt-out of the SSRF guard
    # (tests/test_event_ssrf.py tests the guard itself).
    allow_private = request.node.get_closest_marker("private_event_endpoints") is not None
    return Config(
        event_endpoints_allow_private=allow_private,
        database_url=database_url,
        public_base_url="https://voice.example.test",
        credentials_keys=(Fernet.generate_key().decode(),),
        jwt_secret=JWT_SECRET,
        jwks_url=None,
        ultravox_api_base="https://api.ultravox.ai",
        # The record written after an inbound answer is written at once here, so tests read
        # it right after the request; the batching default is tested in test_write_behind.py.
        write_behind_ms=0,
    )


@pytest.fixture
def app(config, tmp_path):
    app = create_app(config, instance_path=str(tmp_path / "instance"))
    app.config["TESTING"] = True
    yield app
    app.extensions["telephony.db"].dispose()


@pytest.fixture
def client(app):
    return app.test_client()


@pytest.fixture
def db(app):
    return app.extensions["telephony.db"]


@dataclass
class Tenant:
    agency_id: uuid.UUID
    admin_token: str
    member_token: str
    admin_subject: str
    member_subject: str

    def admin(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.admin_token}"}

    def member(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.member_token}"}


@pytest.fixture
def make_tenant(app, db):
    from telephony.auth import mint_token
    from telephony.models import Role
    from telephony.services.agencies import add_user, create_agency

    def make(name: str = "Agency", credit_balance: int = 3600) -> Tenant:
        suffix = uuid.uuid4().hex[:8]
        with db.session() as session:
            agency = create_agency(session, name, credit_balance=credit_balance)
            add_user(session, auth_subject=f"admin-{suffix}", agency_id=agency.id, role=Role.admin)
            add_user(session, auth_subject=f"member-{suffix}", agency_id=agency.id, role=Role.member)
            agency_id = agency.id
        return Tenant(agency_id=agency_id, admin_subject=f"admin-{suffix}", member_subject=f"member-{suffix}",
                      admin_token=mint_token(JWT_SECRET, f"admin-{suffix}"),
                      member_token=mint_token(JWT_SECRET, f"member-{suffix}"))

    return make


# -- local simulators (one server per test session, state reset per test) ------

@pytest.fixture(scope="session")
def _ultravox_sim_server():
    from telephony.sim import ultravox as ultravox_sim
    from telephony.sim.common import serve_in_thread
    with serve_in_thread(ultravox_sim.create_app()) as handle:
        yield handle


@pytest.fixture(scope="session")
def _carrier_sim_server():
    from telephony.sim import carriers as carrier_sim
    from telephony.sim.common import serve_in_thread
    with serve_in_thread(carrier_sim.create_app()) as handle:
        yield handle


@pytest.fixture
def ultravox_sim(_ultravox_sim_server):
    """The Ultravox simulator, reset (no latency, no failures, no calls). `.base_url`."""
    import requests
    requests.post(f"{_ultravox_sim_server.base_url}/_sim/reset", timeout=5).raise_for_status()
    return _ultravox_sim_server


@pytest.fixture
def carrier_sim(_carrier_sim_server):
    """The Twilio/Telnyx/Plivo simulator, reset. `.base_url`."""
    import requests
    requests.post(f"{_carrier_sim_server.base_url}/_sim/reset", timeout=5).raise_for_status()
    return _carrier_sim_server


@pytest.fixture
def sim_app(config, tmp_path, ultravox_sim, carrier_sim):
    """An app whose upstreams are the local simulators."""
    app = create_app(config.with_overrides(
        ultravox_api_base=ultravox_sim.base_url, twilio_api_base=carrier_sim.base_url,
        telnyx_api_base=f"{carrier_sim.base_url}/v2", plivo_api_base=carrier_sim.base_url,
    ), instance_path=str(tmp_path / "sim-instance"))
    app.config["TESTING"] = True
    yield app
    app.extensions["telephony.db"].dispose()


@pytest.fixture
def receiver():
    """An agency's event receiver on 127.0.0.1 (tests/lifecycle_support.Receiver)."""
    from telephony.sim.common import serve_in_thread
    from tests.lifecycle_support import Receiver

    receiver = Receiver()
    with serve_in_thread(receiver.app) as handle:
        receiver.url = f"{handle.base_url}/events"
        receiver.port = handle.port
        yield receiver


@pytest.fixture
def browser():
    """A headless Chromium (tests/browser_helpers.py); modules using it skip themselves
    without one."""
    yield from headless_chrome()
