"""The deployment kit (Dockerfile, docker-compose.yml, Makefile) agrees with the application.

Always run, without Docker: the compose file's services, commands, health checks and
environment are checked against what the app really has (its CLI commands, routes,
the settings config.py and gunicorn.conf.py read, the Procfile, deploy/nginx.conf).
A variable the app does not read, a command that does not exist, a health check on a
missing route or an nginx ADAPT line that moved fails here, not on a server.

With Docker (DOCKER_TESTS=1 and a running daemon): the image is built and run, and
answers /healthz as an unprivileged user.
"""
from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import time
import urllib.request
from pathlib import Path

import click
import pytest
import yaml

from telephony import create_app
from telephony.config import Config

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
DOCKERFILE = (ROOT / "Dockerfile").read_text()
APP_SERVICES = ("migrate", "web", "worker")
PLACEHOLDERS = {  # what an operator puts in .env for the ${...:?} variables
    "POSTGRES_PASSWORD": "example-password",
    "CREDENTIALS_KEYS": "ZmDfcTF7_60GrrY167zsiPd67pEvs0aGOv2oasOM1Pg=",
    "PUBLIC_BASE_URL": "https://voice.example.com",
    "SUPABASE_JWKS_URL": "https://project.supabase.co/auth/v1/.well-known/jwks.json",  # or SUPABASE_JWT_SECRET
}


def substitute(value: str) -> str:
    """Compose's ${NAME}, ${NAME:-default} and ${NAME:?error}, from PLACEHOLDERS."""
    def one(match: re.Match) -> str:
        name, operator, word = match.group(1), match.group(2) or "", match.group(3) or ""
        if name in PLACEHOLDERS:
            return PLACEHOLDERS[name]
        return word if operator == ":-" else ""
    return re.sub(r"\$\{([A-Z0-9_]+)(?:(:-|:\?)([^}]*))?\}", one, value)


def environment(service: str) -> dict[str, str]:
    return {name: substitute(str(value)) for name, value in (COMPOSE["services"][service]["environment"]).items()}


def settings_the_app_reads() -> set[str]:
    """Every environment variable read by config.py, gunicorn.conf.py and the package."""
    names: set[str] = set()
    config = (ROOT / "telephony" / "config.py").read_text()
    names |= set(re.findall(r'_(?:int|float|bool|choice|url|origins)\(env, "([A-Z0-9_]+)"', config))
    names |= set(re.findall(r'env\.get\("([A-Z0-9_]+)"', config))
    for path in [ROOT / "gunicorn.conf.py", *sorted((ROOT / "telephony").rglob("*.py"))]:
        names |= set(re.findall(r"os\.environ\.get\(['\"]([A-Z0-9_]+)['\"]", path.read_text()))
    return names


def resolve_cli(app, argv: list[str]) -> click.Command:
    """The click command `argv` names in the app's CLI (`telephony ...` = `flask --app wsgi ...`)."""
    command: click.Command = app.cli
    with app.app_context():
        for word in argv:
            assert isinstance(command, click.Group), f"{argv}: {word!r} under a command that has no subcommands"
            found = command.get_command(click.Context(command), word)
            assert found is not None, f"{argv}: no command {word!r}"
            command = found
    return command


@pytest.fixture(scope="module")
def cli_app(tmp_path_factory):
    config = Config.from_env({"DATABASE_URL": "sqlite://", **PLACEHOLDERS},
                             instance_path=tmp_path_factory.mktemp("instance"))
    return create_app(config, instance_path=str(tmp_path_factory.mktemp("instance")))


def test_compose_has_the_database_a_one_shot_migration_web_worker_and_the_proxy():
    services = COMPOSE["services"]
    assert set(services) == {"db", "migrate", "web", "worker", "proxy"}
    assert services["migrate"]["restart"] == "no"
    for name in ("web", "worker"):
        assert services[name]["depends_on"] == {"migrate": {"condition": "service_completed_successfully"}}
    assert services["migrate"]["depends_on"] == {"db": {"condition": "service_healthy"}}
    assert services["proxy"]["depends_on"] == {"web": {"condition": "service_healthy"}}
    # Only the proxy is published: nothing reaches gunicorn around it.
    assert [name for name, service in services.items() if "ports" in service] == ["proxy"]


