"""Public web-call keys: the management API, the CLI, and the shared rate limiter."""
from __future__ import annotations

import json
import threading
import uuid

import pytest
from sqlalchemy import event, select

from telephony.models import PublicKey, RateLimitWindow
from telephony.services.public_keys import RateLimited, consume_rate_limit, normalize_origin
from tests.test_web_calls import setup_agency

PATH = "/api/v1/public-keys"


def test_create_list_revoke(client, db, make_tenant):
    tenant = make_tenant()
    agent = setup_agency(client, tenant)
    created = client.post(PATH, headers=tenant.admin(), json={
        "name": "Shop widget", "agent_ids": [agent["id"], agent["id"]],
        "allowed_origins": ["https://Shop.Example.com/", "https://shop.example.com:443", "http://localhost:3000"],
        "rate_limit_per_minute": 10})
    assert created.status_code == 201, created.json
    key = created.json
    assert key["key"].startswith("pk_") and key["prefix"] == key["key"][:11]
    assert key["agent_ids"] == [agent["id"]]
    assert key["allowed_origins"] == ["https://shop.example.com", "http://localhost:3000"]
    assert key["rate_limit_per_minute"] == 10 and key["revoked_at"] is None
    with db.session() as session:  # only the hash is stored
        row = session.get(PublicKey, uuid.UUID(key["id"]))
        assert key["key"] not in json.dumps([row.key_hash, row.prefix, row.name])

    listed = client.get(PATH, headers=tenant.admin()).json["public_keys"]
    assert [k["id"] for k in listed] == [key["id"]] and "key" not in listed[0]

    revoked = client.delete(f"{PATH}/{key['id']}", headers=tenant.admin())
    assert revoked.status_code == 200 and revoked.json["revoked_at"] is not None
    assert client.delete(f"{PATH}/{key['id']}", headers=tenant.admin()).json["revoked_at"] == revoked.json[
        "revoked_at"]  # revoking twice keeps the first time


def test_defaults(client, make_tenant):
    tenant = make_tenant()
    agent = setup_agency(client, tenant)
    key = client.post(PATH, headers=tenant.admin(), json={"name": "w", "agent_ids": [agent["id"]]}).json
    assert key["allowed_origins"] == [] and key["rate_limit_per_minute"] == 30


def test_tenancy_and_permissions(client, make_tenant):
    tenant, other = make_tenant(), make_tenant("Other")
    agent = setup_agency(client, tenant)
    other_agent = setup_agency(client, other, uv_agent="other-agent")
    foreign = client.post(PATH, headers=tenant.admin(), json={"name": "w", "agent_ids": [other_agent["id"]]})
    assert foreign.status_code == 404 and "agent_ids" in foreign.json["fields"]
    key = client.post(PATH, headers=tenant.admin(), json={"name": "w", "agent_ids": [agent["id"]]}).json
    assert client.delete(f"{PATH}/{key['id']}", headers=other.admin()).status_code == 404
    assert client.get(PATH, headers=other.admin()).json["public_keys"] == []
    assert client.get(PATH, headers=tenant.member()).status_code == 403
    assert client.post(PATH, headers=tenant.member(), json={"name": "w", "agent_ids": [agent["id"]]}).status_code == 403
    assert client.get(PATH).status_code == 401
    # A public key is not an API key.
    assert client.get(PATH, headers={"X-API-Key": key["key"]}).status_code == 401


@pytest.mark.parametrize("body, field", [
    ({"agent_ids": ["A"]}, "name"),
    ({"name": "w"}, "agent_ids"),
    ({"name": "w", "agent_ids": []}, "agent_ids"),
    ({"name": "w", "agent_ids": ["not-a-uuid"]}, "agent_ids.0"),
    ({"name": "w", "agent_ids": "A", "x": 1}, "agent_ids"),
    ({"name": "w", "agent_ids": ["A"], "allowed_origins": ["shop.example.com"]}, "allowed_origins"),
    ({"name": "w", "agent_ids": ["A"], "allowed_origins": ["https://shop.example.com/path"]}, "allowed_origins"),
    ({"name": "w", "agent_ids": ["A"], "allowed_origins": ["*"]}, "allowed_origins"),
    ({"name": "w", "agent_ids": ["A"], "allowed_origins": ["https://x.example"] * 21}, "allowed_origins"),
    ({"name": "w", "agent_ids": ["A"], "rate_limit_per_minute": 0}, "rate_limit_per_minute"),
    ({"name": "w", "agent_ids": ["A"], "rate_limit_per_minute": 10**6}, "rate_limit_per_minute"),
    ({"name": "w", "agent_ids": ["A"], "rate_limit_per_minute": "5"}, "rate_limit_per_minute"),
    ({"name": "a\u0000b", "agent_ids": ["A"]}, "name"),  # PostgreSQL refuses NUL: must be a 400, not a 500
    ({"name": "line\nbreak", "agent_ids": ["A"]}, "name"),
    ({"name": "w", "agent_ids": ["A"], "allowed_origins": ["https://a.example/\u0000"]}, "allowed_origins"),
])
def test_invalid_input_names_the_field(client, make_tenant, body, field):
    tenant = make_tenant()
    agent = setup_agency(client, tenant, ultravox_key=None)
    body = json.loads(json.dumps(body).replace('"A"', f'"{agent["id"]}"'))
    response = client.post(PATH, headers=tenant.admin(), json=body)
    assert response.status_code == 400, response.json
    # The field itself or one of its items (e.g. allowed_origins.0).
    assert any(name == field or name.startswith(f"{field}.") for name in response.json["fields"])


