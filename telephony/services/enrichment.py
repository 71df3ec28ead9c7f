"""After a call ends: fetch its transcript, summaries and recording state (worker job `call.enrich`).

Ultravox's advice is to fetch messages and the recording once call.ended
arrives (the messages are immutable by then). The recording can lag behind
the webhook, so a 404 is checked again on a backoff (RECORDING_RECHECK_DELAYS)
before has_recording is left False. Rate limits (429/503) wait for the
server's Retry-After without using up the job's attempts; other upstream
errors raise and take the worker's own backoff.
"""
from __future__ import annotations

import logging
import uuid
from datetime import timedelta
from typing import Any

from sqlalchemy.orm import Session

from ..jobs import JobContext, RetryLater, enqueue
from ..models import Call, utcnow
from ..ultravox import UltravoxClient
from ..ultravox_errors import UltravoxNotFound, UltravoxRateLimited
from .calls import ultravox_client_for
from .idempotency import first_time

log = logging.getLogger(__name__)

ENRICH_JOB = "call.enrich"
# Seconds before the 2nd, 3rd, ... recording check after a 404: 5 checks over about 8.5 minutes.
RECORDING_RECHECK_DELAYS = (30, 60, 120, 300)
DEFAULT_RETRY_AFTER = 30.0  # a 429/503 without Retry-After


def schedule_enrichment(session: Session, call: Call) -> None:
    """Queue the enrichment of an ended call, once per call."""
    if first_time(session, "ultravox", f"{call.ultravox_call_id}:enrich", call.agency_id):
        enqueue(session, ENRICH_JOB, {"call_id": str(call.id)}, agency_id=call.agency_id)


def enrich_call(context: JobContext, payload: dict[str, Any]) -> None:
    """The ENRICH_JOB handler: store the transcript, summaries and recording state of an ended call."""
    db = context.db
    call_id = uuid.UUID(payload["call_id"])
    check = int(payload.get("recording_check", 1))
    with db.session() as session:
        call = session.get(Call, call_id)
        if call is None or not call.ultravox_call_id:
            return
        client = ultravox_client_for(session, call.agency_id, credentials=context.credentials,
                                     config=context.config)
        agency_id, ultravox_call_id, need_transcript = call.agency_id, call.ultravox_call_id, call.transcript is None

    # Upstream calls with no database connection held.
    try:
        transcript = client.list_messages(ultravox_call_id) if need_transcript else None
        details = client.get_call(ultravox_call_id)
        has_recording = _recording_available(client, ultravox_call_id)
    except UltravoxRateLimited as exc:
        delay = exc.retry_after if exc.retry_after is not None else DEFAULT_RETRY_AFTER
        raise RetryLater(delay, f"Ultravox rate limited ({exc.status})") from None

    # A call recorded with recordingEnabled=false never gets a recording: do not wait for it.
    recheck = (not has_recording and details.get("recordingEnabled") is not False
               and check <= len(RECORDING_RECHECK_DELAYS))
    with db.session() as session:
        call = session.get(Call, call_id, with_for_update=True)
        if call is None:
            return
        if transcript is not None:
            call.transcript = transcript
        for attribute, key in (("summary", "summary"), ("short_summary", "shortSummary")):
            if isinstance(details.get(key), str):
                setattr(call, attribute, details[key])
        if has_recording:
            call.has_recording = True
        call.enriched_at = utcnow()
        if recheck:
            delay = RECORDING_RECHECK_DELAYS[check - 1]
            enqueue(session, ENRICH_JOB, {"call_id": str(call_id), "recording_check": check + 1},
                    agency_id=agency_id, run_at=utcnow() + timedelta(seconds=delay))
    log.info("call %s enriched; recording %s", call_id,
             "available" if has_recording else ("not there yet, checking again" if recheck else "none"))


def _recording_available(client: UltravoxClient, ultravox_call_id: str) -> bool:
    """3xx or 200 from GET /recording means there is one; 404 means not (yet)."""
    try:
        recording = client.get_recording(ultravox_call_id)
    except UltravoxNotFound:
        return False
    if recording.response is not None:
        recording.response.close()  # only availability matters; never download the audio here
    return True
