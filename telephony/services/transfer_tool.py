"""The per-call `transferCall` tool given to the agent of every carrier call whose agent
has transfer targets (see services/transfers.py for what invoking it does).

The tool is an Ultravox temporary HTTP tool:

- the model fills two dynamic parameters: ``destination``, limited by its JSON schema to
  the agent's target names (an enum), and ``reason``, a short summary for the person;
- Ultravox adds the Ultravox call id (automatic parameter ``KNOWN_PARAM_CALL_ID``);
- a static header carries the call's token, and our call id is in the URL.

The token is an HMAC of our call id under a key derived from the credential keys
(``CredentialStore.mac``), not a random value stored hashed: it needs no column and no
write on the hot inbound path (the tool is attached before the call row exists on the
create-first path), it is valid for that one call only (another call's token, or a
guessed one, is refused), nothing in the database can be stolen to forge it, and key
rotation keeps the tokens of live calls valid until the old key is dropped. It is a
secret: never logged, only ever sent to Ultravox inside the tool definition.
"""
from __future__ import annotations

import uuid
from typing import Any

from ..carriers.registry import CARRIERS
from ..credentials import CredentialStore

TOOL_NAME = "transferCall"
TOKEN_HEADER = "X-Transfer-Token"
TOKEN_PURPOSE = "transfer-tool"
TOOL_PATH = "/tools/transfer/{call_id}"
# Ultravox freezes the conversation while a tool runs; the endpoint answers long before.
TOOL_TIMEOUT = "8s"
CARRIER_MEDIA = frozenset(carrier.medium_name for carrier in CARRIERS)


def call_token(store: CredentialStore, call_id: uuid.UUID) -> str:
    return store.mac(TOKEN_PURPOSE, str(call_id))


def token_valid(store: CredentialStore, call_id: uuid.UUID, token: str | None) -> bool:
    return bool(token) and store.mac_matches(TOKEN_PURPOSE, str(call_id), token or "")


def is_carrier_medium(medium: dict[str, Any]) -> bool:
    return len(medium) == 1 and next(iter(medium)) in CARRIER_MEDIA


def transfer_tool(*, call_id: uuid.UUID, targets: list[dict[str, Any]], public_base_url: str,
                  store: CredentialStore) -> dict[str, Any]:
    """The SelectedTool (a temporaryTool) for one call."""
    names = [target["name"] for target in targets]
    choices = "\n".join(f"- {target['name']}: {target['description']}" for target in targets)
    return {"temporaryTool": {
        "modelToolName": TOOL_NAME,
        "description": ("Transfer the caller to a person. Before calling this, tell the caller you are "
                        "transferring them. Choose the destination whose description fits:\n" + choices),
        "dynamicParameters": [
            {"name": "destination", "location": "PARAMETER_LOCATION_BODY", "required": True,
             "schema": {"type": "string", "enum": names, "description": "Which person or team to transfer to."}},
            {"name": "reason", "location": "PARAMETER_LOCATION_BODY", "required": True,
             "schema": {"type": "string", "maxLength": 500,
                        "description": "One or two sentences for the person taking the call: who is calling "
                                       "and what they need."}},
        ],
        "staticParameters": [
            {"name": TOKEN_HEADER, "location": "PARAMETER_LOCATION_HEADER", "value": call_token(store, call_id)},
        ],
        "automaticParameters": [
            {"name": "ultravox_call_id", "location": "PARAMETER_LOCATION_BODY", "knownValue": "KNOWN_PARAM_CALL_ID"},
        ],
        "http": {"baseUrlPattern": public_base_url.rstrip("/") + TOOL_PATH.format(call_id=call_id),
                 "httpMethod": "POST"},
        "timeout": TOOL_TIMEOUT,
    }}
