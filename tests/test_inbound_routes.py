"""The routes a web process keeps (services/inbound_routes.py): a kept route saves the
webhook its read, and is never used once a change to it has committed, whoever made it.

On SQLite and PostgreSQL (the `app` fixture is parametrized): the triggers that keep
agencies.route_version are each dialect's own (migration 0011).
"""
from __future__ import annotations

import logging
import uuid

import responses
from sqlalchemy import delete, select, text, update

from telephony.models import Agency, AgencyCredential, AgentMapping, Call, PhoneNumber
from telephony.services import agents as agent_service
from telephony.services import phone_numbers as number_service
from telephony.services.agencies import create_agency
from telephony.services.inbound_routes import Route, RouteAgent, RouteCache
from tests.inbound_helpers import (
    AGENT_UV_ID,
    FALLBACK,
    NUMBER,
    TwilioCase,
    UltravoxMock,
    calls,
    parse_answer,
    seed,
    twilio_signature,
)
from tests.test_inbound_sql_budget import _split, _summary, counted

CASE = TwilioCase()
NEW_TOKEN = "twilio-auth-token-rotated-000002"


def _version(app, agency_id: uuid.UUID) -> int:
    with app.extensions["telephony.db"].session() as session:
        return session.scalar(select(Agency.route_version).where(Agency.id == agency_id))


def _call(client, *, token: str | None = None, call_sid: str | None = None):
    form = CASE.inbound_form(call_sid or CASE.call_id())
    if token is None:
        return CASE.post(client, CASE.voice_path, form)
    signature = twilio_signature("https://voice.example.test" + CASE.voice_path, form, token)
    return CASE.post(client, CASE.voice_path, form, signed=False, headers={"X-Twilio-Signature": signature})


def _kept(app) -> int:
    return len(app.extensions.get("telephony.inbound_routes", ()))


def test_every_change_to_what_a_route_reads_bumps_the_agencys_route_version(app):
    seeded = seed(app, carrier="twilio")
    db, store = app.extensions["telephony.db"], app.extensions["telephony.credentials"]
    changes = {
        "the number's fallback": lambda s: s.execute(update(PhoneNumber).values(fallback_number=FALLBACK)),
        "the agent's recording": lambda s: s.execute(update(AgentMapping).values(recording_enabled=True)),
        "a credential": lambda s: store.set(s, seeded.agency_id, "twilio", {"auth_token": NEW_TOKEN}),
        "a new number": lambda s: number_service.add_number(s, seeded.agency_id, e164="+14155550123",
                                                            carrier="twilio"),
        "a removed credential": lambda s: s.execute(text("DELETE FROM agency_credentials WHERE name = "
                                                         "'ultravox.api_key'")),
        "a removed number": lambda s: s.execute(text("DELETE FROM phone_numbers WHERE e164 = '+14155550123'")),
    }
    for change, make in changes.items():
        before = _version(app, seeded.agency_id)
        with app.app_context(), db.session() as session:
            make(session)
        assert _version(app, seeded.agency_id) > before, change
    # What the claim checks itself (credit, the concurrency limit) changes no version.
    before = _version(app, seeded.agency_id)
    with db.session() as session:
        session.execute(update(Agency).values(credit_balance=10, max_concurrent_calls=3))
    assert _version(app, seeded.agency_id) == before


def test_a_number_moved_to_another_agency_bumps_both(app):
    first, second = seed(app, carrier="twilio"), seed(app, carrier="plivo", number="+14155550144")
    before = (_version(app, first.agency_id), _version(app, second.agency_id))
    with app.extensions["telephony.db"].session() as session:
        session.execute(update(PhoneNumber).where(PhoneNumber.e164 == NUMBER).values(agency_id=second.agency_id))
    assert _version(app, first.agency_id) > before[0] and _version(app, second.agency_id) > before[1]


def test_an_agency_with_numbers_agents_and_credentials_can_still_be_deleted(app):
    seeded = seed(app, carrier="twilio")
    with app.extensions["telephony.db"].session() as session:
        session.execute(delete(Agency).where(Agency.id == seeded.agency_id))
    with app.extensions["telephony.db"].session() as session:
        assert session.scalar(select(PhoneNumber.id)) is None
        assert session.scalar(select(AgencyCredential.id)) is None


def test_the_second_call_to_a_number_reads_no_route(app, client):
    seed(app, carrier="twilio")
    uv = UltravoxMock()
    with responses.RequestsMock() as rsps:
        uv.answer_with(rsps)
        _call(client)
        with counted(app) as seen:
            response = _call(client)
    assert parse_answer(response.get_data(as_text=True))[0] == "stream"
    statements, control = _split(seen)
    assert _summary(statements) == ["INSERT calls", "UPDATE calls"] and control == []
    assert "agencies.route_version" in statements[0]  # the claim checks the kept route
    assert len(uv.requests) == 2 and len(calls(app)) == 2


def test_a_changed_agent_or_number_is_used_by_the_next_call(app, client):
    seeded = seed(app, carrier="twilio", agent_recording=False)
    uv = UltravoxMock()
    with responses.RequestsMock() as rsps:
        uv.answer_with(rsps)
        _call(client)
        with app.app_context(), app.extensions["telephony.db"].session() as session:
            agent_service.update_agent(session, seeded.agency_id, seeded.agent_id, recording_enabled=True)
        _call(client)
        with app.extensions["telephony.db"].session() as session:
            session.execute(update(PhoneNumber).values(fallback_number=FALLBACK, recording_enabled=False))
        _call(client)
    assert [body["recordingEnabled"] for body in uv.bodies] == [False, True, False]
    assert len(calls(app)) == 3


