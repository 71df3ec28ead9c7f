import json
import logging

import pytest
from openapi_spec_validator import validate as validate_openapi
from sqlalchemy import text

from telephony import create_app


def test_healthz(client):
    assert client.get("/healthz").json == {"status": "ok"}


def test_readyz_checks_the_database(client):
    response = client.get("/readyz")
    assert response.status_code == 200 and response.json["database"] == "ok"


def test_readyz_is_503_when_the_database_is_unreachable(config, tmp_path):
    broken = config.with_overrides(database_url="postgresql+psycopg2://nobody@127.0.0.1:1/none")
    app = create_app(broken, instance_path=str(tmp_path))
    response = app.test_client().get("/readyz")
    assert response.status_code == 503
    assert response.json == {"status": "unavailable", "database": "unreachable"}
    assert app.test_client().get("/healthz").status_code == 200


def test_metrics_count_requests_by_route(client):
    client.get("/readyz")
    client.get("/api/v1/agents/00000000-0000-0000-0000-000000000000")
    body = client.get("/metrics").get_data(as_text=True)
    assert 'telephony_http_requests_total{method="GET",route="/readyz",status="200"}' in body
    # Route templates, not raw paths, so ids do not explode the label set.
    assert 'route="/api/v1/agents/<uuid:agent_id>",status="401"' in body
    assert "telephony_upstream_requests_total" in body or "telephony_upstream_request_duration_seconds" in body


def test_request_id_is_echoed_or_generated(client):
    assert client.get("/healthz", headers={"X-Request-ID": "abc-123"}).headers["X-Request-ID"] == "abc-123"
    generated = client.get("/healthz", headers={"X-Request-ID": "bad id; <script>"}).headers["X-Request-ID"]
    assert len(generated) == 32 and "<" not in generated


def test_access_log_is_json_with_request_and_agency_ids(client, make_tenant, capsys):
    tenant = make_tenant()
    response = client.get("/api/v1/agents", headers={**tenant.admin(), "X-Request-ID": "req-42"}, buffered=False)
    # The access line is written once the response is sent (the server closes it), not before.
    assert '"logger": "telephony.access"' not in capsys.readouterr().err
    response.close()
    lines = [json.loads(line) for line in capsys.readouterr().err.splitlines() if line.startswith("{")]
    access = [line for line in lines if line["logger"] == "telephony.access" and line.get("request_id") == "req-42"]
    assert access, lines
    assert access[0]["agency_id"] == str(tenant.agency_id)
    assert access[0]["status"] == 200 and access[0]["route"] == "/api/v1/agents"
    assert tenant.admin_token not in json.dumps(lines)


def test_openapi_document_is_valid_and_complete(client):
    document = client.get("/openapi.json").json
    validate_openapi(document)
    paths = document["paths"]
    assert {"/api/v1/agents", "/api/v1/agents/{agent_id}", "/api/v1/phone-numbers", "/api/v1/credentials",
            "/api/v1/credentials/twilio", "/api/v1/api-keys", "/api/v1/me"} <= set(paths)
    create = paths["/api/v1/agents"]["post"]
    assert create["requestBody"]["content"]["application/json"]["schema"]["$ref"].endswith("/AgentIn")
    assert {"201", "400", "413"} <= set(create["responses"])
    assert "AgentIn" in document["components"]["schemas"]


def test_unexpected_errors_are_json_500_without_details(app, caplog):
    @app.get("/boom")
    def boom():
        raise RuntimeError("secret internals")

    caplog.set_level(logging.ERROR)
    response = app.test_client().get("/boom")
    assert response.status_code == 500
    assert response.json == {"error": "Unexpected server error", "code": "internal_error"}
    assert "secret internals" not in response.get_data(as_text=True)


def test_database_session_is_released_after_each_request(app, client):
    for _ in range(30):  # more than the pool size: a leak would block
        client.get("/readyz")
    with app.app_context():
        from telephony.db import get_session
        assert get_session().execute(text("SELECT 1")).scalar() == 1


def _kill_our_backends(db) -> None:
    """Terminate every server connection of this test database except the killer's own:
    what a PostgreSQL restart or an idle-connection reaper does to a pool."""
    from sqlalchemy import create_engine
    from sqlalchemy.pool import NullPool
    killer = create_engine(db.url, poolclass=NullPool)
    with killer.connect() as conn:
        conn.execute(text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                          "WHERE datname = current_database() AND pid <> pg_backend_pid()"))
    killer.dispose()


def test_idle_pooled_connection_is_pinged_and_replaced(app, db, database_url, monkeypatch):
    """A connection that sat idle in the pool is checked before use: a dead one is
    replaced, and the request never sees it."""
    if not database_url.startswith("postgresql"):
        pytest.skip("SQLite has no server connection to lose")
    from telephony import db as db_module
    with db.session() as session:
        session.execute(text("SELECT 1"))
    _kill_our_backends(db)
    monkeypatch.setattr(db_module, "PING_AFTER_IDLE_SECONDS", 0.0)
    with db.session() as session:
        assert session.execute(text("SELECT 41 + 1")).scalar_one() == 42


def test_recently_used_connection_is_not_pinged_and_a_dead_pool_recovers(app, db, database_url, monkeypatch):
    """No ping for a connection used moments ago (a round trip saved per transaction);
    if the server went away meanwhile, one statement fails and the whole pool is
    replaced, so the next one succeeds."""
    if not database_url.startswith("postgresql"):
        pytest.skip("SQLite has no server connection to lose")
    from sqlalchemy.exc import OperationalError

    from telephony import db as db_module
    monkeypatch.setattr(db_module, "PING_AFTER_IDLE_SECONDS", 3600.0)
    with db.session() as session:
        session.execute(text("SELECT 1"))
    _kill_our_backends(db)
    with pytest.raises(OperationalError):
        with db.session() as session:
            session.execute(text("SELECT 1"))
    with db.session() as session:
        assert session.execute(text("SELECT 41 + 1")).scalar_one() == 42
