"""Every way a JWT or API key can fail, through HTTP (GET /api/v1/me)."""
import base64
import json
import time
import uuid

import jwt
import pytest
import responses
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from telephony import create_app
from telephony.auth import mint_token
from telephony.services.agencies import add_user, create_agency
from telephony.services.api_keys import create_api_key, revoke_api_key

from .conftest import JWT_SECRET

JWKS_URL = "https://project.supabase.test/auth/v1/.well-known/jwks.json"


def _token(subject: str, *, secret: str = JWT_SECRET, algorithm: str = "HS256", audience="authenticated",
           exp_delta: int = 3600, headers: dict | None = None, **extra) -> str:
    claims = {"sub": subject, "aud": audience, "exp": int(time.time()) + exp_delta, "role": "authenticated", **extra}
    return jwt.encode(claims, secret, algorithm=algorithm, headers=headers)


def _me(client, headers):
    return client.get("/api/v1/me", headers=headers)


def test_valid_token_resolves_the_users_agency(client, make_tenant):
    tenant = make_tenant()
    response = _me(client, tenant.member())
    assert response.status_code == 200
    assert response.json["agency_id"] == str(tenant.agency_id)
    assert response.json["kind"] == "user"
    assert "admin" not in response.json["scopes"]
    assert "admin" in _me(client, tenant.admin()).json["scopes"]


@pytest.mark.parametrize("header", [
    None, "", "Bearer", "Bearer ", "Basic dXNlcjpwYXNz", "Token abc", "Bearer not-a-jwt", "Bearer a.b.c",
])
def test_missing_or_malformed_authorization_is_401(client, make_tenant, header):
    make_tenant()
    headers = {} if header is None else {"Authorization": header}
    response = _me(client, headers)
    assert response.status_code == 401
    assert response.json["code"] == "unauthorized"
    assert "WWW-Authenticate" in response.headers


def test_alg_none_is_401(client, make_tenant):
    tenant = make_tenant()
    header = base64.urlsafe_b64encode(json.dumps({"alg": "none", "typ": "JWT"}).encode()).rstrip(b"=").decode()
    payload = base64.urlsafe_b64encode(json.dumps({
        "sub": tenant.admin_subject, "aud": "authenticated", "exp": int(time.time()) + 600,
    }).encode()).rstrip(b"=").decode()
    for token in (f"{header}.{payload}.", f"{header}.{payload}"):
        assert _me(client, {"Authorization": f"Bearer {token}"}).status_code == 401


def test_wrong_key_is_401(client, make_tenant):
    tenant = make_tenant()
    token = _token(tenant.admin_subject, secret="another-secret-that-is-long-enough-987654321")
    assert _me(client, {"Authorization": f"Bearer {token}"}).status_code == 401


def test_expired_is_401(client, make_tenant):
    tenant = make_tenant()
    response = _me(client, {"Authorization": f"Bearer {_token(tenant.admin_subject, exp_delta=-120)}"})
    assert response.status_code == 401
    assert "expired" in response.json["error"]


@pytest.mark.parametrize("audience", ["anon", "service_role", ["other"]])
def test_wrong_audience_is_401(client, make_tenant, audience):
    tenant = make_tenant()
    response = _me(client, {"Authorization": f"Bearer {_token(tenant.admin_subject, audience=audience)}"})
    assert response.status_code == 401


def test_missing_exp_or_sub_is_401(client, make_tenant):
    tenant = make_tenant()
    no_exp = jwt.encode({"sub": tenant.admin_subject, "aud": "authenticated"}, JWT_SECRET, algorithm="HS256")
    no_sub = jwt.encode({"aud": "authenticated", "exp": int(time.time()) + 60}, JWT_SECRET, algorithm="HS256")
    assert _me(client, {"Authorization": f"Bearer {no_exp}"}).status_code == 401
    assert _me(client, {"Authorization": f"Bearer {no_sub}"}).status_code == 401


def test_hs256_token_is_refused_when_only_jwks_is_configured(config, tmp_path, make_tenant):
    """Algorithm confusion: with only asymmetric keys configured, an HS256 token is never accepted."""
    app = create_app(config.with_overrides(jwt_secret=None, jwks_url=JWKS_URL), instance_path=str(tmp_path))
    with responses.RequestsMock(assert_all_requests_are_fired=False):
        response = _me(app.test_client(), {"Authorization": f"Bearer {_token('anyone')}"})
    assert response.status_code == 401
    app.extensions["telephony.db"].dispose()


def test_valid_token_of_user_without_agency_is_403(client, db):
    with db.session() as session:
        add_user(session, auth_subject="drifter", agency_id=None)
    response = _me(client, {"Authorization": f"Bearer {mint_token(JWT_SECRET, 'drifter')}"})
    assert response.status_code == 403
    assert response.json["error"] == "User is not associated with an agency"


def test_valid_token_of_unknown_user_is_403(client):
    assert _me(client, {"Authorization": f"Bearer {mint_token(JWT_SECRET, 'never-seen')}"}).status_code == 403


def _jwk(public_key, kid: str, algorithm: str) -> dict:
    algo = jwt.get_algorithm_by_name(algorithm)
    jwk = algo.to_jwk(public_key, as_dict=True)
    jwk.update(kid=kid, alg=algorithm, use="sig")
    return jwk


