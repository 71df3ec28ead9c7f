"""What a web worker loads: `import wsgi` (what gunicorn's master imports before it forks the
workers) leaves out what no request uses, and the CLI still offers every command.

- the management commands (telephony/cli/) are imported the first time the app's command
  group is listed or asked for a command (`flask --app wsgi ...`, `telephony ...`), never by
  serving requests;
- httpx (and its command-line client's rich and pygments) come only with the Telnyx SDK
  (tests/test_lazy_carrier_sdks.py shows when).

Each import check runs in a fresh interpreter, since this test process has long imported them.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import click
import pytest
from cryptography.fernet import Fernet

from telephony import create_app
from telephony.config import Config

ROOT = Path(__file__).resolve().parent.parent
NOT_IN_A_WEB_WORKER = ("telephony.cli", "httpx", "rich", "pygments", "alembic")

# Every command of `flask --app wsgi` / `telephony` (the README documents them), besides Flask's own.
COMMANDS = {
    "agency": {"create", "list", "set-capacity", "set-credits"},
    "agent": {"add", "list", "remove", "targets"},
    "apikey": {"create", "list", "revoke"},
    "credentials": {"generate-key", "rotate", "set", "show"},
    "db": {"downgrade", "upgrade"},
    "maintenance": {"purge"},
    "number": {"add", "check", "list", "remove"},
    "publickey": {"create", "list", "revoke"},
    "token": {"mint"},
    "user": {"add", "list", "remove"},
    "worker": {"check", "run"},
}


def fresh_interpreter(code: str, tmp_path: Path) -> dict:
    env = {"PATH": "/usr/bin:/bin", "DATABASE_URL": f"sqlite:///{tmp_path / 'web.db'}", "HOME": str(tmp_path),
           "CREDENTIALS_KEYS": Fernet.generate_key().decode(), "PUBLIC_BASE_URL": "https://voice.example.test"}
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


LOADED = f"""
import json, sys
def loaded():
    return sorted(p for p in {NOT_IN_A_WEB_WORKER!r} if any(m == p or m.startswith(p + ".") for m in sys.modules))
"""


def test_the_web_app_and_its_requests_load_neither_the_cli_nor_httpx(tmp_path):
    result = fresh_interpreter(LOADED + """
import wsgi
steps = {"import": loaded()}
client = wsgi.app.test_client()
steps["healthz"] = client.get("/healthz").status_code
steps["openapi"] = len(client.get("/openapi.json").get_json()["paths"])
steps["after_requests"] = loaded()
import click
steps["commands"] = wsgi.app.cli.list_commands(click.Context(wsgi.app.cli))
steps["after_listing"] = loaded()
print(json.dumps(steps))
""", tmp_path)
    assert result["import"] == []
    assert result["healthz"] == 200 and result["openapi"] > 20
    assert result["after_requests"] == []
    assert set(COMMANDS) <= set(result["commands"])
    assert result["after_listing"] == ["telephony.cli"]


@pytest.fixture(scope="module")
def cli_app(tmp_path_factory):
    instance = tmp_path_factory.mktemp("instance")
    config = Config.from_env({"DATABASE_URL": "sqlite://", "CREDENTIALS_KEYS": Fernet.generate_key().decode(),
                              "PUBLIC_BASE_URL": "https://voice.example.test"}, instance_path=str(instance))
    app = create_app(config, instance_path=str(instance))
    yield app
    app.extensions["telephony.db"].dispose()


def test_the_cli_offers_every_command(cli_app):
    group = cli_app.cli
    with cli_app.app_context():
        context = click.Context(group)
        found = {}
        for name in COMMANDS:
            command = group.get_command(context, name)
            assert isinstance(command, click.Group), name
            found[name] = set(command.list_commands(click.Context(command)))
    assert found == COMMANDS


def test_a_command_runs_through_the_app_and_its_help_lists_every_group(cli_app):
    runner = cli_app.test_cli_runner()
    shown = runner.invoke(args=["--help"])
    assert shown.exit_code == 0, shown.output
    for name in COMMANDS:
        assert f"\n  {name} " in shown.output, name
    refused = runner.invoke(args=["agency", "set-credits", "not-a-uuid", "5"])
    assert refused.exit_code == 1 and "AGENCY_ID must be a UUID" in refused.output
