"""The vocabulary of answering-machine detection: policies, what we do, outcomes.

Who answered (``answered_by``) is one of human, machine, fax or unknown
(``carriers.base.ANSWERED_BY``). What a call does when a machine answers is its
``on_machine`` policy, fixed at dial time (from the campaign, or the single call's
request); what we then did is its ``machine_action``, recorded before the carrier is
told; and a campaign attempt's outcome follows from it (``attempt_outcome``).
"""
from __future__ import annotations

from .carriers.base import FAX, HUMAN, MACHINE, UNKNOWN

# on_machine policies
HANGUP = "hangup"  # end the call at once: outcome "voicemail"
LEAVE_MESSAGE = "leave_message"  # wait for the beep, play the message, hang up: "voicemail_left"
CONTINUE = "continue"  # let the agent talk: the call's own outcome
POLICIES = (HANGUP, LEAVE_MESSAGE, CONTINUE)
CAMPAIGN_DEFAULT = HANGUP
SINGLE_CALL_DEFAULT = CONTINUE  # a single call behaves as before unless asked otherwise

# machine_action: what we did about the verdict
ACTION_HANGUP = "hangup"
ACTION_WAIT_BEEP = "wait_beep"  # a machine, its greeting still playing (Telnyx reports its end apart)
ACTION_MESSAGE = "message"  # the message is being left
ACTION_CONTINUE = "continue"

# Outcomes of an attempt beyond the call statuses (dial_attempts.outcome, contacts' last_outcome)
VOICEMAIL = "voicemail"  # a machine answered and was hung up on: retried by the voicemail rule
VOICEMAIL_LEFT = "voicemail_left"  # the message was left: the contact is done
FAX_OUTCOME = "fax"  # a fax machine: never retried

__all__ = ["FAX", "HUMAN", "MACHINE", "UNKNOWN"]


def decide(on_machine: str | None, answered_by: str, *, has_message: bool, greeting_follows: bool) -> str | None:
    """What to do about a verdict: a machine_action, or None (a person: nothing to do).

    A fax is always hung up on (nobody will ever talk); unknown counts as a person, since
    the agent is already talking. A machine gets its call's policy; leaving a message
    without one to leave hangs up instead."""
    if answered_by == FAX:
        return ACTION_HANGUP
    if answered_by != MACHINE:
        return None
    policy = on_machine or SINGLE_CALL_DEFAULT
    if policy == CONTINUE:
        return ACTION_CONTINUE
    if policy == LEAVE_MESSAGE and has_message:
        return ACTION_WAIT_BEEP if greeting_follows else ACTION_MESSAGE
    return ACTION_HANGUP


def attempt_outcome(status: str, answered_by: str | None, machine_action: str | None) -> str:
    """The outcome of a campaign attempt whose call ended with ``status``."""
    if machine_action == ACTION_HANGUP:
        return FAX_OUTCOME if answered_by == FAX else VOICEMAIL
    if machine_action == ACTION_WAIT_BEEP:  # the call ended before the greeting did
        return VOICEMAIL
    if machine_action == ACTION_MESSAGE:
        return VOICEMAIL_LEFT
    return status
