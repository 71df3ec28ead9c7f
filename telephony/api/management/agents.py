"""Agent mappings: which Ultravox agent answers, recording, and its transfer targets."""
from __future__ import annotations

import uuid
from datetime import datetime

from pydantic import Field

from ...auth import current_principal, require_auth
from ...db import get_session
from ...services import agents as agent_service
from ..schema import RequestModel, ResponseModel, document, parse_body, render
from ..transfers import TransferTargetIn, TransferTargetOut
from .blueprint import NOT_FOUND, UltravoxId, bp


class AgentIn(RequestModel):
    name: str = Field(min_length=1, max_length=200)
    ultravox_agent_id: str = UltravoxId
    recording_enabled: bool = False
    transfer_targets: list[TransferTargetIn] = Field(default_factory=list, max_length=20)


class AgentPatch(RequestModel):
    name: str | None = Field(default=None, min_length=1, max_length=200)
    ultravox_agent_id: str | None = Field(default=None, min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")
    recording_enabled: bool | None = None
    transfer_targets: list[TransferTargetIn] | None = Field(default=None, max_length=20)  # replaces; [] removes


class AgentOut(ResponseModel):
    id: uuid.UUID
    name: str
    ultravox_agent_id: str
    recording_enabled: bool
    created_at: datetime
    transfer_targets: list[TransferTargetOut] = []


class AgentList(ResponseModel):
    agents: list[AgentOut]


@bp.get("/agents")
@require_auth(scope="admin")
@document(summary="List agent mappings", tags=["agents"], responses={200: (AgentList, "Agents")})
def list_agents():
    agents = agent_service.list_agents(get_session(), current_principal().agency_id)
    return render(AgentList, {"agents": agents})


@bp.post("/agents")
@require_auth(scope="admin")
@document(summary="Map an Ultravox agent", tags=["agents"], request_model=AgentIn,
          responses={201: (AgentOut, "Created"), 409: (None, "Already mapped")})
def create_agent():
    body = parse_body(AgentIn)
    session = get_session()
    agent = agent_service.create_agent(session, current_principal().agency_id, **body.model_dump())
    session.commit()
    return render(AgentOut, agent, 201)


@bp.get("/agents/<uuid:agent_id>")
@require_auth(scope="admin")
@document(summary="Get an agent mapping", tags=["agents"], responses={200: (AgentOut, "Agent"), 404: NOT_FOUND})
def get_agent(agent_id: uuid.UUID):
    return render(AgentOut, agent_service.get_agent(get_session(), current_principal().agency_id, agent_id))


@bp.patch("/agents/<uuid:agent_id>")
@require_auth(scope="admin")
@document(summary="Change an agent mapping", tags=["agents"], request_model=AgentPatch,
          responses={200: (AgentOut, "Updated"), 404: NOT_FOUND})
def update_agent(agent_id: uuid.UUID):
    body = parse_body(AgentPatch)
    session = get_session()
    agent = agent_service.update_agent(session, current_principal().agency_id, agent_id,
                                       **body.model_dump(exclude_unset=True, exclude_none=True))
    session.commit()
    return render(AgentOut, agent)


@bp.delete("/agents/<uuid:agent_id>")
@require_auth(scope="admin")
@document(summary="Delete an agent mapping", tags=["agents"], responses={204: (None, "Deleted"), 404: NOT_FOUND})
def delete_agent(agent_id: uuid.UUID):
    session = get_session()
    agent_service.delete_agent(session, current_principal().agency_id, agent_id)
    session.commit()
    return "", 204
