import logging
import uuid

import pytest
from cryptography.fernet import Fernet
from sqlalchemy import select, text

from telephony.credentials import CredentialError, CredentialStore, UnknownCredential
from telephony.models import AgencyCredential
from telephony.services.agencies import create_agency

AUTH_TOKEN = "twilio-auth-token-0123456789abcdef"
ULTRAVOX_KEY = "Zk9Ht7Lm.wX7pN9fM3kLj6tRq2bGhA8yE5cZvD4sT"


@pytest.fixture
def agencies(db):
    with db.session() as session:
        a = create_agency(session, "A")
        b = create_agency(session, "B")
        return a.id, b.id


def test_secrets_are_encrypted_at_rest(app, db, agencies, caplog):
    caplog.set_level(logging.DEBUG)
    store = app.extensions["telephony.credentials"]
    agency_a, _ = agencies
    with db.session() as session:
        store.set(session, agency_a, "twilio", {"account_sid": "AC" + "1" * 32, "auth_token": AUTH_TOKEN})
        store.set(session, agency_a, "ultravox", {"api_key": ULTRAVOX_KEY})
    with db.engine.connect() as conn:
        raw = conn.execute(text("SELECT name, ciphertext FROM agency_credentials")).all()
    assert {name for name, _ in raw} == {"twilio.account_sid", "twilio.auth_token", "ultravox.api_key"}
    dump = " ".join(ciphertext for _, ciphertext in raw)
    for secret in (AUTH_TOKEN, ULTRAVOX_KEY, "1" * 32, AUTH_TOKEN[-8:]):
        assert secret not in dump
    assert AUTH_TOKEN not in caplog.text and ULTRAVOX_KEY not in caplog.text
    with db.session() as session:
        twilio = store.get(session, agency_a, "twilio")
        assert twilio["auth_token"] == AUTH_TOKEN
        assert AUTH_TOKEN not in repr(twilio) and AUTH_TOKEN not in str(twilio)
        assert store.get(session, agency_a, "ultravox")["api_key"] == ULTRAVOX_KEY


def test_describe_shows_only_set_and_last_four(app, db, agencies):
    store = app.extensions["telephony.credentials"]
    agency_a, agency_b = agencies
    with db.session() as session:
        store.set(session, agency_a, "twilio", {"auth_token": AUTH_TOKEN, "account_sid": "short"})
        described = store.describe(session, agency_a)
        other = store.describe(session, agency_b)
    assert described["twilio"]["auth_token"] == {"set": True, "last4": AUTH_TOKEN[-4:]}
    assert described["twilio"]["account_sid"] == {"set": True, "last4": ""}  # too short to reveal any
    assert described["plivo"]["auth_token"] == {"set": False, "last4": None}
    assert other["twilio"]["auth_token"]["set"] is False  # agency B sees nothing of A's


def test_set_keeps_unnamed_fields_and_none_deletes(app, db, agencies):
    store = app.extensions["telephony.credentials"]
    agency_a, _ = agencies
    with db.session() as session:
        store.set(session, agency_a, "telnyx", {"api_key": "KEY0123456789", "connection_id": "conn-1"})
        store.set(session, agency_a, "telnyx", {"api_key": "KEY-new-0123456789"})
        store.set(session, agency_a, "telnyx", {"connection_id": None})
        assert dict(store.get(session, agency_a, "telnyx")) == {"api_key": "KEY-new-0123456789"}


def test_unknown_provider_or_field_is_rejected(app, db, agencies):
    store = app.extensions["telephony.credentials"]
    with db.session() as session:
        with pytest.raises(UnknownCredential) as error:
            store.set(session, agencies[0], "twilio", {"password": "x"})
        assert error.value.field == "password"
        with pytest.raises(UnknownCredential):
            store.get(session, agencies[0], "vonage")


def test_rotation_re_encrypts_under_the_newest_key(app, db, agencies, config):
    old_store = app.extensions["telephony.credentials"]
    agency_a, _ = agencies
    with db.session() as session:
        old_store.set(session, agency_a, "plivo", {"auth_id": "MA" + "X" * 18, "auth_token": AUTH_TOKEN})
    with db.engine.connect() as conn:
        before = dict(conn.execute(text("SELECT name, ciphertext FROM agency_credentials")).all())

    new_key = Fernet.generate_key().decode()
    rotating = CredentialStore((new_key,) + config.credentials_keys)
    with db.session() as session:
        assert rotating.rotate(session) == 2
    with db.engine.connect() as conn:
        after = dict(conn.execute(text("SELECT name, ciphertext FROM agency_credentials")).all())
    assert all(before[name] != after[name] for name in before)

    new_only = CredentialStore((new_key,))
    with db.session() as session:
        assert new_only.get(session, agency_a, "plivo")["auth_token"] == AUTH_TOKEN
        with pytest.raises(CredentialError) as error:
            old_store.get(session, agency_a, "plivo")  # the old key alone no longer reads them
        assert AUTH_TOKEN not in str(error.value)


def test_ciphertext_moved_to_another_agency_is_refused(app, db, agencies):
    store = app.extensions["telephony.credentials"]
    agency_a, agency_b = agencies
    with db.session() as session:
        store.set(session, agency_a, "ultravox", {"api_key": ULTRAVOX_KEY})
        store.set(session, agency_b, "ultravox", {"api_key": "other-key-0123456789"})
    with db.session() as session:
        row_a = session.scalar(select(AgencyCredential).where(AgencyCredential.agency_id == agency_a))
        row_b = session.scalar(select(AgencyCredential).where(AgencyCredential.agency_id == agency_b))
        row_b.ciphertext = row_a.ciphertext  # an attacker with write access swaps rows
    with db.session() as session:
        with pytest.raises(CredentialError):
            store.get(session, agency_b, "ultravox")


def test_store_requires_a_key():
    with pytest.raises(ValueError):
        CredentialStore(())


def test_nothing_for_an_unknown_agency(app, db):
    store = app.extensions["telephony.credentials"]
    with db.session() as session:
        assert dict(store.get(session, uuid.uuid4(), "twilio")) == {}
