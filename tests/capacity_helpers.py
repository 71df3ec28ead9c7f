"""The agency's capacity in tests: its settings, and other calls holding (or freeing) a slot.

Shared by test_capacity.py and test_inbound_hold.py.
"""
from __future__ import annotations

import uuid
from typing import Any

from telephony.models import Call, CallDirection, CallSource
from telephony.services import capacity


def set_capacity(app: Any, agency_id: Any, **settings: Any) -> None:
    with app.extensions["telephony.db"].session() as session:
        capacity.set_capacity(session, agency_id, **settings)


def live_call(app: Any, agency_id: Any, *, source: CallSource = CallSource.webrtc,
              direction: CallDirection = CallDirection.inbound, status: str = "in-progress",
              ultravox_call_id: str | None = "uv") -> uuid.UUID:
    """Another call of the agency (web, inbound...), holding an Ultravox call unless
    `ultravox_call_id` is None: what the agency's capacity counts."""
    with app.extensions["telephony.db"].session() as session:
        call = Call(agency_id=agency_id, source=source, direction=direction, status=status,
                    ultravox_call_id=f"{ultravox_call_id}-{uuid.uuid4()}" if ultravox_call_id else None,
                    carrier_call_id=f"CA{uuid.uuid4().hex}")
        session.add(call)
        session.flush()
        return call.id


def end_call(app: Any, call_id: uuid.UUID) -> None:
    with app.extensions["telephony.db"].session() as session:
        session.get(Call, call_id).status = "completed"
