"""Accessors for the per-app singletons created by create_app()."""
from __future__ import annotations

from typing import TYPE_CHECKING

from flask import current_app

if TYPE_CHECKING:  # pragma: no cover
    from .config import Config
    from .credentials import CredentialStore


def get_config() -> "Config":
    return current_app.extensions["telephony.config"]


def get_credentials() -> "CredentialStore":
    return current_app.extensions["telephony.credentials"]
