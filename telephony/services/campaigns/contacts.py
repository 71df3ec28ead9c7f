"""Campaign contact lists from CSV text or JSON items: parsed, validated, deduplicated.

Both formats feed one validation path (`_Importer.add`), so a CSV row and a JSON
item with the same content give the same Contact or the same error. Nothing here
touches the database: the caller stores `ImportResult.contacts` and shows the
rest to the user.

Policies:
* Phone numbers go through normalize_e164, so they need the leading + and
  country code; a bad number is an error for that line only.
* A `timezone` is optional and only validated here. The dispatcher resolves a
  missing one at dial time (windows.timezone_for, then the campaign default).
* The same normalised number twice: the first valid occurrence is kept, later
  ones are listed in `duplicates`.
* Numbers in `do_not_call` (E.164 strings, as normalize_e164 produces them) are
  listed in `suppressed`, every occurrence, and are not errors. This is an early
  filter only: the dispatcher must check the DNC list again right before dialling.
* Problems with the input as a whole reject it entirely (errors, no contacts):
  an empty file, a bad header, more than `max_rows` rows, broken CSV quoting. A
  silently truncated campaign is worse than a refused upload. Problems with one
  row (bad number or zone, a cell over MAX_CELL_CHARS, extra cells) are errors
  for that line only. Nothing raises on bad input (the streaming parsers at the end,
  for background imports, raise InputRefused for a problem with the input as a whole).
* Template variables are strings. CSV cells are taken as text (stripped); JSON
  scalars are converted: true/false -> "true"/"false", numbers -> str(number).
"""
from __future__ import annotations

import csv
import io
import itertools
import math
import re
from collections.abc import Container, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from ...errors import InvalidInput
from ..phone_numbers import normalize_e164
from .windows import validate_timezone

MAX_CELL_CHARS = 1_000
MAX_COLUMNS = 100          # also the cap on keys of a JSON item's template_context
PHONE_COLUMNS = ("phone", "number", "to", "phone_number")  # after header normalisation
_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_TOO_BIG_INT = 10 ** MAX_CELL_CHARS
_JSON_KEYS = frozenset({"phone", "timezone", "name", "template_context"})


@dataclass(frozen=True)
class Contact:
    phone: str                      # E.164
    timezone: str | None = None     # IANA name given in the input, or None
    name: str | None = None
    template_context: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class LineError:
    line: int            # CSV line number (header = 1) or JSON item index (from 0)
    field: str | None    # column / key at fault, None for the whole line or file
    message: str


@dataclass
class ImportResult:
    contacts: list[Contact] = field(default_factory=list)
    errors: list[LineError] = field(default_factory=list)
    duplicates: list[tuple[int, str]] = field(default_factory=list)   # (line, E.164)
    suppressed: list[tuple[int, str]] = field(default_factory=list)   # (line, E.164)
    rows: int = 0        # data rows / items looked at (blank CSV lines excluded)
    contact_lines: list[int] = field(default_factory=list)  # the line of each of `contacts`

    @property
    def ok(self) -> bool:
        return not self.errors

    def summary(self) -> dict[str, int]:
        return {"rows": self.rows, "contacts": len(self.contacts), "errors": len(self.errors),
                "duplicates": len(self.duplicates), "suppressed": len(self.suppressed)}


class _Importer:
    """The shared validation path: one call to add() per CSV row or JSON item."""

    def __init__(self, do_not_call: Container[str] | None):
        self.result = ImportResult()
        self._do_not_call = do_not_call if do_not_call is not None else frozenset()
        self._seen: set[str] = set()

    def error(self, line: int, field_name: str | None, message: str) -> None:
        self.result.errors.append(LineError(line, field_name, message))

    def reject(self, line: int, field_name: str | None, message: str) -> None:
        """A row that fails before add(): counted as a row, reported as an error."""
        self.result.rows += 1
        self.error(line, field_name, message)

    def add(self, line: int, *, phone: Any, timezone: Any, name: Any, context: dict[str, str]) -> None:
        self.result.rows += 1
        if phone is None or (isinstance(phone, str) and not phone.strip()):
            return self.error(line, "phone", "phone is required")
        if not isinstance(phone, str):
            return self.error(line, "phone", "phone must be a string such as +14155550100")
        if timezone is not None and not isinstance(timezone, str):
            return self.error(line, "timezone", "timezone must be a string such as America/New_York")
        if name is not None and not isinstance(name, str):
            return self.error(line, "name", "name must be a string")
        for field_name, value in (("phone", phone), ("timezone", timezone), ("name", name)):
            if value is not None and len(value) > MAX_CELL_CHARS:
                return self.error(line, field_name, f"{field_name} is longer than {MAX_CELL_CHARS} characters")
        try:
            e164 = normalize_e164(phone, field="phone")
            zone = validate_timezone(timezone) if timezone is not None and timezone.strip() else None
        except InvalidInput as exc:
            return self.error(line, exc.field, exc.message)
        # Suppression before deduplication, so every DNC line is reported as such.
        if e164 in self._do_not_call:
            self.result.suppressed.append((line, e164))
            return None
        if e164 in self._seen:
            self.result.duplicates.append((line, e164))
            return None
        self._seen.add(e164)
        self.result.contact_lines.append(line)
        self.result.contacts.append(Contact(phone=e164, timezone=zone, name=(name or "").strip() or None,
                                            template_context=context))
        return None

    def fail(self, line: int, message: str) -> ImportResult:
        """A problem with the input as a whole: no contacts, just this one error."""
        result = ImportResult(rows=self.result.rows)
        result.errors.append(LineError(line, None, message))
        return result

    def too_many_rows(self, line: int, max_rows: int) -> ImportResult:
        return self.fail(line, f"more than {max_rows} contacts; split the list and import each part separately")