def test_compose_commands_are_the_procfile_processes_and_real_cli_commands(cli_app):
    procfile = dict(line.split(": ", 1) for line in (ROOT / "Procfile").read_text().splitlines() if line.strip())
    services = COMPOSE["services"]
    assert services["web"]["command"] == shlex.split(procfile["web"])
    assert services["web"]["command"] == re.search(r'^CMD (\[.*\])$', DOCKERFILE, re.M).group(1).strip("[]") \
        .replace('"', "").split(", ")
    # `telephony X` is `flask --app wsgi X` (pyproject.toml's console script, console.main).
    assert shlex.split(procfile["worker"])[3:] == services["worker"]["command"][1:]
    assert shlex.split(procfile["release"])[3:] == services["migrate"]["command"][1:]
    for name in ("migrate", "worker"):
        command = services[name]["command"]
        assert command[0] == "telephony"
        resolve_cli(cli_app, command[1:])
    healthcheck = services["worker"]["healthcheck"]["test"]
    assert healthcheck[:2] == ["CMD", "telephony"]
    check = resolve_cli(cli_app, healthcheck[2:4])
    assert {option for param in check.params for option in param.opts} >= set(healthcheck[4:])


def test_compose_environment_is_made_of_settings_the_app_reads_and_is_valid():
    known = settings_the_app_reads()
    for service in APP_SERVICES:
        env = environment(service)
        assert set(env) <= known, f"{service}: not read by the app: {sorted(set(env) - known)}"
        config = Config.from_env(env)  # a bad value would raise ConfigError naming it
        assert config.production and config.database_url.startswith("postgresql+psycopg2://telephony:")
        assert config.database_url.endswith("@db:5432/telephony")
        assert env["PROMETHEUS_MULTIPROC_DIR"] == "/run/telephony-metrics"
        assert "metrics:/run/telephony-metrics" in COMPOSE["services"][service]["volumes"]
    web, worker = Config.from_env(environment("web")), Config.from_env(environment("worker"))
    assert (web.db_pool_size, web.db_max_overflow) == (5, 10)
    # The worker's pool covers its job threads and dialer threads at once.
    assert worker.db_pool_size + worker.db_max_overflow >= worker.worker_concurrency + worker.dispatch_threads
    assert environment("web")["BIND_HOST"] == "0.0.0.0"


def test_compose_database_budget_fits_max_connections():
    """docs/deploy.md: every process's pool + overflow, added up, stays under max_connections."""
    command = COMPOSE["services"]["db"]["command"]
    max_connections = int(command[command.index("-c") + 1].split("=")[1])
    web, worker = Config.from_env(environment("web")), Config.from_env(environment("worker"))
    web_processes = int(environment("web")["WEB_CONCURRENCY"])
    budget = web_processes * (web.db_pool_size + web.db_max_overflow) + worker.db_pool_size + worker.db_max_overflow
    assert budget + 1 + 3 <= max_connections  # + the migration or a CLI command, + superuser_reserved_connections


def test_health_checks_use_routes_the_app_serves(cli_app):
    rules = {rule.rule for rule in cli_app.url_map.iter_rules()}
    web_check = " ".join(COMPOSE["services"]["web"]["healthcheck"]["test"])
    image_check = re.search(r"^HEALTHCHECK .*$\n^  CMD (.*)$", DOCKERFILE, re.M).group(1)
    for check in (web_check, image_check):
        [path] = re.findall(r"127\.0\.0\.1:(?:8000|%s)(/[a-z/]+)", check)
        assert path in rules
    assert {"/healthz", "/readyz", "/readyz/workers"} <= rules


