"""A database that accepts connections and never answers (issue: hardening, item 1).

The service points at a listener that accepts every TCP connection and never says a
word, the way a hung PostgreSQL server looks from outside. Every request must still be
answered in time, and safely: a carrier webhook gets the apology (it cannot be verified,
so nothing is dialled), /readyz a quick 503, the API a 503 with Retry-After.
"""
from __future__ import annotations

import socket
import threading
import time

import pytest
from cryptography.fernet import Fernet

from telephony import create_app
from telephony.auth import mint_token
from telephony.config import Config, DatabaseTimeouts
from telephony.services.inbound import APOLOGY
from tests.conftest import JWT_SECRET
from tests.inbound_helpers import PlivoCase, TelnyxTexmlCase, TwilioCase, parse_answer

# Twilio waits 15 s for a voice webhook's answer; the caller must hear something before.
CARRIER_DEADLINE_SECONDS = 15.0


@pytest.fixture(scope="module")
def silent_database():
    """host:port of a listener that accepts connections and never reads or writes."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(128)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(listener.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield "127.0.0.1:%d" % listener.getsockname()[1]
    stop.set()
    thread.join()
    for connection in held:
        connection.close()
    listener.close()


@pytest.fixture
def hung_app(silent_database, tmp_path):
    config = Config(database_url=f"postgresql+psycopg2://postgres@{silent_database}/telephony",
                    public_base_url="https://voice.example.test",
                    credentials_keys=(Fernet.generate_key().decode(),), jwt_secret=JWT_SECRET,
                    database_timeouts=DatabaseTimeouts(connect=2, pool=1.0))
    app = create_app(config, instance_path=str(tmp_path / "instance"))
    yield app
    app.extensions["telephony.db"].dispose()


def timed(request):
    started = time.monotonic()
    response = request()
    return response, time.monotonic() - started


@pytest.mark.parametrize("case", [TwilioCase(), TelnyxTexmlCase(), PlivoCase()], ids=lambda case: case.name)
def test_inbound_webhook_apologises_before_the_carriers_deadline(hung_app, case):
    client = hung_app.test_client()
    response, seconds = timed(lambda: case.post(client, case.voice_path, case.inbound_form(case.call_id())))
    assert response.status_code == 200 and response.mimetype == "text/xml"
    assert parse_answer(response.get_data(as_text=True)) == ("say", APOLOGY)
    assert seconds < CARRIER_DEADLINE_SECONDS / 2


def test_readyz_is_503_within_two_seconds(hung_app):
    response, seconds = timed(lambda: hung_app.test_client().get("/readyz"))
    assert response.status_code == 503 and response.json["status"] == "unavailable"
    assert seconds < 2.0


def test_api_is_503_with_retry_after(hung_app):
    token = mint_token(JWT_SECRET, "someone")
    response = hung_app.test_client().get("/api/v1/me", headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 503
    assert response.json == {"error": "The service is briefly unavailable; retry shortly", "code": "unavailable"}
    assert response.headers["Retry-After"] == "5"


def test_carrier_status_callback_is_a_retryable_503(hung_app):
    case = TwilioCase()
    response = case.post(hung_app.test_client(), case.status_path, case.status_form(case.call_id(), "completed"))
    assert response.status_code == 503 and response.headers["Retry-After"] == "5"


def test_timeouts_come_from_the_environment():
    config = Config.from_env({"DATABASE_URL": "sqlite://", "DB_CONNECT_TIMEOUT": "4", "DB_POOL_TIMEOUT": "2.5",
                              "DB_STATEMENT_TIMEOUT_MS": "15000", "DB_LOCK_TIMEOUT_MS": "2000"})
    assert config.database_timeouts == DatabaseTimeouts(connect=4, pool=2.5, statement_ms=15000, lock_ms=2000)
    assert Config(database_url="sqlite://").database_timeouts == DatabaseTimeouts()
