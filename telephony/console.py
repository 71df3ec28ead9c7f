"""The `telephony` command (pyproject.toml's console script): every `flask --app wsgi`
command without the flags, e.g. `telephony db upgrade`, `telephony worker run`.

Settings come from the environment and a `.env` file in the current directory (the
environment wins); a bad setting stops it with one line naming the variable, as wsgi.py does.
"""
from __future__ import annotations

import click
from flask import Flask
from flask.cli import FlaskGroup

from . import create_app
from .config import ConfigError


def app_from_environment() -> Flask:
    try:
        return create_app()
    except ConfigError as error:
        click.echo(f"configuration error: {error}", err=True)
        raise SystemExit(2) from None


def main() -> None:
    FlaskGroup(create_app=app_from_environment, help="The telephony service's management commands.").main(
        prog_name="telephony")
