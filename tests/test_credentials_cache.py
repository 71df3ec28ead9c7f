"""The credential store remembers what it decrypted, by ciphertext: a changed secret, a
row moved to another agency, a tampered or foreign token are never answered from memory."""
import pytest
from sqlalchemy import update

from telephony.credentials import CredentialError
from telephony.models import AgencyCredential
from telephony.services.agencies import create_agency

FIRST = "twilio-auth-token-first-0123456789"
SECOND = "twilio-auth-token-second-987654321"


@pytest.fixture
def agencies(db):
    with db.session() as session:
        return create_agency(session, "A").id, create_agency(session, "B").id


def test_a_changed_secret_is_read_fresh_and_a_moved_row_is_refused_every_time(app, db, agencies):
    store = app.extensions["telephony.credentials"]
    agency_a, agency_b = agencies
    with db.session() as session:
        store.set(session, agency_a, "twilio", {"auth_token": FIRST})
    with db.session() as session:
        assert store.get(session, agency_a, "twilio")["auth_token"] == FIRST
        assert store.get(session, agency_a, "twilio")["auth_token"] == FIRST  # remembered: the same answer
    with db.session() as session:
        store.set(session, agency_a, "twilio", {"auth_token": SECOND})
    with db.session() as session:
        assert store.get(session, agency_a, "twilio")["auth_token"] == SECOND
    # Agency A's (already opened) token moved onto agency B's row: still refused, twice.
    with db.session() as session:
        token = session.query(AgencyCredential.ciphertext).filter_by(agency_id=agency_a).scalar()
        session.add(AgencyCredential(agency_id=agency_b, name="twilio.auth_token", ciphertext=token))
    for _ in range(2):
        with db.session() as session, pytest.raises(CredentialError):
            store.get(session, agency_b, "twilio")


def test_a_tampered_token_is_refused_every_time(app, db, agencies):
    store = app.extensions["telephony.credentials"]
    agency_a, _ = agencies
    with db.session() as session:
        store.set(session, agency_a, "twilio", {"auth_token": FIRST})
    with db.session() as session:
        token = session.query(AgencyCredential.ciphertext).filter_by(agency_id=agency_a).scalar()
        session.execute(update(AgencyCredential).where(AgencyCredential.agency_id == agency_a)
                        .values(ciphertext=token[:-6] + ("A" if token[-6] != "A" else "B") + token[-5:]))
    for _ in range(2):
        with db.session() as session, pytest.raises(CredentialError):
            store.get(session, agency_a, "twilio")