# -- CSV ------------------------------------------------------------------------------------------------

def parse_contacts_csv(text: str, *, max_rows: int = 100_000,
                       do_not_call: Container[str] | None = None) -> ImportResult:
    """Contacts from CSV text with a header row.

    Required column: phone (aliases: number, to, "phone number"). Optional: timezone, name.
    Every other column becomes a template variable named after its header,
    normalised (trimmed, lower-cased, spaces and dashes -> "_") and required to be
    an identifier. The delimiter is "," or ";" (or a tab), whichever the header row
    uses most. A UTF-8 BOM, CRLF / CR line ends, quoted fields and blank lines are
    fine. Line numbers are physical lines of `text`, the header being line 1.
    """
    importer = _Importer(do_not_call)
    text = text.removeprefix("\ufeff")
    rows = _csv_rows(text)
    try:
        header_line, header = next(rows, (1, None))
        if header is None:
            return importer.fail(1, "the file is empty; the first row must be a header with a phone column")
        columns = _read_header(importer, header_line, header)
        if columns is None:
            return importer.result
        for line, row in rows:
            if importer.result.rows >= max_rows:
                return importer.too_many_rows(line, max_rows)
            _add_csv_row(importer, columns, line, row)
    except csv.Error as exc:
        # An unterminated quote, text after a closing quote, or a field over
        # csv.field_size_limit(): the rest of the file can't be trusted.
        return importer.fail(getattr(exc, "line", 1), f"unreadable CSV: {exc}")
    return importer.result


def _add_csv_row(importer: _Importer, columns: _Columns, line: int, row: list[str]) -> None:
    """One data row: its shape checked, then the shared validation (_Importer.add)."""
    width = len(columns.names)
    if len(row) > width:
        # Spreadsheets often add trailing empty cells; anything else is misaligned.
        if any(cell.strip() for cell in row[width:]):
            return importer.reject(line, None, f"row has {len(row)} cells but the header has {width}")
        row = row[:width]
    row = row + [""] * (width - len(row))   # short rows: missing cells are empty
    too_long = next((i for i, cell in enumerate(row) if len(cell) > MAX_CELL_CHARS), None)
    if too_long is not None:
        label = "phone" if too_long == columns.phone_at else columns.names[too_long]
        return importer.reject(line, label, f"{label} is longer than {MAX_CELL_CHARS} characters")
    with_nul = next((i for i, cell in enumerate(row) if "\x00" in cell), None)
    if with_nul is not None:  # the database cannot store a NUL character
        label = "phone" if with_nul == columns.phone_at else columns.names[with_nul]
        return importer.reject(line, label, f"{label} contains a NUL character")
    return importer.add(line, phone=row[columns.phone_at],
                        timezone=row[columns.timezone_at] if columns.timezone_at is not None else None,
                        name=row[columns.name_at] if columns.name_at is not None else None,
                        context={columns.names[i]: row[i].strip() for i in columns.variables})


def _csv_rows(text: str) -> Iterator[tuple[int, list[str]]]:
    """(line number the record starts on, cells) for each non-blank record."""
    return _csv_records(io.StringIO(text, newline=""))


def _csv_records(lines: Iterable[str]) -> Iterator[tuple[int, list[str]]]:
    """_csv_rows over any source of lines that keep their line ends (a file opened
    with newline=""), read once: a file of any length is never held whole."""
    lines = iter(lines)
    blank_lines = 0
    first_line = ""
    for line in lines:
        if line.strip():
            first_line = line
            break
        blank_lines += 1   # counted, not kept: only their number matters (line numbers)
    counts = {d: first_line.count(d) for d in (",", ";", "\t")}
    delimiter = max(counts, key=lambda d: counts[d]) if any(counts.values()) else ","
    # newline="" keeps line ends for the csv module, which then handles CRLF and
    # newlines inside quoted fields itself. strict: an unterminated quote would
    # otherwise swallow the rest of the file into one cell without a word.
    source = itertools.chain(itertools.repeat("\n", blank_lines), [first_line] if first_line else [], lines)
    reader = csv.reader(source, delimiter=delimiter, strict=True)
    previous = 0
    while True:
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            exc.line = previous + 1  # type: ignore[attr-defined]
            raise
        start, previous = previous + 1, reader.line_num
        if any(cell.strip() for cell in row):
            yield start, row