@pytest.mark.parametrize("raw, normalized", [
    ("https://Shop.Example.com", "https://shop.example.com"), ("https://shop.example.com/", "https://shop.example.com"),
    ("http://localhost:80", "http://localhost"), ("http://localhost:3000", "http://localhost:3000"),
    ("https://[::1]:8443", "https://[::1]:8443"), ("ftp://x.example", None), ("https://", None), ("null", None),
    ("https://a.example/x", None), ("https://a.example?x=1", None), ("https://u:p@a.example", None),
    ("https://a.example:99999", None), ("https://a b.example", None), ("", None),
])
def test_normalize_origin(raw, normalized):
    assert normalize_origin(raw) == normalized


def test_cli_create_list_revoke(app, client, make_tenant):
    tenant = make_tenant()
    agent = setup_agency(client, tenant, ultravox_key=None)
    runner = app.test_cli_runner()

    def run(*args):
        result = runner.invoke(args=list(args), catch_exceptions=False)
        return result

    created = run("publickey", "create", "--agency", str(tenant.agency_id), "--name", "Widget", "--agent", agent["id"],
                  "--origin", "https://shop.example.com", "--rate-limit", "5")
    assert created.exit_code == 0, created.output
    key = json.loads(created.output)
    assert key["key"].startswith("pk_") and key["allowed_origins"] == ["https://shop.example.com"]
    listed = [json.loads(line) for line in run("publickey", "list", "--agency", str(tenant.agency_id)).output.split(
        "\n") if line]
    assert [k["id"] for k in listed] == [key["id"]] and "key" not in listed[0]
    revoked = json.loads(run("publickey", "revoke", key["id"], "--agency", str(tenant.agency_id)).output)
    assert revoked["revoked_at"]
    bad = runner.invoke(args=["publickey", "create", "--agency", str(tenant.agency_id), "--name", "W",
                              "--agent", str(uuid.uuid4())])
    assert bad.exit_code != 0 and "not found" in bad.output
    bad_origin = runner.invoke(args=["publickey", "create", "--agency", str(tenant.agency_id), "--name", "W",
                                     "--agent", agent["id"], "--origin", "nope"])
    assert bad_origin.exit_code != 0 and "origin" in bad_origin.output


# -- the rate limiter ----------------------------------------------------------------------------

def test_fixed_window_counts_refuses_and_rolls_over(db):
    start = 1_000_000_020  # a multiple of 60: a window starts here
    with db.session() as session:
        for _ in range(3):
            consume_rate_limit(session, "b", limit=3, now=start + 10.0)
        with pytest.raises(RateLimited) as refused:
            consume_rate_limit(session, "b", limit=3, now=start + 50.5)
        assert refused.value.retry_after == 10  # ceil(60 - 50.5)
        consume_rate_limit(session, "other", limit=3, now=start + 50.0)  # buckets are independent
        consume_rate_limit(session, "b", limit=3, now=start + 65.0)  # the next window
        # The old window of "b" was dropped when the new one began.
        rows = session.execute(select(RateLimitWindow.bucket, RateLimitWindow.window_start,
                                      RateLimitWindow.count).order_by(RateLimitWindow.bucket)).all()
        assert [tuple(r) for r in rows] == [("b", start + 60, 1), ("other", start, 1)]


def test_a_refused_hit_writes_nothing(db):
    statements: list[str] = []

    def record(_conn, _cursor, statement, *_args):
        statements.append(statement.split()[0].upper())

    now = 1_000_000_030.0
    with db.session() as session:
        for _ in range(2):
            consume_rate_limit(session, "full", limit=2, now=now)
        event.listen(db.engine, "before_cursor_execute", record)
        try:
            for _ in range(3):
                with pytest.raises(RateLimited):
                    consume_rate_limit(session, "full", limit=2, now=now)
        finally:
            event.remove(db.engine, "before_cursor_execute", record)
    assert statements and set(statements) <= {"SELECT", "BEGIN"}, statements


def test_concurrent_hits_are_counted_exactly(db):
    """Many threads, each with its own connection (as separate gunicorn
    workers would have): the atomic upsert never loses an increment."""
    threads, hits_each = 8, 5
    refused: list[int] = []
    errors: list[BaseException] = []

    def worker():
        try:
            with db.session() as session:
                for _ in range(hits_each):
                    try:
                        consume_rate_limit(session, "shared", limit=30, now=2_000_000_010.0)
                    except RateLimited:
                        refused.append(1)
        except BaseException as exc:  # surfaced below; a thread's exception would be lost otherwise
            errors.append(exc)

    pool = [threading.Thread(target=worker) for _ in range(threads)]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join(timeout=60)
    assert not errors
    with db.session() as session:
        # Refused hits wrote nothing: the count stopped at the limit.
        assert session.scalar(select(RateLimitWindow.count).where(RateLimitWindow.bucket == "shared")) == 30
    assert len(refused) == threads * hits_each - 30
