"""Telephony backbone: connects agencies' Ultravox agents to phones and browsers."""
from __future__ import annotations

from typing import TYPE_CHECKING

import click
from flask import Flask
from flask.cli import AppGroup

from .config import Config

if TYPE_CHECKING:  # pragma: no cover
    from .carriers.registry import CarrierRegistry


def create_app(config: Config | None = None, *, instance_path: str | None = None,
               carriers: "CarrierRegistry | None" = None) -> Flask:
    """The application factory. Without a Config, one is read from the environment;
    without a carrier registry, one of every carrier is built from the Config."""
    from .api import (
        calls,
        campaigns,
        cors,
        do_not_call,
        docs,
        errors,
        event_endpoints,
        hooks,
        management,
        ops,
        outbound,
        public_keys,
        transfers,
        ultravox_webhooks,
        web_calls,
        webhooks,
    )
    from .api.body_limit import ChunkedBodyLimit
    from .auth import JwtVerifier
    from .carriers.registry import EXTENSION as CARRIERS_EXTENSION
    from .carriers.registry import CarrierRegistry
    from .credentials import CredentialStore, provider_fields
    from .db import Database, close_session
    from .logging import configure_logging

    # No static folder: the app has no static files (the /docs explorer serves its own).
    app = Flask(__name__, instance_path=instance_path, instance_relative_config=True, static_folder=None)
    app.cli = ManagementCommands(app.name)
    if config is None:
        configure_logging()  # so warnings while reading the configuration are JSON too
        config = Config.from_env(instance_path=app.instance_path)
    configure_logging(config.log_level)

    # Bodies above the limit are refused with 413 before any view runs.
    app.config["MAX_CONTENT_LENGTH"] = config.max_body_bytes
    # app.json is Flask's DefaultJSONProvider, which has sort_keys; Flask types it as the base JSONProvider.
    app.json.sort_keys = False  # type: ignore[attr-defined]
    app.extensions["telephony.config"] = config
    app.extensions["telephony.db"] = Database(config.database_url, timeouts=config.database_timeouts,
                                              pool_size=config.db_pool_size, max_overflow=config.db_max_overflow,
                                              prepared_statements=config.db_prepared_statements,
                                              write_behind_seconds=config.write_behind_ms / 1000)
    # Before the blueprints: the webhook routes and the credential API are derived from it.
    carriers = carriers if carriers is not None else CarrierRegistry.from_config(config)
    app.extensions[CARRIERS_EXTENSION] = carriers
    app.extensions["telephony.credentials"] = CredentialStore(config.credentials_keys,
                                                              providers=provider_fields(carriers))
    app.extensions["telephony.jwt"] = JwtVerifier(secret=config.jwt_secret, jwks_url=config.jwks_url,
                                                  audience=config.jwt_audience, timeout=config.upstream_timeout)

    hooks.register(app)
    errors.register(app)
    app.teardown_appcontext(close_session)
    app.register_blueprint(ops.bp)
    app.register_blueprint(docs.bp)
    app.register_blueprint(management.bp)
    app.register_blueprint(public_keys.bp)
    app.register_blueprint(web_calls.bp)
    app.register_blueprint(webhooks.bp)
    app.register_blueprint(ultravox_webhooks.bp)
    app.register_blueprint(calls.bp)
    app.register_blueprint(event_endpoints.bp)
    app.register_blueprint(outbound.bp)
    app.register_blueprint(campaigns.bp)
    app.register_blueprint(do_not_call.bp)
    app.register_blueprint(transfers.bp)
    cors.register(app, config.cors_origins)
    # Chunked bodies get the same limits as any other (the largest route limit here,
    # then the route's own), and are refused whole above it.
    app.wsgi_app = ChunkedBodyLimit(app.wsgi_app,  # type: ignore[method-assign]
                                    max(config.max_body_bytes, ultravox_webhooks.MAX_WEBHOOK_BODY_BYTES),
                                    route_limits=[(campaigns.CONTACT_IMPORT_PATH, config.contact_import_max_bytes)])
    return app


class ManagementCommands(AppGroup):
    """An app's `flask` commands (`flask --app wsgi ...`, `telephony ...`): every group of
    the telephony/cli package, added the first time the group is listed or asked for a
    command. A web worker never runs a command, and so never imports telephony/cli and its
    command definitions."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self._loaded = False

    def _load(self) -> None:
        if not self._loaded:
            self._loaded = True
            from . import cli
            cli.register(self)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        self._load()
        return super().get_command(ctx, cmd_name)

    def list_commands(self, ctx: click.Context) -> list[str]:
        self._load()
        return super().list_commands(ctx)
