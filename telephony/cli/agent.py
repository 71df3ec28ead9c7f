"""`flask agent`: the agency's agent mappings (ours, each naming an Ultravox agent) and their
transfer targets."""
from __future__ import annotations

import json
import sys

import click
from flask.cli import AppGroup

from ..db import get_db
from .common import agency_option, emit, emit_each, fail, parse_uuid, remove_row

agent_cli = AppGroup("agent", help="Agent mappings.")


@agent_cli.command("add")
@agency_option
@click.option("--name", required=True)
@click.option("--ultravox-agent-id", required=True)
@click.option("--recording/--no-recording", default=False, show_default=True)
def agent_add(agency_id: str, name: str, ultravox_agent_id: str, recording: bool) -> None:
    from ..services.agents import create_agent
    with get_db().session() as session:
        agent = create_agent(session, parse_uuid(agency_id, "--agency"), name=name,
                             ultravox_agent_id=ultravox_agent_id, recording_enabled=recording)
        emit({"id": agent.id, "name": agent.name, "ultravox_agent_id": agent.ultravox_agent_id})


@agent_cli.command("list")
@agency_option
def agent_list(agency_id: str) -> None:
    from ..services.agents import list_agents
    emit_each(list_agents, agency_id, lambda agent: {"id": agent.id, "name": agent.name,
                                                     "ultravox_agent_id": agent.ultravox_agent_id,
                                                     "recording_enabled": agent.recording_enabled})


@agent_cli.command("remove")
@click.argument("agent_id")
@agency_option
def agent_remove(agent_id: str, agency_id: str) -> None:
    from ..services.agents import delete_agent
    remove_row(delete_agent, agency_id, agent_id, "AGENT_ID")


@agent_cli.command("targets")
@agency_option
@click.option("--agent", "agent_id", required=True, help="Agent mapping id (ours).")
@click.option("--set", "replace", is_flag=True,
              help="Replace the targets with the JSON list read from standard input ([] removes them).")
def agent_targets(agency_id: str, agent_id: str, replace: bool) -> None:
    """Show (or with --set, replace) the agent's transfer targets (docs/call-control.md)."""
    from ..services.agents import get_agent, update_agent
    with get_db().session() as session:
        agency, agent_uuid = parse_uuid(agency_id, "--agency"), parse_uuid(agent_id, "--agent")
        if replace:
            try:
                targets = json.loads(sys.stdin.read())
            except ValueError:
                fail("standard input must be a JSON list of targets")
            agent = update_agent(session, agency, agent_uuid, transfer_targets=targets)
        else:
            agent = get_agent(session, agency, agent_uuid)
        emit({"id": agent.id, "transfer_targets": agent.transfer_targets})
