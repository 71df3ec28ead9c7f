"""The management blueprint, and the field types and answers its areas share.

One blueprint for every area, so each route keeps its endpoint name ("management.<view>")
and with it its operationId in /openapi.json.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from flask import Blueprint
from pydantic import Field

from ...carriers.registry import CARRIERS

bp = Blueprint("management", __name__, url_prefix="/api/v1")

UltravoxId = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")
# What a phone number's carrier column can hold (tests/test_carrier_registry.py checks the
# models' Carrier enum agrees).
if TYPE_CHECKING:  # pragma: no cover
    CarrierName = str
else:
    CarrierName = Literal[tuple(carrier.name for carrier in CARRIERS)]

NOT_FOUND = (None, "Not found, or another agency's.")
