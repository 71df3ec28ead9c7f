"""The agency's call capacity: its Ultravox concurrency limit, slots kept for inbound, how
long an inbound caller is held, and the live calls the limit counts."""
from __future__ import annotations

from pydantic import Field

from ...auth import current_principal, require_auth
from ...db import get_session
from ...services import capacity as capacity_service
from ..schema import RequestModel, ResponseModel, document, parse_body, render
from .blueprint import bp


class CapacityPatch(RequestModel):
    max_concurrent_calls: int | None = Field(
        default=None, ge=1, le=capacity_service.MAX_CONCURRENT_CALLS_LIMIT,
        description="The concurrency limit of the agency's Ultravox plan (live calls of every kind at once); "
                    "null: unlimited.")
    reserved_inbound: int | None = Field(
        default=None, ge=0, le=capacity_service.MAX_CONCURRENT_CALLS_LIMIT,
        description="Slots campaigns may never take, kept for inbound callers (at most max_concurrent_calls).")
    inbound_wait_seconds: int | None = Field(
        default=None, ge=0, le=capacity_service.MAX_INBOUND_WAIT_SECONDS,
        description="How long an inbound caller who finds every slot taken is kept on hold before the "
                    "number's fallback; 0: no hold.")


class CapacityOut(ResponseModel):
    max_concurrent_calls: int | None
    reserved_inbound: int
    inbound_wait_seconds: int
    live_calls: int = Field(description="The agency's calls holding an Ultravox call now (what the limit counts).")


def _capacity_out(settings: capacity_service.CapacitySettings, live: int) -> dict:
    return {"max_concurrent_calls": settings.max_concurrent_calls, "reserved_inbound": settings.reserved_inbound,
            "inbound_wait_seconds": settings.inbound_wait_seconds, "live_calls": live}


@bp.get("/capacity")
@require_auth(scope="admin")
@document(summary="The agency's call capacity: Ultravox concurrency limit, slots reserved for inbound, "
                  "inbound hold time, live calls", tags=["capacity"], responses={200: (CapacityOut, "Capacity")})
def get_capacity():
    session = get_session()
    agency_id = current_principal().agency_id
    settings = capacity_service.get_capacity(session, agency_id)
    return render(CapacityOut, _capacity_out(settings, capacity_service.live_calls(session, agency_id)))


@bp.patch("/capacity")
@require_auth(scope="admin")
@document(summary="Change the agency's call capacity (omitted fields are kept; max_concurrent_calls null: "
                  "unlimited)", tags=["capacity"], request_model=CapacityPatch,
          responses={200: (CapacityOut, "Updated"),
                     400: (None, "reserved_inbound above max_concurrent_calls, or without one")})
def update_capacity():
    body = parse_body(CapacityPatch)
    session = get_session()
    agency_id = current_principal().agency_id
    settings = capacity_service.set_capacity(session, agency_id, **body.model_dump(exclude_unset=True))
    session.commit()
    return render(CapacityOut, _capacity_out(settings, capacity_service.live_calls(session, agency_id)))
