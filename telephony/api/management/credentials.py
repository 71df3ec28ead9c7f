"""Credentials (write-only secrets): which are set, set, delete; one route per provider of
the app's credential store (Ultravox and the carriers of its registry)."""
from __future__ import annotations

import functools

from flask.blueprints import BlueprintSetupState
from pydantic import Field, create_model

from ...auth import current_principal, require_auth
from ...credentials import get_credentials
from ...db import get_session
from ..schema import RequestModel, ResponseModel, document, parse_body, render
from .blueprint import bp

Secret = Field(default=None, min_length=1, max_length=4096)


class SecretStatusOut(ResponseModel):
    set: bool
    last4: str | None = Field(description="Last 4 characters, empty for short secrets, null when not set.")


# The credential models follow the app's credential store, whose providers are Ultravox and
# the carriers of the app's registry: e.g. TwilioCredentialsIn {account_sid, auth_token},
# and CredentialsOut with one member per provider.
@functools.lru_cache(maxsize=None)
def credentials_in_model(provider: str, fields: tuple[str, ...]) -> type[RequestModel]:
    """PUT /credentials/<provider>: each field optional (omitted: kept; null: deleted)."""
    return create_model(f"{provider.capitalize()}CredentialsIn", __base__=RequestModel,
                        **{name: (str | None, Secret) for name in fields})  # type: ignore[call-overload]


@functools.lru_cache(maxsize=None)
def credentials_out_model(providers: tuple[str, ...]) -> type[ResponseModel]:
    return create_model("CredentialsOut", __base__=ResponseModel,
                        **{name: (dict[str, SecretStatusOut], ...) for name in providers})  # type: ignore[call-overload]


def _credentials_status_view(out: type[ResponseModel]):
    @require_auth(scope="admin")
    @document(summary="Which credentials are set (never their values)", tags=["credentials"],
              responses={200: (out, "Per provider and field: set, last 4 characters")})
    def get_credentials_status():
        return render(out, get_credentials().describe(get_session(), current_principal().agency_id))

    return get_credentials_status


def _credentials_view(provider: str, model: type[RequestModel], out: type[ResponseModel]):
    @require_auth(scope="admin")
    @document(summary=f"Set {provider} credentials (write-only; null deletes a field; omitted fields are kept)",
              tags=["credentials"], request_model=model,
              responses={200: (out, "Stored; the response shows only set/last 4")})
    def put_credentials():
        body = parse_body(model)
        session = get_session()
        agency_id = current_principal().agency_id
        get_credentials().set(session, agency_id, provider, body.model_dump(exclude_unset=True))
        session.commit()
        return render(out, get_credentials().describe(session, agency_id))

    return put_credentials


def _credentials_delete_view(provider: str):
    @require_auth(scope="admin")
    @document(summary=f"Delete all {provider} credentials", tags=["credentials"],
              responses={204: (None, "Deleted")})
    def delete_credentials():
        session = get_session()
        get_credentials().delete_provider(session, current_principal().agency_id, provider)
        session.commit()
        return "", 204

    return delete_credentials


@bp.record
def _credential_routes(state: BlueprintSetupState) -> None:
    """GET /credentials, PUT and DELETE /credentials/<provider>: one per provider of the
    app's credential store (create_app builds it before registering this blueprint)."""
    providers = state.app.extensions["telephony.credentials"].providers
    out = credentials_out_model(tuple(providers))
    state.add_url_rule("/credentials", "get_credentials_status", _credentials_status_view(out), methods=["GET"])
    for provider, fields in providers.items():
        state.add_url_rule(f"/credentials/{provider}", f"put_{provider}_credentials",
                           _credentials_view(provider, credentials_in_model(provider, tuple(fields)), out),
                           methods=["PUT"])
        state.add_url_rule(f"/credentials/{provider}", f"delete_{provider}_credentials",
                           _credentials_delete_view(provider), methods=["DELETE"])
