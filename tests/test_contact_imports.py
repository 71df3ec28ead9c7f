"""Contact lists of real size: background imports (raw CSV / JSON bodies over 64 KB,
multipart files, `Prefer: respond-async`), their progress, their rejected rows, the
route's own body limit, resuming after a crash, and agency isolation."""
from __future__ import annotations

import csv
import io
import json
import uuid

import pytest
from sqlalchemy import func, select

from telephony.models import CampaignContact, ContactImport, ContactImportChunk, Job
from telephony.services.campaigns import imports
from telephony.worker import JOB_HANDLERS, job_context
from tests.outbound_helpers import contacts_by_phone, create_campaign, seed_agency

CSV = {"Content-Type": "text/csv"}
CHUNKED = {"Transfer-Encoding": "chunked"}


def phone(n: int) -> str:
    return f"+1212555{n:04d}"


def big_csv(rows: int, *, extra: str = "") -> bytes:
    """A CSV over the API's 64 KB: phone, name, a template variable; row n on line n + 2."""
    lines = ["phone,name,timezone,first_name,plan"]
    lines += [f"{phone(n)},Contact {n},,First{n},gold" for n in range(rows)]
    return ("\n".join(lines) + "\n" + extra).encode()


def contacts_url(campaign) -> str:
    return f"/api/v1/campaigns/{campaign['id']}/contacts"


def run_jobs(app) -> None:
    """What a worker does: run every queued contact-import job (no app context)."""
    context = job_context(app)
    with context.db.session() as session:
        payloads = list(session.scalars(select(Job.payload).where(Job.kind == imports.IMPORT_JOB,
                                                                  Job.status == "queued")))
    for payload in payloads:
        JOB_HANDLERS[imports.IMPORT_JOB](context, payload)


def contact_count(app, campaign) -> int:
    with app.extensions["telephony.db"].session() as session:
        return session.scalar(select(func.count()).select_from(CampaignContact).where(
            CampaignContact.campaign_id == uuid.UUID(campaign["id"]))) or 0


def rejected_csv(client, started, headers) -> list[dict[str, str]]:
    response = client.get(started["rejected_rows_url"], headers=headers)
    assert response.status_code == 200 and response.mimetype == "text/csv"
    return list(csv.DictReader(io.StringIO(response.get_data(as_text=True))))


@pytest.fixture
def seeded(app):
    return seed_agency(app)


@pytest.fixture
def campaign(app, seeded):
    return create_campaign(app.test_client(), seeded, [], start=False)


def test_a_large_csv_is_imported_in_the_background_with_progress_and_rejected_rows(app, seeded, campaign):
    client = app.test_client()
    # 3,000 rows (a 413 before), one bad number (line 12), one repeated number (line 3002).
    body = big_csv(3_000, extra=f"{phone(1)},Again,,,\n").replace(f"{phone(10)},".encode(), b"not-a-number,")
    assert len(body) > app.extensions["telephony.config"].max_body_bytes
    response = client.post(contacts_url(campaign), data=body, headers=seeded.headers(**CSV))
    assert response.status_code == 202, response.json
    started = response.json
    assert started["status"] == "queued" and started["format"] == "csv" and started["size_bytes"] == len(body)
    assert response.headers["Location"].endswith(f"/imports/{started['id']}")
    assert "Preference-Applied" not in response.headers   # not asked for: the size decided
    assert contact_count(app, campaign) == 0   # nothing until a worker runs it

    run_jobs(app)

    done = client.get(response.headers["Location"], headers=seeded.headers()).json
    assert done["status"] == "done" and done["error"] is None
    assert (done["rows"], done["imported"], done["rejected"]) == (3_001, 2_999, 2)
    assert done["rejected_by_kind"] == {"error": 1, "duplicate": 1, "suppressed": 0}
    assert contact_count(app, campaign) == 2_999
    stored = contacts_by_phone(app, campaign["id"])[phone(7)]
    assert stored.name == "Contact 7" and stored.template_context == {"first_name": "First7", "plan": "gold"}
    rejected = rejected_csv(client, started, seeded.headers())
    assert [(r["row"], r["kind"], r["field"]) for r in rejected] == [("12", "error", "phone"),
                                                                    ("3002", "duplicate", "phone")]
    assert "E.164" in rejected[0]["reason"] and rejected[1]["phone"] == phone(1)
    # The upload itself is gone once imported.
    with app.extensions["telephony.db"].session() as session:
        assert session.scalar(select(func.count()).select_from(ContactImportChunk)) == 0
    listed = client.get(f"/api/v1/campaigns/{campaign['id']}/imports", headers=seeded.headers()).json
    assert [i["id"] for i in listed["imports"]] == [started["id"]]


