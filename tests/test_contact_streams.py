"""The streaming contact parsers (background imports) give what the whole-text parsers
give, batch by batch, from input read a piece at a time, and refuse the same inputs."""
from __future__ import annotations

import io
import json

import pytest

from telephony.services.campaigns import contact_streams
from telephony.services.campaigns.contact_streams import InputRefused, stream_contacts_csv, stream_contacts_json
from telephony.services.campaigns.contacts import ImportResult, parse_contacts_csv, parse_contacts_json

CSV_TEXT = ("\n\n"
            "phone;name;timezone;First Name;plan\r\n"
            "+1 (415) 555-0100;Ada;America/Los_Angeles;Ada;gold\r\n"
            "\r\n"
            '+14155550101;"Brown; Charlie";;"Char\r\nlie";silver\r\n'
            "not-a-number;Eve;;Eve;\r\n"
            "+14155550100;Again;;;\r\n"
            "+14155550102;Zed;Mars/Olympus;;;\r\n"
            "+14155550103;Extra;;;;x\r\n")


class Trickle(io.StringIO):
    """A text stream that hands out at most `size` characters per read and per line:
    every token of the input is cut somewhere."""

    def __init__(self, text: str, size: int):
        super().__init__(text, newline="")
        self.size = size

    def read(self, n: int | None = -1) -> str:
        return super().read(self.size if n is None or n < 0 else min(n, self.size))


def merged(batches) -> ImportResult:
    whole = ImportResult()
    for _last_line, batch in batches:
        whole.contacts += batch.contacts
        whole.contact_lines += batch.contact_lines
        whole.errors += batch.errors
        whole.duplicates += batch.duplicates
        whole.rows += batch.rows
    return whole


def test_a_csv_stream_gives_what_the_text_parser_gives():
    expected = parse_contacts_csv(CSV_TEXT)
    streamed = merged(stream_contacts_csv(io.StringIO(CSV_TEXT, newline=""), batch_rows=100))
    assert (streamed.contacts, streamed.errors, streamed.duplicates, streamed.rows) == (
        expected.contacts, expected.errors, expected.duplicates, expected.rows)
    assert streamed.contact_lines == [4, 6]   # lines as in the file: two blank lines, then the header


def test_csv_batches_carry_their_last_line_and_resume_after_one():
    text = "phone\n" + "".join(f"+1415555{n:04d}\n" for n in range(10))
    batches = list(stream_contacts_csv(io.StringIO(text, newline=""), batch_rows=4))
    assert [(last, batch.rows) for last, batch in batches] == [(5, 4), (9, 4), (11, 2)]
    resumed = list(stream_contacts_csv(io.StringIO(text, newline=""), batch_rows=4, skip_through=5))
    assert [c.phone for _last, b in resumed for c in b.contacts] == [f"+1415555{n:04d}" for n in range(4, 10)]


@pytest.mark.parametrize("text, line, fragment", [
    ("", 1, "empty"),
    ("name\nAda\n", 1, "missing a phone column"),
    ('phone,name\n+14155550100,"Ada\n', 2, "unreadable CSV"),
    ("phone\n" + "+14155550100\n" * 4, 5, "more than 3 contacts"),
])
def test_a_csv_stream_refuses_what_the_text_parser_refuses(text, line, fragment):
    for check_only in (True, False):
        with pytest.raises(InputRefused) as refused:
            list(stream_contacts_csv(io.StringIO(text, newline=""), max_rows=3, check_only=check_only))
        assert refused.value.error.line == line and fragment in refused.value.error.message


ITEMS = [{"phone": "+14155550100", "name": "Ada", "template_context": {"n": 12345678901234567890, "ok": True,
                                                                         "pi": 3.25, "s": "a \"quoted\" ,]} text"}},
         {"phone": "+14155550100"}, "not an object", {"phone": "+14155550101", "timezome": "UTC"},
         {"phone": 14155550102}, {"phone": "+14155550103", "timezone": "Europe/Paris"}]


@pytest.mark.parametrize("wrapped", [False, True])
@pytest.mark.parametrize("piece", [1, 7, 64 * 1024])
def test_a_json_stream_read_in_pieces_gives_what_the_json_parser_gives(monkeypatch, wrapped, piece):
    monkeypatch.setattr(contact_streams, "_JSON_READ_CHARS", piece)
    text = json.dumps({"contacts": ITEMS} if wrapped else ITEMS, indent=1)
    expected = parse_contacts_json(ITEMS)
    streamed = merged(stream_contacts_json(Trickle(text, piece), batch_rows=2))
    assert (streamed.contacts, streamed.errors, streamed.duplicates, streamed.rows) == (
        expected.contacts, expected.errors, expected.duplicates, expected.rows)
    assert len(streamed.errors) == 3 and streamed.contact_lines == [0, 5]


def test_a_number_cut_between_two_pieces_is_read_whole(monkeypatch):
    monkeypatch.setattr(contact_streams, "_JSON_READ_CHARS", 5)
    text = '[{"phone": "+14155550100", "template_context": {"n": 1234567890}}]'
    streamed = merged(stream_contacts_json(Trickle(text, 5)))
    assert streamed.contacts[0].template_context == {"n": "1234567890"}


@pytest.mark.parametrize("text, fragment", [
    ("", "JSON array"),
    ('{"items": []}', "JSON array"),
    ('{"contacts": [], "more": 1}', "only \"contacts\""),
    ('[{"phone": "+14155550100"} {"phone": "+14155550101"}]', 'expected "," or "]"'),
    ('[{"phone": "+14155550100"},', "invalid JSON in contact 1"),
    ('[{"phone": "+14155550100"}] trailing', "text after"),
    ('[{"phone": "+14155550100", "name": "Ada}]', "invalid JSON in contact 0"),
])
def test_a_json_stream_refuses_broken_or_other_json(text, fragment):
    with pytest.raises(InputRefused) as refused:
        list(stream_contacts_json(io.StringIO(text), check_only=True))
    assert fragment in refused.value.error.message


def test_a_json_stream_is_bounded():
    with pytest.raises(InputRefused) as refused:
        list(stream_contacts_json(io.StringIO(json.dumps([{"phone": "+14155550100"}] * 4)), max_rows=3))
    assert refused.value.error.line == 3 and "more than 3 contacts" in refused.value.error.message
    empty = list(stream_contacts_json(io.StringIO(' { "contacts" : [ ] } ')))
    assert empty == []
