"""Agent mappings: an agency's name for an Ultravox agent."""
from __future__ import annotations

import uuid

from sqlalchemy import or_, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from ..errors import Conflict, NotFound
from ..models import AgentMapping
from .transfer_targets import validate_targets


def list_agents(session: Session, agency_id: uuid.UUID) -> list[AgentMapping]:
    return list(session.scalars(select(AgentMapping).where(AgentMapping.agency_id == agency_id)
                                .order_by(AgentMapping.created_at, AgentMapping.id)))


def get_agent(session: Session, agency_id: uuid.UUID, agent_id: uuid.UUID) -> AgentMapping:
    """By our id. Another agency's agent is reported exactly like a missing one."""
    agent = session.scalar(select(AgentMapping).where(AgentMapping.id == agent_id,
                                                      AgentMapping.agency_id == agency_id))
    if agent is None:
        raise NotFound("Agent not found", field="agent_id")
    return agent


def find_agent(session: Session, agency_id: uuid.UUID, ref: str) -> AgentMapping:
    """The agency's agent as a call or campaign names it: by its Ultravox agent id, or by
    our mapping id. Another agency's agent is reported exactly like a missing one."""
    conditions = [AgentMapping.ultravox_agent_id == ref]
    try:
        conditions.append(AgentMapping.id == uuid.UUID(ref))
    except ValueError:
        pass
    agents = session.scalars(select(AgentMapping).where(AgentMapping.agency_id == agency_id, or_(*conditions))).all()
    # An Ultravox agent id that happens to read as another mapping's id names its own agent.
    agent = next((a for a in agents if a.ultravox_agent_id == ref), agents[0] if agents else None)
    if agent is None:
        raise NotFound("Agent not found or does not belong to your agency", field="agent_id")
    return agent


def create_agent(session: Session, agency_id: uuid.UUID, *, name: str, ultravox_agent_id: str,
                 recording_enabled: bool = False, transfer_targets: list | None = None) -> AgentMapping:
    agent = AgentMapping(agency_id=agency_id, name=name, ultravox_agent_id=ultravox_agent_id,
                         recording_enabled=recording_enabled,
                         transfer_targets=validate_targets(transfer_targets or []))
    session.add(agent)
    _flush_unique(session)
    return agent


def update_agent(session: Session, agency_id: uuid.UUID, agent_id: uuid.UUID, **changes) -> AgentMapping:
    agent = get_agent(session, agency_id, agent_id)
    if "transfer_targets" in changes:  # replaced whole; [] removes them all
        changes["transfer_targets"] = validate_targets(changes["transfer_targets"])
    for name, value in changes.items():
        setattr(agent, name, value)
    _flush_unique(session)
    return agent


def _flush_unique(session: Session) -> None:
    """Flush in a savepoint so a duplicate mapping is a clean 409, not a broken session."""
    try:
        with session.begin_nested():
            session.flush()
    except IntegrityError:
        raise Conflict("this Ultravox agent is already mapped for your agency", field="ultravox_agent_id") from None


def delete_agent(session: Session, agency_id: uuid.UUID, agent_id: uuid.UUID) -> None:
    session.delete(get_agent(session, agency_id, agent_id))
    session.flush()