def test_a_large_json_body_and_a_multipart_json_file(app, seeded, campaign):
    client = app.test_client()
    items = [{"phone": phone(n), "name": f"C{n}", "template_context": {"account": n, "vip": n % 2 == 0}}
             for n in range(2_000)]
    response = client.post(contacts_url(campaign), json={"contacts": items}, headers=seeded.headers())
    assert response.status_code == 202, response.json
    # A file holding a bare array, uploaded from a form; one item has a typo'd key.
    more = [{"phone": phone(n)} for n in range(2_000, 2_100)] + [{"phone": phone(2_100), "timezome": "UTC"}]
    upload = client.post(contacts_url(campaign), headers=seeded.headers(), content_type="multipart/form-data",
                         data={"file": (io.BytesIO(json.dumps(more).encode()), "more.json")})
    assert upload.status_code == 202, upload.json
    assert upload.json["format"] == "json" and upload.json["filename"] == "more.json"

    run_jobs(app)

    first = client.get(response.headers["Location"], headers=seeded.headers()).json
    second = client.get(upload.headers["Location"], headers=seeded.headers()).json
    assert (first["status"], first["imported"], first["rejected"]) == ("done", 2_000, 0)
    assert (second["status"], second["imported"], second["rejected"]) == ("done", 100, 1)
    assert contacts_by_phone(app, campaign["id"])[phone(4)].template_context == {"account": "4", "vip": "true"}
    rejected = rejected_csv(client, second, seeded.headers())
    assert rejected[0]["row"] == "100" and rejected[0]["field"] == "timezome"


def test_a_multipart_csv_file_and_prefer_respond_async(app, seeded, campaign):
    client = app.test_client()
    # From a spreadsheet on Windows: .csv labelled application/vnd.ms-excel, semicolons, CRLF.
    data = "phone;name\r\n+12125550100;Ada\r\n+12125550101;Bob\r\n".encode()
    upload = client.post(contacts_url(campaign), headers=seeded.headers(), content_type="multipart/form-data",
                         data={"file": (io.BytesIO(data), "list.csv", "application/vnd.ms-excel")})
    assert upload.status_code == 202, upload.json
    # A small raw body answers at once as it always did, unless asked otherwise.
    small = "phone\n+12125550102\n"
    asked = client.post(contacts_url(campaign), data=small,
                        headers=seeded.headers(**CSV, Prefer="respond-async"))
    assert asked.status_code == 202 and asked.headers["Preference-Applied"] == "respond-async"
    run_jobs(app)
    assert client.get(upload.headers["Location"], headers=seeded.headers()).json["imported"] == 2
    assert client.get(asked.headers["Location"], headers=seeded.headers()).json["imported"] == 1
    assert sorted(contacts_by_phone(app, campaign["id"])) == ["+12125550100", "+12125550101", "+12125550102"]


def test_unsupported_uploads_are_refused_clearly(app, seeded, campaign):
    client = app.test_client()
    excel = client.post(contacts_url(campaign), headers=seeded.headers(), content_type="multipart/form-data",
                        data={"file": (io.BytesIO(b"PK\x03\x04"), "list.xlsx", "application/octet-stream")})
    assert excel.status_code == 415 and "CSV" in excel.json["error"]
    no_file = client.post(contacts_url(campaign), headers=seeded.headers(), content_type="multipart/form-data",
                          data={"note": "hello"})
    assert no_file.status_code == 400 and no_file.json["fields"] == {"file": "required"}
    xml = client.post(contacts_url(campaign), data=b"<contacts/>", headers=seeded.headers(
        **{"Content-Type": "application/xml"}))
    assert xml.status_code == 415


