"""`flask credentials rotate` with a key list that cannot open the stored secrets is a
one-line error that changes nothing, and the documented order (new key first, then the
current one) rotates."""
import json

from cryptography.fernet import Fernet
from sqlalchemy import text

from telephony import create_app


def _ciphertexts(db) -> list[bytes]:
    with db.engine.connect() as conn:
        return list(conn.execute(text("SELECT ciphertext FROM agency_credentials ORDER BY id")).scalars())


def test_rotating_without_the_current_key_is_a_one_line_error_and_changes_nothing(app, db, config, tmp_path):
    runner = app.test_cli_runner()
    agency = json.loads(runner.invoke(args=["agency", "create", "Rotating"]).output.splitlines()[-1])
    runner.invoke(args=["credentials", "set", "plivo", "--agency", agency["id"]],
                  input="auth_id=MAXXXXXXXXXXXXXXXXXX\n")
    before = _ciphertexts(db)
    new_key = Fernet.generate_key().decode()

    only_new = create_app(config.with_overrides(credentials_keys=(new_key,)), instance_path=str(tmp_path / "a"))
    result = only_new.test_cli_runner().invoke(args=["credentials", "rotate"])
    assert result.exit_code == 1
    assert "Traceback" not in result.output and len(result.output.strip().splitlines()) == 1
    assert "cannot be decrypted with any configured key; nothing was changed" in result.output
    assert "CREDENTIALS_KEYS must list the new key first" in result.output
    assert _ciphertexts(db) == before

    both = create_app(config.with_overrides(credentials_keys=(new_key, *config.credentials_keys)),
                      instance_path=str(tmp_path / "b"))
    rotated = both.test_cli_runner().invoke(args=["credentials", "rotate"])
    assert rotated.exit_code == 0 and json.loads(rotated.output)["re_encrypted"] == 1
    shown = only_new.test_cli_runner().invoke(args=["credentials", "show", "--agency", agency["id"]])
    assert shown.exit_code == 0 and json.loads(shown.output)["plivo"]["auth_id"]["set"] is True
    for extra in (only_new, both):
        extra.extensions["telephony.db"].dispose()
