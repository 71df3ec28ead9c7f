"""CORS of the dashboard API (/api/v1/*): an allow-list of origins (CORS_ORIGINS).
The browser itself is exercised in test_browser_cors.py."""
from __future__ import annotations

import pytest
from cryptography.fernet import Fernet

from telephony import create_app
from telephony.config import Config, ConfigError
from tests.conftest import JWT_SECRET


def test_preflight_answers_only_the_listed_origins(sqlite_url, tmp_path):
    app = create_app(Config(database_url=sqlite_url, credentials_keys=(Fernet.generate_key().decode(),),
                            jwt_secret=JWT_SECRET, cors_origins=("https://dashboard.example.com",)),
                     instance_path=str(tmp_path / "instance"))
    client = app.test_client()
    allowed = client.options("/api/v1/agents", headers={
        "Origin": "https://dashboard.example.com", "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization, content-type"})
    assert allowed.headers["Access-Control-Allow-Origin"] == "https://dashboard.example.com"
    assert allowed.headers["Access-Control-Allow-Credentials"] == "true"
    assert "authorization" in allowed.headers["Access-Control-Allow-Headers"].lower()
    refused = client.options("/api/v1/agents", headers={"Origin": "https://evil.example.net",
                                                        "Access-Control-Request-Method": "POST"})
    assert "Access-Control-Allow-Origin" not in refused.headers
    # Without CORS_ORIGINS no browser origin is allowed at all.
    closed = create_app(Config(database_url=sqlite_url, credentials_keys=(Fernet.generate_key().decode(),)),
                        instance_path=str(tmp_path / "closed")).test_client()
    preflight = closed.options("/api/v1/agents", headers={"Origin": "https://dashboard.example.com",
                                                          "Access-Control-Request-Method": "GET"})
    assert "Access-Control-Allow-Origin" not in preflight.headers
    app.extensions["telephony.db"].dispose()


def test_cors_origins_come_from_the_environment_and_are_checked():
    config = Config.from_env({"DATABASE_URL": "sqlite://", "CORS_ORIGINS": "https://App.example.com/, http://127.0.0.1:3000"})
    assert config.cors_origins == ("https://app.example.com", "http://127.0.0.1:3000")
    with pytest.raises(ConfigError, match="CORS_ORIGINS"):
        Config.from_env({"DATABASE_URL": "sqlite://", "CORS_ORIGINS": "app.example.com/path"})