def test_the_import_route_has_its_own_limit_and_other_routes_keep_64_kb(app, seeded, campaign):
    client = app.test_client()
    limit = app.extensions["telephony.config"].contact_import_max_bytes
    assert limit == 25 * 1024 * 1024
    over = b"phone\n" + b"+12125550100\n" * (limit // 13 + 1)
    for send in (lambda: client.post(contacts_url(campaign), data=over, headers=seeded.headers(**CSV)),
                 lambda: client.post(contacts_url(campaign), input_stream=io.BytesIO(over),
                                     headers=seeded.headers(**CSV, **CHUNKED),
                                     environ_overrides={"CONTENT_LENGTH": "", "wsgi.input_terminated": True})):
        response = send()
        assert response.status_code == 413
        assert response.json == {"error": "Request body too large", "code": "payload_too_large"}
    # A chunked body within the import limit is imported whole.
    body = big_csv(3_000)
    chunked = client.post(contacts_url(campaign), input_stream=io.BytesIO(body),
                          headers=seeded.headers(**CSV, **CHUNKED),
                          environ_overrides={"CONTENT_LENGTH": "", "wsgi.input_terminated": True})
    assert chunked.status_code == 202, chunked.json
    assert chunked.json["size_bytes"] == len(body)
    with app.extensions["telephony.db"].session() as session:
        assert session.scalar(select(func.count()).select_from(ContactImport)) == 1
    # Creating a campaign with its contacts inline is still held to the API's 64 KB.
    items = [{"phone": phone(n)} for n in range(3_000)]
    assert client.post("/api/v1/campaigns", json={"name": "Big", "agent_id": "x", "contacts": items},
                       headers=seeded.headers()).status_code == 413


def test_a_configured_limit_applies(app, seeded, campaign, config, tmp_path):
    from telephony import create_app
    small = create_app(config.with_overrides(contact_import_max_bytes=100 * 1024),
                       instance_path=str(tmp_path / "small-limit"))
    client = small.test_client()
    assert client.post(contacts_url(campaign), data=big_csv(3_000),
                       headers=seeded.headers(**CSV)).status_code == 413
    assert client.post(contacts_url(campaign), data=big_csv(2_000),
                       headers=seeded.headers(**CSV)).status_code == 202
    small.extensions["telephony.db"].dispose()


def test_an_input_refused_as_a_whole_adds_nothing_even_after_valid_rows(app, seeded, campaign, monkeypatch):
    monkeypatch.setattr(imports, "BATCH_ROWS", 100)  # many batches would be committed before the bad line
    client = app.test_client()
    body = big_csv(3_000, extra='+12125559999,"unterminated\n')
    started = client.post(contacts_url(campaign), data=body, headers=seeded.headers(**CSV)).json
    run_jobs(app)
    failed = client.get(f"/api/v1/campaigns/{campaign['id']}/imports/{started['id']}", headers=seeded.headers()).json
    assert failed["status"] == "failed" and failed["imported"] == 0
    assert failed["error"]["line"] == 3_002 and "unreadable CSV" in failed["error"]["message"]
    assert contact_count(app, campaign) == 0
    # Not UTF-8: refused too.
    latin1 = client.post(contacts_url(campaign), data=big_csv(3_000) + "+12125559998,Zoë\n".encode("latin-1"),
                         headers=seeded.headers(**CSV)).json
    run_jobs(app)
    refused = client.get(f"/api/v1/campaigns/{campaign['id']}/imports/{latin1['id']}", headers=seeded.headers()).json
    assert refused["status"] == "failed" and "UTF-8" in refused["error"]["message"]
    assert contact_count(app, campaign) == 0


def test_duplicates_across_batches_and_the_campaign_and_do_not_call(app, seeded, monkeypatch):
    monkeypatch.setattr(imports, "BATCH_ROWS", 500)
    client = app.test_client()
    campaign = create_campaign(client, seeded, [{"phone": phone(2_500)}], start=False)
    client.post("/api/v1/do-not-call", json={"phones": [phone(42)]}, headers=seeded.headers())
    body = big_csv(3_000, extra=f"{phone(5)},Later,,,\n")   # a repeat, 3,000 rows (six batches) later
    started = client.post(contacts_url(campaign), data=body, headers=seeded.headers(**CSV)).json
    run_jobs(app)
    done = client.get(f"/api/v1/campaigns/{campaign['id']}/imports/{started['id']}", headers=seeded.headers()).json
    assert done["rejected_by_kind"] == {"error": 0, "duplicate": 2, "suppressed": 1}
    assert done["imported"] == 2_998 and contact_count(app, campaign) == 2_999
    rejected = {(r["row"], r["kind"]) for r in rejected_csv(client, done, seeded.headers())}
    assert rejected == {("44", "suppressed"), ("2502", "duplicate"), ("3002", "duplicate")}


def test_a_worker_that_dies_mid_import_is_resumed_exactly(app, seeded, campaign, monkeypatch):
    monkeypatch.setattr(imports, "BATCH_ROWS", 250)
    client = app.test_client()
    started = client.post(contacts_url(campaign), data=big_csv(3_000, extra="bad,,,,\n"),
                          headers=seeded.headers(**CSV)).json
    real_apply = imports._apply_batch
    applied = []

    def dies_after_four(*args, **kwargs):
        if len(applied) == 4:
            raise RuntimeError("worker killed")
        applied.append(1)
        return real_apply(*args, **kwargs)

    monkeypatch.setattr(imports, "_apply_batch", dies_after_four)
    with pytest.raises(RuntimeError):
        run_jobs(app)
    url = f"/api/v1/campaigns/{campaign['id']}/imports/{started['id']}"
    halfway = client.get(url, headers=seeded.headers()).json
    assert (halfway["status"], halfway["imported"]) == ("importing", 1_000)
    monkeypatch.setattr(imports, "_apply_batch", real_apply)
    run_jobs(app)   # the job, claimed again
    done = client.get(url, headers=seeded.headers()).json
    assert (done["status"], done["rows"], done["imported"], done["rejected"]) == ("done", 3_001, 3_000, 1)
    assert contact_count(app, campaign) == 3_000
    assert [r["row"] for r in rejected_csv(client, done, seeded.headers())] == ["3002"]
    run_jobs(app)   # a finished import is left alone
    assert client.get(url, headers=seeded.headers()).json == done


def test_an_agency_cannot_see_or_use_another_agencys_import(app, seeded, campaign):
    client = app.test_client()
    other = seed_agency(app, name="B", number="+14155550177")
    started = client.post(contacts_url(campaign), data=big_csv(3_000, extra="bad,,,,\n"),
                          headers=seeded.headers(**CSV)).json
    run_jobs(app)
    base = f"/api/v1/campaigns/{campaign['id']}/imports"
    for path in (base, f"{base}/{started['id']}", f"{base}/{started['id']}/rejected"):
        assert client.get(path, headers=seeded.headers()).status_code == 200
        response = client.get(path, headers=other.headers())
        assert response.status_code == 404 and b"bad" not in response.data
    # Nor through a campaign of its own.
    own = create_campaign(client, other, [], start=False)
    assert client.get(f"/api/v1/campaigns/{own['id']}/imports/{started['id']}",
                      headers=other.headers()).status_code == 404
    assert client.post(contacts_url(campaign), data=big_csv(3_000), headers=other.headers(**CSV)).status_code == 404


def test_a_cancelled_campaign_takes_no_import(app, seeded, campaign):
    client = app.test_client()
    started = client.post(contacts_url(campaign), data=big_csv(3_000), headers=seeded.headers(**CSV)).json
    client.post(f"/api/v1/campaigns/{campaign['id']}/resume", headers=seeded.headers())
    client.post(f"/api/v1/campaigns/{campaign['id']}/cancel", headers=seeded.headers())
    run_jobs(app)
    url = f"/api/v1/campaigns/{campaign['id']}/imports/{started['id']}"
    assert client.get(url, headers=seeded.headers()).json["status"] == "failed"
    assert contact_count(app, campaign) == 0
    assert client.post(contacts_url(campaign), data=big_csv(3_000),
                       headers=seeded.headers(**CSV)).status_code == 409


def test_an_import_whose_job_failed_for_good_shows_failed(app, seeded, campaign):
    client = app.test_client()
    started = client.post(contacts_url(campaign), data=big_csv(3_000), headers=seeded.headers(**CSV)).json
    with app.extensions["telephony.db"].session() as session:
        session.get_one(Job, session.scalar(select(ContactImport.job_id))).status = "failed"
    shown = client.get(f"/api/v1/campaigns/{campaign['id']}/imports/{started['id']}",
                       headers=seeded.headers()).json
    assert shown["status"] == "failed" and "internal error" in shown["error"]["message"]


def test_rejected_rows_csv_defuses_spreadsheet_formulas():
    assert imports._cell("=HYPERLINK(\"x\")") == "'=HYPERLINK(\"x\")"
    assert imports._cell("@SUM(A1)") == "'@SUM(A1)"
    assert imports._cell("+1 (212) 555-0100") == "+1 (212) 555-0100"
    assert imports._cell("-") == "-" and imports._cell(None) == ""


def test_an_import_stops_when_its_campaign_is_cancelled_midway(app, seeded, campaign, monkeypatch):
    monkeypatch.setattr(imports, "BATCH_ROWS", 1_000)
    client = app.test_client()
    started = client.post(contacts_url(campaign), data=big_csv(3_000), headers=seeded.headers(**CSV)).json
    client.post(f"/api/v1/campaigns/{campaign['id']}/resume", headers=seeded.headers())
    real_read_ahead = imports._read_ahead

    def cancelled_once_the_first_batch_is_stored(batches):
        for number, batch in enumerate(real_read_ahead(batches)):
            if number == 1:
                assert client.post(f"/api/v1/campaigns/{campaign['id']}/cancel",
                                   headers=seeded.headers()).status_code == 200
            yield batch

    monkeypatch.setattr(imports, "_read_ahead", cancelled_once_the_first_batch_is_stored)
    run_jobs(app)
    stopped = client.get(f"/api/v1/campaigns/{campaign['id']}/imports/{started['id']}",
                         headers=seeded.headers()).json
    assert stopped["status"] == "failed" and "cancelled during the import" in stopped["error"]["message"]
    assert stopped["imported"] == 1_000 and contact_count(app, campaign) == 1_000
