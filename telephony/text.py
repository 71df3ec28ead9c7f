"""What text the database can store.

PostgreSQL text and JSON cannot hold a NUL character, and neither database driver
can encode an unpaired UTF-16 surrogate (JSON "\\ud800", or the bytes a lenient
decoder turns into one). Input carrying either is refused or ignored where it is
parsed, never sent to the database to fail there with a 500.
"""
from __future__ import annotations


def storable(value: str) -> bool:
    """True if ``value`` has no NUL character and encodes as UTF-8."""
    if "\x00" in value:
        return False
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True
