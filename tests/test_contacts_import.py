"""Campaign contact import from CSV text and JSON items."""
from __future__ import annotations

import pytest

from telephony.services.campaigns.contacts import (
    MAX_CELL_CHARS,
    Contact,
    ImportResult,
    LineError,
    parse_contacts_csv,
    parse_contacts_json,
)


def fields_by_line(result: ImportResult) -> dict[int, str | None]:
    return {error.line: error.field for error in result.errors}


def test_valid_csv_with_template_variables():
    text = ("phone,name,timezone,First Name,account-id,plan\n"
            "+1 (415) 555-0100,Ada Lovelace,America/Los_Angeles,Ada,A-1,gold\n"
            '+442071838750,"Brown, Charlie",, Charlie ,A-2,"silver, annual"\n')
    result = parse_contacts_csv(text)
    assert result.errors == [] and result.ok
    assert result.contacts == [
        Contact(phone="+14155550100", timezone="America/Los_Angeles", name="Ada Lovelace",
                template_context={"first_name": "Ada", "account_id": "A-1", "plan": "gold"}),
        Contact(phone="+442071838750", timezone=None, name="Brown, Charlie",
                template_context={"first_name": "Charlie", "account_id": "A-2", "plan": "silver, annual"}),
    ]
    assert result.summary() == {"rows": 2, "contacts": 2, "errors": 0, "duplicates": 0, "suppressed": 0}


@pytest.mark.parametrize("alias", ["number", "to", "Phone", " TO ", "Phone Number", "phone-number"])
def test_phone_column_aliases(alias):
    result = parse_contacts_csv(f"{alias},name\n+14155550100,Ada\n")
    assert [c.phone for c in result.contacts] == ["+14155550100"]
    assert result.contacts[0].template_context == {}


def test_bom_semicolons_crlf_blank_lines_and_quoted_newlines():
    text = ("\ufeffphone;name;city\r\n"
            "\r\n"
            "+14155550100;Ada;\"San\r\nFrancisco\"\r\n"
            "   \r\n"
            "+14155550101;Bob;Paris\r\n"
            "not-a-number;Eve;Rome\r\n")
    result = parse_contacts_csv(text)
    assert [c.phone for c in result.contacts] == ["+14155550100", "+14155550101"]
    assert result.contacts[0].template_context == {"city": "San\r\nFrancisco"}
    # The quoted cell spans lines 3-4, so Bob is on line 6 and Eve on line 7.
    assert result.errors == [LineError(7, "phone", "phone must be in E.164 format, e.g. +14155550100")]
    assert result.summary()["rows"] == 3


def test_tab_delimited_and_old_mac_line_ends():
    result = parse_contacts_csv("phone\tname\r+14155550100\tAda\r+14155550101\tBob")
    assert [(c.phone, c.name) for c in result.contacts] == [("+14155550100", "Ada"), ("+14155550101", "Bob")]


def test_missing_phone_column():
    result = parse_contacts_csv("name,email\nAda,ada@example.com\n")
    assert result.contacts == []
    assert result.errors == [LineError(1, "phone", "missing a phone column: name one column phone, number or to")]


def test_headerless_file_gets_a_hint():
    result = parse_contacts_csv("+14155550100,Ada\n+14155550101,Bob\n")
    assert result.contacts == []
    assert result.errors[-1].field == "phone"
    assert "the first row looks like data: add a header row" in result.errors[-1].message


@pytest.mark.parametrize("text", ["", "\ufeff", "\n\n  \r\n"])
def test_empty_file(text):
    result = parse_contacts_csv(text)
    assert result.contacts == [] and len(result.errors) == 1
    assert result.errors[0].line == 1 and "header" in result.errors[0].message


def test_bad_numbers_are_reported_with_line_numbers():
    text = ("phone,name\n"
            "+14155550100,ok\n"
            "4155550101,no plus\n"
            "+1 415,too short\n"
            ",missing\n"
            "+abc,garbage\n"
            "+14155550105,ok\n")
    result = parse_contacts_csv(text)
    assert [c.phone for c in result.contacts] == ["+14155550100", "+14155550105"]
    assert fields_by_line(result) == {3: "phone", 4: "phone", 5: "phone", 6: "phone"}
    messages = {e.line: e.message for e in result.errors}
    assert "E.164" in messages[3] and "possible" in messages[4] and "required" in messages[5]
    assert result.summary() == {"rows": 6, "contacts": 2, "errors": 4, "duplicates": 0, "suppressed": 0}


