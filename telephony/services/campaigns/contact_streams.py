"""Contact lists of any length, read once, in batches (background imports,
services/campaigns/imports.py): the row rules of contacts.py applied to a stream.

A batch is an ImportResult of at most `batch_rows` rows; duplicates are found within a
batch only (the database finds the others), and the do-not-call list is the caller's to
apply. A problem with the input as a whole raises InputRefused, possibly after earlier
batches were yielded: read the input once with check_only=True first, and only then
store anything.
"""
from __future__ import annotations

import csv
import json
import re
from collections.abc import Iterator
from typing import Any, TextIO

# The row and header rules are contacts.py's, shared (not public API of the package).
from .contacts import (
    ImportResult,
    LineError,
    _add_csv_row,
    _add_json_item,
    _csv_records,
    _Importer,
    _read_header,
)

MAX_JSON_ITEM_CHARS = 1_000_000
_JSON_READ_CHARS = 64 * 1024
_JSON_SPACE = re.compile(r"[ \t\n\r]*")


class InputRefused(Exception):
    """The input as a whole is refused (streaming only): store nothing of it."""

    def __init__(self, error: LineError):
        self.error = error
        super().__init__(error.message)


def stream_contacts_csv(stream: TextIO, *, batch_rows: int = 1_000, max_rows: int = 100_000,
                        skip_through: int = -1, check_only: bool = False) -> Iterator[tuple[int, ImportResult]]:
    """parse_contacts_csv for a text file opened with newline="" (a UTF-8 BOM already
    removed), in batches: (the batch's last line, the batch). Rows on lines up to
    `skip_through` are counted but not validated (a resumed import). With check_only,
    rows are only counted and the input's shape checked (header, quoting, length):
    nothing is yielded."""
    importer = _Importer(None)
    counted = 0
    last_line = skip_through
    try:
        rows = _csv_records(stream)
        header_line, header = next(rows, (1, None))
        if header is None:
            raise InputRefused(LineError(1, None, "the file is empty; the first row must be a header with a "
                                                  "phone column"))
        columns = _read_header(importer, header_line, header)
        if columns is None:
            raise InputRefused(importer.result.errors[0])
        for line, row in rows:
            if counted >= max_rows:
                raise InputRefused(LineError(line, None, f"more than {max_rows} contacts; split the list and "
                                                         "import each part separately"))
            counted += 1
            if check_only or line <= skip_through:
                continue
            _add_csv_row(importer, columns, line, row)
            last_line = line
            if importer.result.rows >= batch_rows:
                yield last_line, importer.result
                importer = _Importer(None)
    except csv.Error as exc:
        raise InputRefused(LineError(getattr(exc, "line", 1), None, f"unreadable CSV: {exc}")) from None
    if importer.result.rows:
        yield last_line, importer.result


def stream_contacts_json(stream: TextIO, *, batch_rows: int = 1_000, max_rows: int = 100_000,
                         skip_through: int = -1, check_only: bool = False) -> Iterator[tuple[int, ImportResult]]:
    """parse_contacts_json for a text file holding a JSON array of contacts, or
    {"contacts": [...]}, read a piece at a time, in batches; otherwise as
    stream_contacts_csv (`line` is the item's index from 0)."""
    importer = _Importer(None)
    for index, item in _json_items(stream):
        if index >= max_rows:
            raise InputRefused(LineError(max_rows, None, f"more than {max_rows} contacts; split the list and "
                                                         "import each part separately"))
        if check_only or index <= skip_through:
            continue
        _add_json_item(importer, index, item)
        if importer.result.rows >= batch_rows:
            yield index, importer.result
            importer = _Importer(None)
    if importer.result.rows:
        yield index, importer.result


class _JsonReader:
    """A window onto a JSON text read a piece at a time: the items of its one array are
    decoded one by one (json's own decoder), so memory holds one piece, not the file."""

    def __init__(self, stream: TextIO):
        self.stream = stream
        self.text = ""
        self.at = 0
        self.ended = False
        self.decoder = json.JSONDecoder()

    def more(self) -> bool:
        """Read the next piece (dropping what was consumed); False at the end of the input."""
        if self.ended:
            return False
        piece = self.stream.read(_JSON_READ_CHARS)
        if not piece:
            self.ended = True
            return False
        self.text = self.text[self.at:] + piece
        self.at = 0
        return True

    def peek(self) -> str:
        """The next character that is not white space ("" at the end), not consumed."""
        while True:
            self.at = _JSON_SPACE.match(self.text, self.at).end()  # type: ignore[union-attr]
            if self.at < len(self.text) or not self.more():
                return self.text[self.at:self.at + 1]

    def expect(self, char: str, line: int, what: str) -> None:
        if self.peek() != char:
            found = self.peek() or "the end of the input"
            raise InputRefused(LineError(line, None, f"invalid JSON: expected {what}, found {found[:20]!r}"))
        self.at += 1

    def value(self, line: int) -> Any:
        """The next JSON value. A value that ends where the text read so far ends may go
        on (a number cut between two pieces): it is decoded again with more text."""
        self.peek()  # the decoder takes no leading white space
        while True:
            try:
                value, end = self.decoder.raw_decode(self.text, self.at)
            except json.JSONDecodeError as exc:
                if len(self.text) - self.at > MAX_JSON_ITEM_CHARS:
                    raise InputRefused(LineError(line, None, f"contact {line} is longer than "
                                                             f"{MAX_JSON_ITEM_CHARS} characters")) from None
                if self.more():
                    continue
                raise InputRefused(LineError(line, None, f"invalid JSON in contact {line}: {exc.msg}")) from None
            if end == len(self.text) and self.more():
                continue
            self.at = end
            return value


def _json_items(stream: TextIO) -> Iterator[tuple[int, Any]]:
    """(index, decoded item) for each item of the array; InputRefused for anything else."""
    reader = _JsonReader(stream)
    shape = 'the body must be a JSON array of contacts or {"contacts": [...]}'
    wrapped = reader.peek() == "{"
    if wrapped:
        reader.at += 1
        if reader.peek() != '"' or reader.value(0) != "contacts":
            raise InputRefused(LineError(0, None, shape))
        reader.expect(":", 0, '":"')
    if reader.peek() != "[":
        raise InputRefused(LineError(0, None, shape))
    reader.at += 1
    index = 0
    if reader.peek() == "]":
        reader.at += 1
    else:
        while True:
            yield index, reader.value(index)
            index += 1
            following = reader.peek()
            reader.expect("," if following == "," else "]", index, '"," or "]"')
            if following != ",":
                break
    if wrapped:
        reader.expect("}", index, '"}" (only "contacts" is allowed)')
    if reader.peek():
        raise InputRefused(LineError(index, None, "invalid JSON: text after the contacts"))