def test_a_rotated_carrier_token_is_used_at_once_and_the_old_one_refused(app, client, caplog):
    seeded = seed(app, carrier="twilio")
    uv = UltravoxMock()
    with responses.RequestsMock() as rsps:
        uv.answer_with(rsps)
        assert _call(client).status_code == 200 and _kept(app) == 1
        with app.app_context(), app.extensions["telephony.db"].session() as session:
            app.extensions["telephony.credentials"].set(session, seeded.agency_id, "twilio",
                                                        {"auth_token": NEW_TOKEN})
        rotated = _call(client, token=NEW_TOKEN)
        with caplog.at_level(logging.WARNING, logger="telephony.services.carrier_webhooks"):
            old = _call(client)
    assert rotated.status_code == 200 and parse_answer(rotated.get_data(as_text=True))[0] == "stream"
    assert old.status_code == 403
    assert len(uv.requests) == 2 and len(calls(app)) == 2
    # The forged request was checked against the kept route and the fresh one with the same
    # credentials: one warning, not two.
    assert len([r for r in caplog.records if "rejected" in r.getMessage()]) == 1


def _second_call_after(app, client, **agency_values):
    """One call (its route is kept), the agency changed as given, a second call: its
    answer and the Ultravox requests made."""
    uv = UltravoxMock()
    with responses.RequestsMock(assert_all_requests_are_fired=False) as rsps:
        uv.answer_with(rsps)
        _call(client)
        with app.extensions["telephony.db"].session() as session:
            session.execute(update(Agency).values(**agency_values))
        return _call(client), uv


def test_an_agency_out_of_credit_gets_no_call_though_its_route_was_kept(app, client):
    seed(app, carrier="twilio", fallback=FALLBACK)
    response, uv = _second_call_after(app, client, credit_balance=0)
    assert parse_answer(response.get_data(as_text=True)) == ("dial", FALLBACK)
    assert len(uv.requests) == 1


def test_a_concurrency_limit_set_after_the_route_was_kept_holds_the_caller(app, client):
    seed(app, carrier="twilio")
    response, uv = _second_call_after(app, client, max_concurrent_calls=1)  # the first call is live
    assert "<Redirect" in response.get_data(as_text=True)  # every slot is taken: held
    assert len(uv.requests) == 1
    assert _kept(app) == 0  # a route with a limit is not kept: its live calls are counted first


def test_a_number_moved_to_another_agency_is_answered_for_the_new_one(app, client):
    first = seed(app, carrier="twilio")
    uv = UltravoxMock()
    with responses.RequestsMock() as rsps:
        uv.answer_with(rsps)
        _call(client)
        db, store = app.extensions["telephony.db"], app.extensions["telephony.credentials"]
        with app.app_context(), db.session() as session:
            second = create_agency(session, "Second", credit_balance=60)
            agent = agent_service.create_agent(session, second.id, name="Other", ultravox_agent_id=AGENT_UV_ID)
            number = session.scalar(select(PhoneNumber).where(PhoneNumber.e164 == NUMBER))
            number_service.delete_number(session, first.agency_id, number.id)
            number_service.add_number(session, second.id, e164=NUMBER, carrier="twilio", agent_id=agent.id)
            store.set(session, second.id, "twilio", {"account_sid": "AC" + "d" * 32, "auth_token": NEW_TOKEN})
            store.set(session, second.id, "ultravox", {"api_key": "Yk9Ht7Lm.wX7pN9fM3kLj6tRq2bGhA8yE5cZvD4sT"})
            second_id = second.id
        refused = _call(client)  # signed with the first agency's token
        answered = _call(client, token=NEW_TOKEN)
    assert refused.status_code == 403 and answered.status_code == 200
    with db.session() as session:
        owners = [row.agency_id for row in session.execute(select(Call.agency_id).order_by(Call.created_at))]
    assert owners == [first.agency_id, second_id]
    assert uv.requests[-1].headers["X-API-Key"].startswith("Yk9")


def _route(e164: str, *, agent: bool = True, limit: int | None = None) -> Route:
    return Route(agency_id=uuid.uuid4(), e164=e164, fallback_number=None, recording_enabled=None, credit_balance=1,
                 agent=RouteAgent(id=uuid.uuid4(), ultravox_agent_id="a", recording_enabled=False,
                                  transfer_targets=[]) if agent else None,
                 max_concurrent_calls=limit)


def test_the_cache_keeps_only_checkable_routes_and_at_most_its_size():
    cache = RouteCache(max_routes=2)
    cache.keep("twilio", _route("+1"))
    cache.keep("twilio", _route("+2", agent=False))  # no agent: nothing to claim
    cache.keep("twilio", _route("+3", limit=5))  # a limit: counted before the claim
    assert len(cache) == 1 and cache.get("twilio", "+1") is not None and cache.get("plivo", "+1") is None
    cache.keep("twilio", _route("+4"))
    cache.keep("twilio", _route("+5"))
    assert len(cache) == 2 and cache.get("twilio", "+1") is None  # the oldest went
    cache.keep("twilio", _route("+5", agent=False))  # the number lost its agent: forgotten
    assert cache.get("twilio", "+5") is None