def test_duplicates_keep_the_first_valid_occurrence():
    text = ("phone,name\n"
            "+1 415 555 0100,first\n"
            "+14155550100,second\n"
            "+1-415-555-0100,third\n"
            "+14155550199,other\n")
    result = parse_contacts_csv(text)
    assert [(c.phone, c.name) for c in result.contacts] == [("+14155550100", "first"), ("+14155550199", "other")]
    assert result.duplicates == [(3, "+14155550100"), (4, "+14155550100")]
    assert result.errors == []


def test_a_row_with_an_error_does_not_claim_the_number():
    text = "phone,timezone\n+14155550100,Nowhere/Land\n+14155550100,America/Los_Angeles\n"
    result = parse_contacts_csv(text)
    assert [c.timezone for c in result.contacts] == ["America/Los_Angeles"]
    assert result.duplicates == []
    assert [(e.line, e.field) for e in result.errors] == [(2, "timezone")]
    assert "Nowhere/Land" in result.errors[0].message


def test_do_not_call_numbers_are_suppressed_not_errors():
    text = "phone\n+14155550100\n+14155550101\n+1 415 555 0101\n+14155550102\n"
    result = parse_contacts_csv(text, do_not_call={"+14155550101"})
    assert [c.phone for c in result.contacts] == ["+14155550100", "+14155550102"]
    assert result.suppressed == [(3, "+14155550101"), (4, "+14155550101")]
    assert result.errors == [] and result.duplicates == []
    assert result.summary() == {"rows": 4, "contacts": 2, "errors": 0, "duplicates": 0, "suppressed": 2}


@pytest.mark.parametrize("header, fragment", [
    ("phone,2nd_line", "'2nd_line' is not a valid variable name"),
    ("phone,näme", "'näme' is not a valid variable name"),
    ("phone,order.id", "'order.id' is not a valid variable name"),
    ("phone,,name", "column 2 has no header"),
    ("phone,City,city", "repeats an earlier column"),
    ("phone,number", "more than one phone column"),
])
def test_bad_header_names_reject_the_file(header, fragment):
    result = parse_contacts_csv(f"{header}\n+14155550100,a,b\n")
    assert result.contacts == []
    assert result.errors and all(e.line == 1 for e in result.errors)
    assert any(fragment in e.message for e in result.errors), result.errors


def test_ragged_rows():
    text = "phone,name,city\n+14155550100,Ada\n+14155550101,Bob,Paris,,\n+14155550102,Cy,Rome,extra\n"
    result = parse_contacts_csv(text)
    # A short row has empty cells; trailing empty cells are ignored; real extra cells are an error.
    assert [(c.phone, c.template_context) for c in result.contacts] == [
        ("+14155550100", {"city": ""}), ("+14155550101", {"city": "Paris"})]
    assert [(e.line, e.field) for e in result.errors] == [(4, None)]
    assert "4 cells" in result.errors[0].message


def test_too_many_rows_rejects_the_whole_import():
    rows = "".join(f"+1415555{i:04d}\n" for i in range(11))
    result = parse_contacts_csv("phone\n" + rows, max_rows=10)
    assert result.contacts == [] and result.duplicates == []
    assert result.errors == [LineError(12, None, "more than 10 contacts; split the list and import each part "
                                                 "separately")]
    assert parse_contacts_csv("phone\n" + rows, max_rows=11).summary()["contacts"] == 11


def test_oversized_cells_are_line_errors():
    long = "x" * (MAX_CELL_CHARS + 1)
    text = f"phone,name,note\n+14155550100,{long},a\n+14155550101,Bob,{long}\n+{long}\n+14155550102,Cy,ok\n"
    result = parse_contacts_csv(text)
    assert [c.phone for c in result.contacts] == ["+14155550102"]
    assert [(e.line, e.field) for e in result.errors] == [(2, "name"), (3, "note"), (4, "phone")]


def test_a_field_over_the_csv_module_limit_is_an_error_not_a_crash():
    huge = "y" * 200_000  # over csv.field_size_limit() (131,072)
    result = parse_contacts_csv(f'phone,note\n+14155550100,ok\n+14155550101,"{huge}"\n')
    assert result.contacts == []
    assert len(result.errors) == 1 and result.errors[0].message.startswith("unreadable CSV")