@pytest.mark.parametrize("algorithm", ["RS256", "ES256"])
def test_asymmetric_tokens_are_checked_against_jwks(config, tmp_path, db, algorithm):
    private = (rsa.generate_private_key(public_exponent=65537, key_size=2048) if algorithm == "RS256"
               else ec.generate_private_key(ec.SECP256R1()))
    attacker = (rsa.generate_private_key(public_exponent=65537, key_size=2048) if algorithm == "RS256"
                else ec.generate_private_key(ec.SECP256R1()))
    with db.session() as session:
        agency = create_agency(session, "JWKS agency")
        add_user(session, auth_subject="jwks-user", agency_id=agency.id)
    app = create_app(config.with_overrides(jwks_url=JWKS_URL), instance_path=str(tmp_path))
    client = app.test_client()
    with responses.RequestsMock() as mock:
        mock.get(JWKS_URL, json={"keys": [_jwk(private.public_key(), "key-1", algorithm)]})
        good = _token("jwks-user", secret=private, algorithm=algorithm, headers={"kid": "key-1"})
        forged = _token("jwks-user", secret=attacker, algorithm=algorithm, headers={"kid": "key-1"})
        unknown_kid = _token("jwks-user", secret=private, algorithm=algorithm, headers={"kid": "key-9"})
        assert _me(client, {"Authorization": f"Bearer {good}"}).json["agency_id"] == str(agency.id)
        assert _me(client, {"Authorization": f"Bearer {forged}"}).status_code == 401
        assert _me(client, {"Authorization": f"Bearer {unknown_kid}"}).status_code == 401
        # The key set is cached: one fetch served all three (the unknown kid is
        # not re-fetched within the refetch interval).
        assert len(mock.calls) == 1
    app.extensions["telephony.db"].dispose()


def test_jwks_unreachable_is_401_not_500(config, tmp_path, db):
    with db.session() as session:
        agency = create_agency(session, "x")
        add_user(session, auth_subject="u", agency_id=agency.id)
    app = create_app(config.with_overrides(jwks_url=JWKS_URL), instance_path=str(tmp_path))
    private = ec.generate_private_key(ec.SECP256R1())
    with responses.RequestsMock() as mock:
        mock.get(JWKS_URL, status=503)
        token = _token("u", secret=private, algorithm="ES256", headers={"kid": "k"})
        response = _me(app.test_client(), {"Authorization": f"Bearer {token}"})
    assert response.status_code == 401
    app.extensions["telephony.db"].dispose()


# -- API keys ----------------------------------------------------------------------

@pytest.fixture
def keyed_agency(db):
    with db.session() as session:
        agency = create_agency(session, "Keyed")
        admin_row, admin_key = create_api_key(session, agency.id, name="admin", scopes=["admin"])
        calls_row, calls_key = create_api_key(session, agency.id, name="calls", scopes=["calls:write"])
        return agency.id, admin_row.id, admin_key, calls_row.id, calls_key


def test_api_key_authenticates_with_its_scopes(client, keyed_agency):
    agency_id, _, admin_key, _, calls_key = keyed_agency
    response = _me(client, {"X-API-Key": calls_key})
    assert response.status_code == 200
    assert response.json == {"agency_id": str(agency_id), "kind": "api_key", "scopes": ["calls:write"]}


@pytest.mark.parametrize("key", ["nope", "tk_" + "A" * 43, "tk_", "x" * 500])
def test_unknown_api_key_is_401(client, keyed_agency, key):
    assert _me(client, {"X-API-Key": key}).status_code == 401


def test_revoked_api_key_is_401(client, db, keyed_agency):
    agency_id, admin_id, admin_key, _, _ = keyed_agency
    assert _me(client, {"X-API-Key": admin_key}).status_code == 200
    with db.session() as session:
        revoke_api_key(session, agency_id, admin_id)
    response = _me(client, {"X-API-Key": admin_key})
    assert response.status_code == 401
    assert response.json["error"] == "Invalid or revoked API key"


def test_api_key_without_the_scope_is_403(client, keyed_agency):
    _, _, admin_key, _, calls_key = keyed_agency
    assert client.get("/api/v1/agents", headers={"X-API-Key": calls_key}).status_code == 403
    assert client.get("/api/v1/agents", headers={"X-API-Key": admin_key}).status_code == 200


def test_api_keys_are_stored_hashed(db, keyed_agency):
    from sqlalchemy import text
    _, _, admin_key, _, calls_key = keyed_agency
    with db.engine.connect() as conn:
        dump = json.dumps([list(map(str, row)) for row in conn.execute(text("SELECT * FROM api_keys")).all()])
    assert admin_key not in dump and calls_key not in dump
    assert admin_key[12:] not in dump


def test_member_user_cannot_use_admin_api(client, make_tenant):
    tenant = make_tenant()
    response = client.get("/api/v1/agents", headers=tenant.member())
    assert response.status_code == 403
    assert response.json["code"] == "insufficient_scope"
    assert client.get("/api/v1/agents", headers=tenant.admin()).status_code == 200


def test_principal_ids_are_uuids(client, make_tenant):
    tenant = make_tenant()
    assert uuid.UUID(_me(client, tenant.admin()).json["agency_id"]) == tenant.agency_id
