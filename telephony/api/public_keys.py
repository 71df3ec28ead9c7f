"""Management of public web-call keys (/api/v1/public-keys): list, create, revoke.

Admin only and agency-scoped, like the rest of the management API. The key
itself is shown once, in the create response; afterwards only its prefix.
"""
from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated

from flask import Blueprint, jsonify
from pydantic import Field

from ..auth import current_principal, require_auth
from ..db import get_session
from ..services import public_keys as public_key_service
from .management import NOT_FOUND
from .schema import RequestModel, ResponseModel, document, parse_body, render

bp = Blueprint("public_keys", __name__, url_prefix="/api/v1")

Origin = Annotated[str, Field(min_length=1, max_length=public_key_service.MAX_ORIGIN_LENGTH,
                              examples=["https://www.example.com"])]


class PublicKeyIn(RequestModel):
    name: str = Field(min_length=1, max_length=200, description="No control characters.")
    agent_ids: list[uuid.UUID] = Field(min_length=1, max_length=public_key_service.MAX_AGENTS,
                                       description="Our agent mapping ids this key may start calls for.")
    allowed_origins: list[Origin] = Field(
        default_factory=list, max_length=public_key_service.MAX_ORIGINS,
        description="Browser origins allowed to use the key (scheme://host[:port]); empty allows any.")
    rate_limit_per_minute: int = Field(default=public_key_service.DEFAULT_RATE_LIMIT, ge=1,
                                       le=public_key_service.MAX_RATE_LIMIT)


class PublicKeyOut(ResponseModel):
    id: uuid.UUID
    name: str
    prefix: str
    agent_ids: list[uuid.UUID]
    allowed_origins: list[str]
    rate_limit_per_minute: int
    created_at: datetime
    last_used_at: datetime | None
    revoked_at: datetime | None


class PublicKeyCreated(PublicKeyOut):
    key: str = Field(description="The key itself (x-api-access-key). Shown only in this response; store it now.")


class PublicKeyList(ResponseModel):
    public_keys: list[PublicKeyOut]


@bp.get("/public-keys")
@require_auth(scope="admin")
@document(summary="List public web-call keys (never the keys themselves)", tags=["public keys"],
          responses={200: (PublicKeyList, "Keys")})
def list_public_keys():
    keys = public_key_service.list_public_keys(get_session(), current_principal().agency_id)
    return render(PublicKeyList, {"public_keys": keys})


@bp.post("/public-keys")
@require_auth(scope="admin")
@document(summary="Create a public web-call key (the key is shown once)", tags=["public keys"],
          request_model=PublicKeyIn,
          responses={201: (PublicKeyCreated, "Created"), 404: (None, "An agent is not the agency's")})
def create_public_key():
    body = parse_body(PublicKeyIn)
    session = get_session()
    row, plaintext = public_key_service.create_public_key(session, current_principal().agency_id,
                                                          **body.model_dump())
    session.commit()
    out = PublicKeyOut.model_validate(row).model_dump(mode="json")
    return jsonify({**out, "key": plaintext}), 201


@bp.delete("/public-keys/<uuid:key_id>")
@require_auth(scope="admin")
@document(summary="Revoke a public web-call key", tags=["public keys"],
          responses={200: (PublicKeyOut, "Revoked"), 404: NOT_FOUND})
def revoke_public_key(key_id: uuid.UUID):
    session = get_session()
    row = public_key_service.revoke_public_key(session, current_principal().agency_id, key_id)
    session.commit()
    return render(PublicKeyOut, row)
