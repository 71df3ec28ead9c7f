"""`flask token`: development JWTs, signed with SUPABASE_JWT_SECRET."""
from __future__ import annotations

import click
from flask.cli import AppGroup

from ..config import get_config
from .common import emit, fail

token_cli = AppGroup("token", help="Development JWTs.")


@token_cli.command("mint")
@click.argument("auth_subject")
@click.option("--ttl", type=int, default=3600, show_default=True, help="Lifetime in seconds.")
def token_mint(auth_subject: str, ttl: int) -> None:
    """Print {"token": ...}: an HS256 access token for a user (needs SUPABASE_JWT_SECRET)."""
    from ..auth import mint_token
    config = get_config()
    if not config.jwt_secret:
        fail("SUPABASE_JWT_SECRET is not set; dev tokens are signed with it")
    emit({"token": mint_token(config.jwt_secret, auth_subject, audience=config.jwt_audience, ttl_seconds=ttl),
          "sub": auth_subject, "expires_in": ttl})
