"""Agency management API (/api/v1): agents, phone numbers, credentials, API keys, capacity.

Admin only (a dashboard user with the admin role, or an API key with the
`admin` scope), apart from /me. Every call is scoped to the caller's agency; another
agency's resource is a 404, the same as a missing one.

One blueprint (``bp``, blueprint.py); each area module adds its routes to it when imported
here:

  access         /me, and API keys
  agents         agent mappings
  phone_numbers  phone numbers, set up and checked at the carrier
  credentials    write-only secrets, one route per provider of the credential store
  capacity       the agency's Ultravox concurrency limit and inbound hold
"""
from __future__ import annotations

from . import access, agents, capacity, credentials, phone_numbers
from .blueprint import NOT_FOUND, CarrierName, UltravoxId, bp

__all__ = ["bp", "NOT_FOUND", "CarrierName", "UltravoxId",
           "access", "agents", "capacity", "credentials", "phone_numbers"]
