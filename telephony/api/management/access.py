"""Who the caller is (/me), and the agency's API keys (the key itself is shown once)."""
from __future__ import annotations

import uuid
from datetime import datetime
from typing import Literal

from flask import jsonify
from pydantic import Field

from ...auth import ALL_SCOPES, current_principal, require_auth
from ...db import get_session
from ...services import api_keys as api_key_service
from ..schema import RequestModel, ResponseModel, document, parse_body, render
from .blueprint import NOT_FOUND, bp

Scope = Literal["calls:read", "calls:write", "campaigns:read", "campaigns:write", "admin"]
assert set(Scope.__args__) == set(ALL_SCOPES)  # type: ignore[attr-defined]


class MeOut(ResponseModel):
    agency_id: uuid.UUID
    kind: Literal["user", "api_key"]
    scopes: list[str]


class ApiKeyIn(RequestModel):
    name: str = Field(min_length=1, max_length=200)
    scopes: list[Scope] = Field(min_length=1, max_length=len(ALL_SCOPES))


class ApiKeyOut(ResponseModel):
    id: uuid.UUID
    name: str
    prefix: str
    scopes: list[str]
    created_at: datetime
    last_used_at: datetime | None
    revoked_at: datetime | None


class ApiKeyCreated(ApiKeyOut):
    key: str = Field(description="The key itself. Shown only in this response; store it now.")


class ApiKeyList(ResponseModel):
    api_keys: list[ApiKeyOut]


# -- who am I ----------------------------------------------------------------------

@bp.get("/me")
@require_auth()
@document(summary="The caller's agency and permissions", tags=["management"], responses={200: (MeOut, "Caller")})
def me():
    principal = current_principal()
    return render(MeOut, {"agency_id": principal.agency_id, "kind": principal.kind,
                         "scopes": sorted(principal.scopes)})


# -- API keys ---------------------------------------------------------------------------

@bp.get("/api-keys")
@require_auth(scope="admin")
@document(summary="List API keys (never the keys themselves)", tags=["api keys"],
          responses={200: (ApiKeyList, "Keys")})
def list_api_keys():
    keys = api_key_service.list_api_keys(get_session(), current_principal().agency_id)
    return render(ApiKeyList, {"api_keys": keys})


@bp.post("/api-keys")
@require_auth(scope="admin")
@document(summary="Create an API key (the key is shown once)", tags=["api keys"], request_model=ApiKeyIn,
          responses={201: (ApiKeyCreated, "Created")})
def create_api_key():
    body = parse_body(ApiKeyIn)
    session = get_session()
    row, plaintext = api_key_service.create_api_key(session, current_principal().agency_id, name=body.name,
                                                    scopes=body.scopes)
    session.commit()
    out = ApiKeyOut.model_validate(row).model_dump(mode="json")
    return jsonify({**out, "key": plaintext}), 201


@bp.delete("/api-keys/<uuid:key_id>")
@require_auth(scope="admin")
@document(summary="Revoke an API key", tags=["api keys"], responses={200: (ApiKeyOut, "Revoked"), 404: NOT_FOUND})
def revoke_api_key(key_id: uuid.UUID):
    session = get_session()
    row = api_key_service.revoke_api_key(session, current_principal().agency_id, key_id)
    session.commit()
    return render(ApiKeyOut, row)
