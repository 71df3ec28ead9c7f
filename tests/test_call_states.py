import pytest

from telephony import call_states as s


@pytest.mark.parametrize("current, new, expected", [
    (s.CREATED, s.RINGING, True),
    (s.RINGING, s.IN_PROGRESS, True),
    (s.IN_PROGRESS, s.COMPLETED, True),
    (s.RINGING, s.BUSY, True),
    (s.IN_PROGRESS, s.RINGING, False),  # late callback
    (s.COMPLETED, s.IN_PROGRESS, False),
    (s.COMPLETED, s.FAILED, False),  # terminal is final
    (s.RINGING, s.RINGING, False),  # duplicate
    (s.CREATED, "bogus", False),
])
def test_status_only_moves_forward(current, new, expected):
    assert s.should_advance(current, new) is expected


def test_every_terminal_state_is_terminal():
    assert all(s.is_terminal(x) for x in (s.COMPLETED, s.BUSY, s.NO_ANSWER, s.FAILED, s.CANCELED))
    assert not s.is_terminal(s.IN_PROGRESS)
