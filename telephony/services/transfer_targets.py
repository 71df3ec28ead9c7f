"""An agent's transfer targets: the only places its calls may be handed to.

A target is a named destination the model chooses by name (never by number: the tool
it gets lists the names, and the service dials only what is stored here, so the model
can never be talked into dialling an arbitrary number). Each target:

- ``name``: 1-40 of a-z, 0-9, ``_`` and ``-``, unique per agent (the model sees it);
- ``destination``: an E.164 number, or a ``sip:`` URI (all three carriers dial SIP);
- ``description``: when to choose it, shown to the model (1-500 characters);
- ``mode``: ``cold`` (the caller is put through) or ``warm`` (the person first hears
  the agent's summary and accepts);
- ``ring_timeout_seconds``: 5-120, default 25;
- ``caller_id``: E.164 presented to the person, or None (the carrier's default: the
  caller's number where the carrier allows it, else the called number);
- ``accept_digit``: warm only: the key the person presses to accept ("1" by default;
  None bridges as soon as they answer and hear the whisper).
"""
from __future__ import annotations

import re
from typing import Any

import phonenumbers

from ..errors import InvalidInput

MODES = ("cold", "warm")
MAX_TARGETS = 20
NAME_RE = re.compile(r"^[a-z0-9_-]{1,40}$")
# sip:user@host[:port][;params]: no spaces, quotes or angle brackets, which would break
# out of the XML or the header the carrier builds from it.
SIP_RE = re.compile(r"^sips?:[A-Za-z0-9._~%!$&'()*+,;=:-]+@[A-Za-z0-9.-]+(:[0-9]{1,5})?(;[A-Za-z0-9=._-]+)*$")
DEFAULT_RING_TIMEOUT = 25
MIN_RING_TIMEOUT, MAX_RING_TIMEOUT = 5, 120
ACCEPT_DIGITS = tuple("0123456789*#")
FIELDS = ("name", "destination", "description", "mode", "ring_timeout_seconds", "caller_id", "accept_digit")


def validate_targets(raw: Any, *, field: str = "transfer_targets") -> list[dict[str, Any]]:
    """The targets as stored (normalised), or InvalidInput naming the first bad field."""
    if not isinstance(raw, list):
        raise InvalidInput(f"{field} must be a list", field=field)
    if len(raw) > MAX_TARGETS:
        raise InvalidInput(f"{field} may hold at most {MAX_TARGETS} targets", field=field)
    targets = [validate_target(item, field=f"{field}.{index}") for index, item in enumerate(raw)]
    names = [target["name"] for target in targets]
    duplicate = next((name for name in names if names.count(name) > 1), None)
    if duplicate is not None:
        raise InvalidInput(f"{field}: the name {duplicate!r} is used twice", field=field)
    return targets


def validate_target(raw: Any, *, field: str) -> dict[str, Any]:
    if not isinstance(raw, dict):
        raise InvalidInput(f"{field} must be an object", field=field)
    unknown = sorted(set(raw) - set(FIELDS))
    if unknown:
        raise InvalidInput(f"{field}.{unknown[0]}: unknown field", field=f"{field}.{unknown[0]}")
    name = raw.get("name")
    if not isinstance(name, str) or not NAME_RE.match(name):
        raise InvalidInput(f"{field}.name must be 1-40 of a-z, 0-9, _ and -", field=f"{field}.name")
    destination = raw.get("destination")
    if not isinstance(destination, str) or not destination.strip():
        raise InvalidInput(f"{field}.destination must be an E.164 number or a sip: URI", field=f"{field}.destination")
    destination = destination.strip()
    if destination.lower().startswith(("sip:", "sips:")):
        if len(destination) > 255 or not SIP_RE.match(destination):
            raise InvalidInput(f"{field}.destination is not a valid sip: URI", field=f"{field}.destination")
    else:
        destination = normalize_e164(destination, field=f"{field}.destination")
    description = raw.get("description")
    if not isinstance(description, str) or not 1 <= len(description.strip()) <= 500:
        raise InvalidInput(f"{field}.description must be 1-500 characters", field=f"{field}.description")
    mode = raw.get("mode", "cold")
    if mode not in MODES:
        raise InvalidInput(f"{field}.mode must be one of: {', '.join(MODES)}", field=f"{field}.mode")
    timeout = raw.get("ring_timeout_seconds", DEFAULT_RING_TIMEOUT)
    if not isinstance(timeout, int) or isinstance(timeout, bool) or not MIN_RING_TIMEOUT <= timeout <= MAX_RING_TIMEOUT:
        raise InvalidInput(f"{field}.ring_timeout_seconds must be a whole number from {MIN_RING_TIMEOUT} to "
                           f"{MAX_RING_TIMEOUT}", field=f"{field}.ring_timeout_seconds")
    caller_id = raw.get("caller_id")
    if caller_id is not None:
        if not isinstance(caller_id, str):
            raise InvalidInput(f"{field}.caller_id must be an E.164 number", field=f"{field}.caller_id")
        caller_id = normalize_e164(caller_id, field=f"{field}.caller_id")
    accept_digit = raw.get("accept_digit", "1")
    if accept_digit is not None and accept_digit not in ACCEPT_DIGITS:
        raise InvalidInput(f"{field}.accept_digit must be one key: 0-9, * or #", field=f"{field}.accept_digit")
    return {"name": name, "destination": destination, "description": description.strip(), "mode": mode,
            "ring_timeout_seconds": timeout, "caller_id": caller_id, "accept_digit": accept_digit}


def normalize_e164(value: str, *, field: str) -> str:
    """'+1 (415) 555-0100' -> '+14155550100' (the rule of services/phone_numbers.py,
    which cannot be imported here: it depends on the agents module, which depends on this)."""
    raw = value.strip()
    try:
        parsed = phonenumbers.parse(raw, None) if raw.startswith("+") else None
    except phonenumbers.NumberParseException:
        parsed = None
    if parsed is None or not phonenumbers.is_possible_number(parsed):
        raise InvalidInput(f"{field} must be a phone number in E.164 format, e.g. +14155550100", field=field)
    return phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.E164)


def find_target(agent_targets: Any, name: Any) -> dict[str, Any] | None:
    """The stored target called ``name``, or None: the only way a destination is chosen."""
    if not isinstance(name, str) or not isinstance(agent_targets, list):
        return None
    return next((t for t in agent_targets if isinstance(t, dict) and t.get("name") == name), None)
