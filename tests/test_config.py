import os
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography.fernet import Fernet

from telephony import create_app
from telephony.config import Config, ConfigError

KEY = Fernet.generate_key().decode()


def test_sqlite_default_generates_a_key_once(tmp_path: Path, caplog):
    first = Config.from_env({}, instance_path=tmp_path)
    second = Config.from_env({}, instance_path=tmp_path)
    assert first.database_url == f"sqlite:///{(tmp_path / 'telephony.db').resolve()}"
    assert first.credentials_keys == second.credentials_keys
    Fernet(first.credentials_keys[0])  # a usable key
    assert (tmp_path / "credentials.key").stat().st_mode & 0o077 == 0
    assert "CREDENTIALS_KEYS is not set" in caplog.text


def test_defaults_point_at_real_upstreams(tmp_path):
    config = Config.from_env({}, instance_path=tmp_path)
    assert config.ultravox_api_base == "https://api.ultravox.ai"
    assert config.twilio_api_base == "https://api.twilio.com"
    assert config.telnyx_api_base == "https://api.telnyx.com/v2"
    assert config.plivo_api_base == "https://api.plivo.com"
    assert config.port == 8000 and config.public_base_url == "http://localhost:8000"


def test_every_upstream_base_is_configurable(tmp_path):
    config = Config.from_env({
        "ULTRAVOX_API_BASE": "http://127.0.0.1:9100/", "TWILIO_API_BASE": "http://127.0.0.1:9200",
        "TELNYX_API_BASE": "http://127.0.0.1:9200/v2", "PLIVO_API_BASE": "http://127.0.0.1:9200",
        "PUBLIC_BASE_URL": "https://voice.example.com/", "UPSTREAM_READ_TIMEOUT": "2.5",
        "DATABASE_URL": "postgres://u@db/x", "CREDENTIALS_KEYS": KEY,
    }, instance_path=tmp_path)
    assert config.ultravox_api_base == "http://127.0.0.1:9100"
    assert config.telnyx_api_base == "http://127.0.0.1:9200/v2"
    assert config.public_base_url == "https://voice.example.com"
    assert config.upstream_timeout == (3.05, 2.5)
    assert config.database_url == "postgresql+psycopg2://u@db/x"


@pytest.mark.parametrize("env, variable", [
    ({"PORT": "eighty"}, "PORT"),
    ({"PORT": "70000"}, "PORT"),
    ({"DATABASE_URL": "mysql://x"}, "DATABASE_URL"),
    ({"PUBLIC_BASE_URL": "voice.example.com"}, "PUBLIC_BASE_URL"),
    ({"ULTRAVOX_API_BASE": "ftp://x"}, "ULTRAVOX_API_BASE"),
    ({"TWILIO_API_BASE": "not a url"}, "TWILIO_API_BASE"),
    ({"TELNYX_API_BASE": "://"}, "TELNYX_API_BASE"),
    ({"PLIVO_API_BASE": "api.plivo.com"}, "PLIVO_API_BASE"),
    ({"CREDENTIALS_KEYS": "short"}, "CREDENTIALS_KEYS"),
    ({"CREDENTIALS_KEYS": f"{KEY},nope"}, "CREDENTIALS_KEYS"),
    ({"DATABASE_URL": "postgresql://u@h/db"}, "CREDENTIALS_KEYS"),
    ({"APP_ENV": "production", "CREDENTIALS_KEYS": KEY}, "SUPABASE_JWT_SECRET"),
    ({"APP_ENV": "production"}, "CREDENTIALS_KEYS"),
    ({"SUPABASE_JWT_SECRET": "too-short"}, "SUPABASE_JWT_SECRET"),
    ({"SUPABASE_JWKS_URL": "nope"}, "SUPABASE_JWKS_URL"),
    ({"UPSTREAM_CONNECT_TIMEOUT": "-1"}, "UPSTREAM_CONNECT_TIMEOUT"),
    ({"UPSTREAM_READ_TIMEOUT": "soon"}, "UPSTREAM_READ_TIMEOUT"),
    ({"INBOUND_ULTRAVOX_BUDGET": "20"}, "INBOUND_ULTRAVOX_BUDGET"),
    ({"LOG_LEVEL": "LOUD"}, "LOG_LEVEL"),
    ({"RETENTION_DAYS": "0"}, "RETENTION_DAYS"),
    ({"RETENTION_DAYS": "a month"}, "RETENTION_DAYS"),
])
def test_invalid_configuration_names_the_variable(tmp_path, env, variable):
    with pytest.raises(ConfigError) as error:
        Config.from_env(env, instance_path=tmp_path)
    assert error.value.variable == variable
    assert str(error.value).startswith(f"{variable}:")


def test_create_app_fails_at_start_up_on_bad_configuration(monkeypatch, tmp_path):
    monkeypatch.setenv("PORT", "not-a-port")
    with pytest.raises(ConfigError, match="^PORT:"):
        create_app(instance_path=str(tmp_path))


def test_config_error_never_echoes_a_key(tmp_path):
    secret_looking = "s3cr3t-but-not-a-fernet-key-" * 2
    with pytest.raises(ConfigError) as error:
        Config.from_env({"CREDENTIALS_KEYS": secret_looking}, instance_path=tmp_path)
    assert secret_looking not in str(error.value)


def test_a_bad_setting_stops_the_process_with_one_line_and_no_traceback(tmp_path):
    root = Path(__file__).resolve().parent.parent
    env = {"PATH": os.environ.get("PATH", ""), "DATABASE_URL": f"sqlite:///{tmp_path / 'x.db'}", "PORT": "eighty"}
    started = subprocess.run([sys.executable, "-c", "import wsgi"], cwd=root, env=env, capture_output=True,
                             text=True, timeout=120)
    assert started.returncode == 2
    assert started.stderr.strip() == "configuration error: PORT: must be a whole number, got 'eighty'"


def test_a_env_file_fills_in_settings_but_never_overrides_the_environment(tmp_path, monkeypatch):
    from telephony.config import load_env_file

    monkeypatch.delenv("PORT", raising=False)  # restored (removed) after the test
    monkeypatch.setenv("LOG_LEVEL", "WARNING")
    env_file = tmp_path / ".env"
    env_file.write_text("# comment\nPORT=9001\nLOG_LEVEL=DEBUG\n")
    assert load_env_file(env_file) is True
    assert os.environ["PORT"] == "9001" and os.environ["LOG_LEVEL"] == "WARNING"
    assert load_env_file(tmp_path / "missing.env") is False