@dataclass(frozen=True)
class _Columns:
    names: list[str]            # normalised header names, one per column
    phone_at: int
    timezone_at: int | None
    name_at: int | None
    variables: list[int]        # positions of template-variable columns


def _read_header(importer: _Importer, line: int, header: list[str]) -> _Columns | None:
    """Where each column goes, or None after reporting the header's errors."""
    if len(header) > MAX_COLUMNS:
        importer.error(line, None, f"the header has {len(header)} columns; at most {MAX_COLUMNS} are allowed")
        return None
    names: list[str] = []
    ok = True
    for position, raw in enumerate(header, start=1):
        name = re.sub(r"[\s\-]+", "_", raw.strip()).lower()
        if not name:
            importer.error(line, None, f"column {position} has no header; every column needs a name")
            ok = False
        elif len(raw) > MAX_CELL_CHARS or not _IDENTIFIER.match(name):
            importer.error(line, raw[:50], f"column {position} header {raw[:50]!r} is not a valid variable "
                                           "name: use letters, digits and _, not starting with a digit")
            ok = False
        elif name in names:
            importer.error(line, name, f"column {position} header {raw!r} repeats an earlier column")
            ok = False
        names.append(name)
    phone_columns = [i for i, name in enumerate(names) if name in PHONE_COLUMNS]
    if not phone_columns:
        looks_like_data = any(cell.strip().startswith("+") for cell in header)
        hint = " (the first row looks like data: add a header row)" if looks_like_data else ""
        importer.error(line, "phone", f"missing a phone column: name one column phone, number or to{hint}")
        ok = False
    elif len(phone_columns) > 1:
        importer.error(line, "phone", "more than one phone column (phone, number, to, phone_number); keep only one")
        ok = False
    if not ok:
        return None
    timezone_at = names.index("timezone") if "timezone" in names else None
    name_at = names.index("name") if "name" in names else None
    special = {phone_columns[0], timezone_at, name_at}
    return _Columns(names=names, phone_at=phone_columns[0], timezone_at=timezone_at, name_at=name_at,
                    variables=[i for i in range(len(names)) if i not in special])


# -- JSON -----------------------------------------------------------------------------------------------

def parse_contacts_json(items: Any, *, max_rows: int = 100_000,
                        do_not_call: Container[str] | None = None) -> ImportResult:
    """Contacts from decoded JSON: a list of {"phone", "timezone"?, "name"?, "template_context"?}.

    Errors carry the item's index (from 0) as `line`. Unknown keys are errors, so a
    typo such as "timezome" is not silently dropped.
    """
    importer = _Importer(do_not_call)
    if not isinstance(items, list):
        importer.error(0, None, "contacts must be a JSON array of objects")
        return importer.result
    if len(items) > max_rows:
        return importer.too_many_rows(max_rows, max_rows)
    for index, item in enumerate(items):
        _add_json_item(importer, index, item)
    return importer.result


def _add_json_item(importer: _Importer, index: int, item: Any) -> None:
    """One JSON item: its shape checked, then the shared validation (_Importer.add)."""
    if not isinstance(item, dict):
        return importer.reject(index, None, 'each contact must be an object such as {"phone": "+14155550100"}')
    unknown = sorted(str(key)[:50] for key in item if key not in _JSON_KEYS)
    if unknown:
        return importer.reject(index, unknown[0], f"unknown field(s) {', '.join(unknown[:5])}; "
                                                  f"allowed: phone, timezone, name, template_context")
    context = _json_context(importer, index, item.get("template_context"))
    if context is None:
        importer.result.rows += 1   # _json_context reported the error
        return None
    return importer.add(index, phone=item.get("phone"), timezone=item.get("timezone"), name=item.get("name"),
                        context=context)


def _json_context(importer: _Importer, index: int, value: Any) -> dict[str, str] | None:
    """template_context as {identifier: str}, or None after reporting an error."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        importer.error(index, "template_context", "template_context must be an object of name: value")
        return None
    if len(value) > MAX_COLUMNS:
        importer.error(index, "template_context", f"template_context has more than {MAX_COLUMNS} entries")
        return None
    context: dict[str, str] = {}
    for key, raw in value.items():
        where = f"template_context.{str(key)[:50]}"
        if not isinstance(key, str) or not _IDENTIFIER.match(key):
            importer.error(index, where, f"{str(key)[:50]!r} is not a valid variable name: use letters, digits "
                                         "and _, not starting with a digit")
            return None
        if isinstance(raw, bool):
            text = "true" if raw else "false"
        elif isinstance(raw, str):
            text = raw
        elif isinstance(raw, int):
            # Checked before str(): Python refuses to print ints of over 4,300 digits.
            if abs(raw) >= _TOO_BIG_INT:
                importer.error(index, where, f"value is longer than {MAX_CELL_CHARS} characters")
                return None
            text = str(raw)
        elif isinstance(raw, float) and math.isfinite(raw):
            text = str(raw)
        else:
            importer.error(index, where, "template values must be strings, numbers or booleans")
            return None
        if len(text) > MAX_CELL_CHARS:
            importer.error(index, where, f"value is longer than {MAX_CELL_CHARS} characters")
            return None
        context[key] = text
    return context