def test_proxy_renders_only_the_adapt_lines_of_deploy_nginx_conf():
    script = " ".join(COMPOSE["services"]["proxy"]["command"][2:])
    config = (ROOT / "deploy" / "nginx.conf").read_text()
    expressions = re.findall(r"-e '(s(.)(.+?)\2(.*?)\2)'", script)
    assert len(expressions) == 3
    for _whole, _delimiter, pattern, _replacement in expressions:
        assert len(re.findall(pattern, config, re.M)) == 1, f"deploy/nginx.conf no longer matches {pattern!r}"
    assert "server web:8000 " in script and "EXPOSE 8000" in DOCKERFILE
    assert environment("web")["PORT"] == "8000"


def test_dockerfile_is_slim_non_root_locked_and_health_checked():
    assert re.search(r"^ARG PYTHON_IMAGE=python:3\.11-slim$", DOCKERFILE, re.M)
    assert "pip install --require-hashes --no-deps -r /tmp/requirements.lock" in DOCKERFILE
    user = re.findall(r"^USER (\S+)$", DOCKERFILE, re.M)
    assert user and user[-1] not in ("root", "0")
    assert "HEALTHCHECK" in DOCKERFILE
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert {".git", ".venv", ".env", "instance"} <= set(ignored)


def test_make_run_binds_loopback_unless_bind_host_says_otherwise():
    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    env = {k: v for k, v in os.environ.items() if k not in ("BIND_HOST", "MAKEFLAGS", "MAKELEVEL")}

    def dry_run(**extra: str) -> str:
        return subprocess.run(["make", "-n", "-W", "requirements.txt", "run"], cwd=ROOT, env={**env, **extra},
                              capture_output=True, text=True, check=True).stdout

    assert "BIND_HOST=127.0.0.1 " in dry_run()
    assert "BIND_HOST=0.0.0.0 " in dry_run(BIND_HOST="0.0.0.0")
    assert f'PROMETHEUS_MULTIPROC_DIR="{ROOT}/instance/prometheus"' in dry_run()


def test_pool_settings_are_validated():
    config = Config.from_env({"DATABASE_URL": "sqlite://", "DB_POOL_SIZE": "3", "DB_MAX_OVERFLOW": "0"})
    assert (config.db_pool_size, config.db_max_overflow) == (3, 0)
    with pytest.raises(ValueError, match="DB_POOL_SIZE"):
        Config.from_env({"DATABASE_URL": "sqlite://", "DB_POOL_SIZE": "0"})


# -- with Docker ----------------------------------------------------------------------------------


def _docker_ready() -> bool:
    if os.environ.get("DOCKER_TESTS") != "1" or shutil.which("docker") is None:
        return False
    return subprocess.run(["docker", "info"], capture_output=True).returncode == 0


@pytest.mark.skipif(not _docker_ready(), reason="needs DOCKER_TESTS=1 and a running Docker daemon")
def test_the_image_builds_runs_as_non_root_and_answers_healthz(tmp_path):
    tag = "telephony:test"
    subprocess.run(["docker", "build", "-t", tag, str(ROOT)], check=True, capture_output=True, timeout=1800)
    uid = subprocess.run(["docker", "run", "--rm", tag, "id", "-u"], check=True, capture_output=True, text=True)
    assert uid.stdout.strip() == "10001"
    container = subprocess.run(
        ["docker", "run", "-d", "-p", "127.0.0.1::8000", "-e", "WEB_CONCURRENCY=1", "-e", "GUNICORN_THREADS=4", tag],
        check=True, capture_output=True, text=True).stdout.strip()
    try:
        port = subprocess.run(["docker", "port", container, "8000/tcp"], check=True, capture_output=True,
                              text=True).stdout.split(":")[-1].strip()
        deadline = time.monotonic() + 90
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as answer:
                    assert answer.status == 200
                    break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(1)
        migrate = subprocess.run(["docker", "exec", container, "telephony", "db", "upgrade"],
                                 capture_output=True, text=True, timeout=300)
        assert migrate.returncode == 0, migrate.stderr
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=5) as answer:
            assert answer.status == 200
    finally:
        subprocess.run(["docker", "rm", "-f", container], capture_output=True)
