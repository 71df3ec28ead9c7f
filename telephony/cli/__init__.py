"""Management commands: `flask --app wsgi <group> <command>`, one module per command group.

Secrets are read from standard input or the environment, never from argv
(argv is visible to every user on the machine and lands in shell history).

An app imports this package the first time its command group (app.cli) is listed or asked
for a command (telephony/__init__.py), so a web worker, which runs none, never does. Each
command imports its services when it runs, so listing the commands loads none of them.
"""
from __future__ import annotations

import click

from .agency import agency_cli
from .agent import agent_cli
from .apikey import apikey_cli
from .common import domain_errors_as_click
from .credentials import credentials_cli
from .db import db_cli
from .maintenance import maintenance_cli
from .number import number_cli
from .publickey import publickey_cli
from .token import token_cli
from .user import user_cli
from .worker import worker_cli

# Domain errors from services become one-line CLI errors, not tracebacks: each command of
# these groups is wrapped once, here (the groups are module-level and shared by every app).
for _group in (agency_cli, user_cli, agent_cli, number_cli, credentials_cli, apikey_cli, publickey_cli):
    for _command in _group.commands.values():
        _command.callback = domain_errors_as_click(_command.callback)

COMMAND_GROUPS = (db_cli, agency_cli, user_cli, agent_cli, number_cli, credentials_cli, apikey_cli, publickey_cli,
                  token_cli, worker_cli, maintenance_cli)


def register(commands: click.Group) -> None:
    """Adds every command group to `commands`, an app's `flask` command group (app.cli)."""
    for group in COMMAND_GROUPS:
        commands.add_command(group)