@pytest.mark.parametrize("text, line", [
    ('phone,note\n+14155550100,ok\n+14155550101,"oops\n+14155550102,fine\n', 3),   # unterminated quote
    ('phone,note\n+14155550100,"a"b\n', 2),                                         # text after a quote
])
def test_broken_quoting_rejects_the_file(text, line):
    # Without this an open quote would swallow the rest of the file into one cell.
    result = parse_contacts_csv(text)
    assert result.contacts == []
    assert len(result.errors) == 1 and result.errors[0].line == line
    assert result.errors[0].message.startswith("unreadable CSV")


def test_quotes_inside_unquoted_cells_are_literal():
    result = parse_contacts_csv('phone,name\n+14155550100,O"Brien\n')
    assert result.contacts[0].name == 'O"Brien'


# -- JSON -------------------------------------------------------------------------------------------------------

def test_json_items_share_the_validation():
    items = [
        {"phone": "+1 415 555 0100", "name": "Ada", "timezone": "America/Los_Angeles",
         "template_context": {"plan": "gold", "visits": 3, "balance": 12.5, "vip": True, "opt_in": False}},
        {"phone": "+14155550100"},                              # duplicate
        {"phone": "4155550101"},                                # no +
        {"phone": "+14155550102", "timezone": "Mars/Base"},     # bad zone
        {"phone": "+14155550103"},                              # on the DNC list
        "+14155550104",                                         # not an object
        {"phone": "+14155550105", "timezome": "UTC"},           # typo'd key
        {"phone": 14155550106},                                 # not a string
        {"phone": "+14155550107", "template_context": {"2x": "a"}},
        {"phone": "+14155550108", "template_context": {"nested": {"a": 1}}},
        {"phone": "+14155550109", "template_context": {"nan": float("nan")}},
        {"phone": "+14155550110", "template_context": ["a"]},
        {"phone": "+14155550111", "name": None, "timezone": None, "template_context": None},
    ]
    result = parse_contacts_json(items, do_not_call={"+14155550103"})
    assert result.contacts == [
        Contact(phone="+14155550100", timezone="America/Los_Angeles", name="Ada",
                template_context={"plan": "gold", "visits": "3", "balance": "12.5", "vip": "true",
                                  "opt_in": "false"}),
        Contact(phone="+14155550111"),
    ]
    assert result.duplicates == [(1, "+14155550100")]
    assert result.suppressed == [(4, "+14155550103")]
    assert [(e.line, e.field) for e in result.errors] == [
        (2, "phone"), (3, "timezone"), (5, None), (6, "timezome"), (7, "phone"), (8, "template_context.2x"),
        (9, "template_context.nested"), (10, "template_context.nan"), (11, "template_context")]
    assert result.summary() == {"rows": 13, "contacts": 2, "errors": 9, "duplicates": 1, "suppressed": 1}


def test_json_must_be_a_list_and_is_bounded():
    assert parse_contacts_json({"phone": "+14155550100"}).errors[0].message == \
        "contacts must be a JSON array of objects"
    result = parse_contacts_json([{"phone": f"+1415555{i:04d}"} for i in range(4)], max_rows=3)
    assert result.contacts == [] and result.errors[0].line == 3 and "more than 3" in result.errors[0].message
    long = "z" * (MAX_CELL_CHARS + 1)
    result = parse_contacts_json([{"phone": "+14155550100", "name": long},
                                  {"phone": "+14155550101", "template_context": {"a": long}},
                                  {"phone": "+14155550102", "template_context": {"a": 10 ** 5000}},
                                  {"phone": "+14155550103", "template_context": {f"k{i}": "v" for i in range(101)}}])
    assert result.contacts == []
    assert [(e.line, e.field) for e in result.errors] == [
        (0, "name"), (1, "template_context.a"), (2, "template_context.a"), (3, "template_context")]


def test_csv_and_json_give_the_same_contacts():
    csv_result = parse_contacts_csv("phone,name,timezone,plan\n+14155550100,Ada,Europe/Paris,gold\n")
    json_result = parse_contacts_json([{"phone": "+14155550100", "name": "Ada", "timezone": "Europe/Paris",
                                        "template_context": {"plan": "gold"}}])
    assert csv_result.contacts == json_result.contacts


def test_large_valid_import_is_quick():
    rows = "".join(f"+1415{i:07d},n{i}\n" for i in range(20_000))
    result = parse_contacts_csv("phone,name\n" + rows)
    assert result.summary()["rows"] == 20_000
    assert result.summary()["contacts"] + result.summary()["errors"] == 20_000
