"""The management CLI sets up a whole agency; secrets never come from argv."""
import json
import logging

import pytest
from sqlalchemy import text

from .conftest import JWT_SECRET

ULTRAVOX_KEY = "Zk9Ht7Lm.wX7pN9fM3kLj6tRq2bGhA8yE5cZvD4sT"
TWILIO_TOKEN = "0123456789abcdef0123456789abcdef"


def _run(app, args, input=None, env=None):
    result = app.test_cli_runner().invoke(args=args, input=input, env=env, catch_exceptions=False)
    return result


def _json(result):
    return json.loads(result.output.strip().splitlines()[-1])


def test_full_agency_setup(app, client, db, caplog):
    caplog.set_level(logging.DEBUG)
    agency = _json(_run(app, ["agency", "create", "Acme Dental", "--credits", "600"]))
    assert agency["credit_balance"] == 600
    user = _json(_run(app, ["user", "add", "supabase-user-1", "--agency", agency["id"], "--role", "admin"]))
    assert user["agency_id"] == agency["id"]
    agent = _json(_run(app, ["agent", "add", "--agency", agency["id"], "--name", "Reception",
                             "--ultravox-agent-id", "3c90c3cc-0d44-4b50-8888-8dd25736052a"]))
    number = _json(_run(app, ["number", "add", "+1 415 555 0100", "--agency", agency["id"], "--carrier", "twilio",
                              "--agent", agent["id"], "--fallback", "+14155550199",
                              "--no-carrier-setup"]))
    assert number["e164"] == "+14155550100"

    stored = _run(app, ["credentials", "set", "ultravox", "--agency", agency["id"]],
                  input=f"api_key={ULTRAVOX_KEY}\n# comment\nwebhook_secret=whsec-0123456789abcdef\n")
    assert ULTRAVOX_KEY not in stored.output
    assert _json(stored)["ultravox"]["api_key"] == {"set": True, "last4": ULTRAVOX_KEY[-4:]}
    from_env = _run(app, ["credentials", "set", "twilio", "--agency", agency["id"], "--from-env"],
                    env={"TWILIO_ACCOUNT_SID": "AC" + "f" * 32, "TWILIO_AUTH_TOKEN": TWILIO_TOKEN})
    assert TWILIO_TOKEN not in from_env.output
    assert _json(from_env)["twilio"]["auth_token"]["set"] is True

    key = _json(_run(app, ["apikey", "create", "--agency", agency["id"], "--name", "server", "--scope", "admin"]))
    assert key["key"].startswith("tk_")
    token = _json(_run(app, ["token", "mint", "supabase-user-1", "--ttl", "600"]))["token"]

    # Both credentials work against the API and see the same agency's data.
    by_token = client.get("/api/v1/phone-numbers", headers={"Authorization": f"Bearer {token}"})
    by_key = client.get("/api/v1/phone-numbers", headers={"X-API-Key": key["key"]})
    assert by_token.status_code == by_key.status_code == 200
    assert by_token.json == by_key.json and by_key.json["phone_numbers"][0]["e164"] == "+14155550100"

    listed = _run(app, ["apikey", "list", "--agency", agency["id"]]).output
    assert key["key"] not in listed
    _run(app, ["apikey", "revoke", key["id"], "--agency", agency["id"]])
    assert client.get("/api/v1/me", headers={"X-API-Key": key["key"]}).status_code == 401

    assert ULTRAVOX_KEY not in caplog.text and TWILIO_TOKEN not in caplog.text
    with db.engine.connect() as conn:
        dump = json.dumps([list(map(str, r)) for r in conn.execute(text("SELECT * FROM agency_credentials"))])
    assert ULTRAVOX_KEY not in dump and TWILIO_TOKEN not in dump


def test_credentials_have_no_argv_option(app):
    result = app.test_cli_runner().invoke(args=["credentials", "set", "twilio", "--agency", "x", "--auth-token", "t"])
    assert result.exit_code != 0 and "No such option" in result.output


def test_cli_errors_are_one_line_messages(app):
    result = app.test_cli_runner().invoke(args=["number", "add", "555", "--agency",
                                                "00000000-0000-0000-0000-000000000000", "--carrier", "twilio"])
    assert result.exit_code == 1
    assert "E.164" in result.output and "Traceback" not in result.output
    bad_uuid = app.test_cli_runner().invoke(args=["agent", "add", "--agency", "nope", "--name", "x",
                                                  "--ultravox-agent-id", "y"])
    assert bad_uuid.exit_code == 1 and "must be a UUID" in bad_uuid.output
    agency_id = _json(_run(app, ["agency", "create", "x"]))["id"]
    unknown_field = _run(app, ["credentials", "set", "plivo", "--agency", agency_id], input="password=hunter22\n")
    assert unknown_field.exit_code == 1 and "auth_id" in unknown_field.output and "hunter22" not in unknown_field.output


def test_every_app_shares_the_commands_and_wraps_their_errors_once(config, tmp_path):
    """The command groups are module-level: an app built after many others (a test run
    builds hundreds) must not stack another error wrapper on each command."""
    from telephony import create_app
    for n in range(3):
        create_app(config, instance_path=str(tmp_path / f"instance-{n}")).extensions["telephony.db"].dispose()
    from telephony.cli import agent_cli
    from telephony.cli.common import domain_errors_as_click
    wrapper_code = domain_errors_as_click(lambda: None).__code__
    for command in agent_cli.commands.values():
        layers, function = 0, command.callback
        while function is not None:
            layers += getattr(function, "__code__", None) is wrapper_code
            function = getattr(function, "__wrapped__", None)
        assert layers == 1, (command.name, layers)


def test_rotate_command_re_encrypts(app, db):
    agency = _json(_run(app, ["agency", "create", "R"]))
    _run(app, ["credentials", "set", "plivo", "--agency", agency["id"]], input="auth_id=MAXXXXXXXXXXXXXXXXXX\n")
    with db.engine.connect() as conn:
        before = conn.execute(text("SELECT ciphertext FROM agency_credentials")).scalar()
    assert _json(_run(app, ["credentials", "rotate"])) == {"re_encrypted": 1, "event_endpoint_secrets": 0}
    with db.engine.connect() as conn:
        after = conn.execute(text("SELECT ciphertext FROM agency_credentials")).scalar()
    assert before != after


def test_token_mint_needs_the_hs256_secret(app, config, tmp_path):
    from telephony import create_app
    no_secret = create_app(config.with_overrides(jwt_secret=None), instance_path=str(tmp_path))
    result = no_secret.test_cli_runner().invoke(args=["token", "mint", "someone"])
    assert result.exit_code == 1 and "SUPABASE_JWT_SECRET" in result.output
    no_secret.extensions["telephony.db"].dispose()


def test_minted_token_is_accepted_only_with_the_right_secret(app):
    import jwt
    minted = _json(_run(app, ["token", "mint", "abc"]))
    assert minted["sub"] == "abc" and minted["expires_in"] == 3600
    token = minted["token"]
    claims = jwt.decode(token, JWT_SECRET, algorithms=["HS256"], audience="authenticated")
    assert claims["sub"] == "abc"
    with pytest.raises(jwt.InvalidSignatureError):
        jwt.decode(token, "x" * 40, algorithms=["HS256"], audience="authenticated")
