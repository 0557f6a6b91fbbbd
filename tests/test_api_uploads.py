"""Uploads: CSV (with and without a column mapping), JSON arrays and NDJSON read as streams, bad
rows reported by line, and uploaded rows through the pipeline keeping their own time."""

from __future__ import annotations

import gzip
import io
from datetime import UTC, datetime, timedelta

import orjson
import pytest
from click.testing import CliRunner
from integration import env_of, raw_values
from test_api_helpers import open_api

from api.uploads import (
    CsvMapping,
    UploadError,
    csv_rows,
    json_array_rows,
    ndjson_rows,
    parse_csv_mapping,
)
from cli.api_commands import upload
from flows.metering import run
from sinks.postgres import connect


class Trickle(io.RawIOBase):
    """A stream that hands out a few bytes per read, so every buffer boundary gets crossed."""

    def __init__(self, data: bytes, step: int = 7):
        self._data, self._pos, self._step = data, 0, step

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        chunk = self._data[self._pos:self._pos + min(self._step, len(buffer))]
        buffer[:len(chunk)] = chunk
        self._pos += len(chunk)
        return len(chunk)


def _rows(rows) -> list[tuple]:
    return [(r.line, r.value, r.error, r.fatal) for r in rows]


def test_ndjson_rows_keep_line_numbers_and_report_bad_lines():
    data = b'{"id": "a"}\n\nnot json\n[1]\n' + b'{"pad": "' + b"x" * (1024 * 1024 + 10) + b'"}\n{"id": "b"}'
    rows = _rows(ndjson_rows(io.BufferedReader(Trickle(data, 4096))))
    assert [(line, value) for line, value, _e, _f in rows] == [
        (1, {"id": "a"}), (3, None), (4, [1]), (5, None), (6, {"id": "b"})]
    assert "not valid JSON" in rows[1][2] and "longer than" in rows[3][2]


def test_json_array_is_read_element_by_element_across_any_boundary():
    data = (b'\xef\xbb\xbf [\n {"id": "a", "s": "]},[\\"{"},\n  {"id": \n "b"},\n 5,\n {"broken": }\n'
            b' ,{"id": "c"}]  \n')
    for step in (1, 3, 64, 10_000):
        rows = _rows(json_array_rows(Trickle(data, step)))
        assert [(line, value, fatal) for line, value, _e, fatal in rows] == [
            (2, {"id": "a", "s": ']},["{'}, False), (3, {"id": "b"}, False), (5, 5, False),
            (6, None, False), (7, {"id": "c"}, False)], step
    assert _rows(json_array_rows(Trickle(b"[]"))) == []


@pytest.mark.parametrize("data, problem", [
    (b'{"id": 1}', "must be an array"), (b'[{"id": 1},', "not closed"), (b'[{"id": "1}]', "not closed"),
    (b"[1] [2]", "after the end"), (b"", "must be an array"),
])
def test_json_array_that_cannot_be_read_stops_with_where(data, problem):
    rows = list(json_array_rows(Trickle(data)))
    assert rows[-1].fatal and problem in rows[-1].error


def test_csv_default_mapping():
    data = ("id,time,subject,type,tokens,data.model\n"
            "e1,2026-11-30T10:00:00Z,cust-1,llm.completion,1200,gpt-4o\n"
            "e2,2026-11-30T10:01:00Z,cust-1,llm.completion,,gpt-4o\n\ne3,oops\n")
    rows = list(csv_rows(io.BufferedReader(Trickle(data.encode(), 5)), None))
    assert rows[0].line == 2 and rows[0].value == {
        "specversion": "1.0", "source": "upload", "id": "e1", "time": "2026-11-30T10:00:00Z",
        "subject": "cust-1", "type": "llm.completion", "data": {"tokens": "1200", "model": "gpt-4o"}}
    assert rows[1].value["data"] == {"model": "gpt-4o"}  # an empty cell is left out
    assert (rows[2].line, rows[2].error) == (5, "the row has 2 fields, the header 6")


def test_csv_with_mapping_and_quoted_newlines():
    mapping = parse_csv_mapping({"columns": {"id": "Event ID", "subject": "Customer", "time": "When",
                                             "data.tokens": "Tokens"},
                                 "defaults": {"type": "llm.completion", "source": "export"}})
    data = 'Event ID,Customer,When,Tokens,Note\nx1,cust-2,2026-11-30T10:00:00Z,5,"two\nlines"\n' \
           'x2,cust-3,2026-11-30T11:00:00Z,7,ok\n'
    rows = list(csv_rows(io.BufferedReader(Trickle(data.encode())), mapping))
    assert [(r.line, r.value["id"], r.value["type"], r.value["source"]) for r in rows] == [
        (2, "x1", "llm.completion", "export"), (4, "x2", "llm.completion", "export")]
    assert rows[0].value["data"] == {"tokens": "5"}  # unmapped columns are not read
    with pytest.raises(UploadError, match="'Missing'"):
        list(csv_rows(io.BytesIO(data.encode()), CsvMapping({"id": "Missing"})))


@pytest.mark.parametrize("doc, problem", [
    ([], "a CSV mapping is"), ({"columns": {"colour": "c"}}, "not an event field"),
    ({"columns": {"id": 5}}, "object of strings"), ({"defaults": {"data.": "x"}}, "not an event field"),
])
def test_bad_csv_mappings(doc, problem):
    with pytest.raises(UploadError, match=problem):
        parse_csv_mapping(doc)


def test_a_csv_row_that_is_not_utf8_is_refused_alone_by_its_line():
    """It was decoded a buffer at a time: the upload stopped at the first row of the buffer holding
    the bad byte (20 good rows earlier, never produced), and within the first 8 KiB it was called
    an unreadable header."""
    good = b"".join(b"id-%05d,cust-1\n" % i for i in range(2000))
    rows = list(csv_rows(io.BytesIO(b"id,subject\n" + good + b"bad,c\xffx\nlast,cust-1\n"), None))
    assert [r.value["id"] for r in rows if r.value] == [f"id-{i:05d}" for i in range(2000)] + ["last"]
    assert [(r.line, r.error, r.fatal) for r in rows if r.error] == [
        (2002, "not valid UTF-8: byte 0xff in field 2", False)]
    rows = list(csv_rows(io.BytesIO(b"id,subject\nok,cust-1\nbad,c\xe9\n"), None))
    assert [(r.line, r.value, r.error) for r in rows] == [
        (2, {"specversion": "1.0", "source": "upload", "id": "ok", "subject": "cust-1"}, None),
        (3, None, "not valid UTF-8: byte 0xe9 in field 2")]
    with pytest.raises(UploadError, match="header is not valid UTF-8: byte 0xff in field 2"):
        list(csv_rows(io.BytesIO(b"id,\xff\n"), None))


@pytest.mark.parametrize("header, mapping, problem", [
    ("id,subject,id", None, "column 'id' appears 2 times"),
    ("tokens,subject,data.tokens", None, "'tokens' and 'data.tokens' are both the event field 'data.tokens'"),
    ("a,subject,a", {"id": "a"}, "column 'a' appears 2 times"),
])
def test_a_csv_column_read_twice_is_refused_not_guessed(header, mapping, problem):
    data = f"{header}\n1,cust-1,2\n".encode()
    with pytest.raises(UploadError, match=problem):
        list(csv_rows(io.BytesIO(data), mapping and CsvMapping(mapping)))
    # a repeated column the mapping does not read is no ambiguity
    [row] = csv_rows(io.BytesIO(data), CsvMapping({"subject": "subject"}))
    assert row.value == {"specversion": "1.0", "source": "upload", "subject": "cust-1"}


def test_csv_and_ndjson_edges():
    """A field as long as a row may be (it was refused over 128 KiB); a BOM, CRLF line ends, blank
    lines and no final newline; a header and nothing else."""
    big = "x" * 500_000
    [row] = csv_rows(io.BytesIO(f"id,note\nb1,{big}\n".encode()), None)
    assert row.value["data"] == {"note": big}
    rows = list(csv_rows(io.BytesIO(b"\xef\xbb\xbfid,subject\r\na,c1\r\n\r\nb,c2"), None))
    assert [(r.line, r.value["id"], r.value["subject"]) for r in rows] == [(2, "a", "c1"), (4, "b", "c2")]
    assert list(csv_rows(io.BytesIO(b"id,subject"), None)) == []
    # the NDJSON BOM, like the others', is ignored (the first line was a bad row), never produced
    rows = list(ndjson_rows(io.BytesIO(b'\xef\xbb\xbf{"id": "a"}\r\n\r\n{"id": "b"}')))
    assert [(r.line, r.value, r.raw) for r in rows] == [(1, {"id": "a"}, b'{"id": "a"}'),
                                                         (3, {"id": "b"}, b'{"id": "b"}')]


# --- through the API and the pipeline -----------------------------------------------------------

@pytest.fixture
def api_app(settings):
    yield from open_api(settings)


def _at(minutes_ago: int) -> str:
    return (datetime.now(UTC) - timedelta(minutes=minutes_ago)).isoformat()


@pytest.mark.integration
def test_uploads_end_to_end(api_app):
    client, s, auth = api_app.client, api_app.settings, api_app.auth
    csv_body = (f"event_id,customer,ts,tokens\nc-1,cust-1,{_at(30)},100\nc-2,cust-2,{_at(20)},250\n"
                "c-3,broken\n").encode()
    mapping = orjson.dumps({"columns": {"id": "event_id", "subject": "customer", "time": "ts",
                                        "data.tokens": "tokens"},
                            "defaults": {"type": "llm.completion", "source": "billing-csv",
                                         "data.model": "gpt-4o"}}).decode()

    def chunks(data: bytes):  # sent as a stream (chunked), as a large file would be
        for i in range(0, len(data), 16):
            yield data[i:i + 16]

    r = client.post("/v1/uploads", params={"mapping": mapping}, content=chunks(csv_body),
                    headers={**auth, "Content-Type": "text/csv"})
    assert r.status_code == 202, r.text
    report = r.json()
    assert (report["rows"], report["produced"], report["bad_rows"]) == (3, 2, 1)
    assert report["errors"] == [{"line": 4, "error": "the row has 2 fields, the header 4"}]

    ndjson = b"\n".join(orjson.dumps({"specversion": "1.0", "id": f"n-{i}", "source": "batch",
                                      "type": "api.call", "subject": "cust-3", "time": _at(i)})
                         for i in range(5))
    ndjson += b'\n{"tenantid": "globex", "id": "foreign"}\n'
    r = client.post("/v1/uploads", params={"format": "ndjson"}, content=ndjson, headers=auth)
    assert r.status_code == 202 and r.json()["produced"] == 5
    assert r.json()["errors"][0]["line"] == 6 and "globex" in r.json()["errors"][0]["error"]

    array = orjson.dumps([{"specversion": "1.0", "id": "j-1", "source": "batch", "type": "api.call",
                           "subject": "cust-1", "time": _at(3)}])
    r = client.post("/v1/uploads", content=array, headers={**auth, "Content-Type": "application/json"})
    assert r.json()["produced"] == 1
    for bad in (client.post("/v1/uploads", content=b"x", headers={**auth, "Content-Type": "text/plain"}),
                client.post("/v1/uploads", params={"mapping": "{"}, content=csv_body,
                            headers={**auth, "Content-Type": "text/csv"}),
                client.post("/v1/uploads", params={"mapping": '{"columns": {"id": "nope"}}'},
                            content=csv_body, headers={**auth, "Content-Type": "text/csv"})):
        assert bad.status_code == 400, bad.text

    run(s, once=True)
    with connect(s.database_url) as conn:
        rows = conn.execute("SELECT event_id, tier, status, event_time FROM ledger ORDER BY 1").fetchall()
    assert [(i, tier, status) for i, tier, status, _ in rows] == [
        ("c-1", "upload", "accepted"), ("c-2", "upload", "accepted"), ("j-1", "upload", "accepted"),
        *[(f"n-{i}", "upload", "accepted") for i in range(5)]]
    times = {i: t for i, _, _, t in rows}
    assert times["n-4"] < times["n-0"]  # each row keeps its own time


def _exact_event(i: int, tenant: bytes = b' "tenantid": "acme",') -> bytes:
    return (b'{"specversion": "1.0", "id": "x-%d", "source": "batch", "type": "llm.completion",%s'
            b' "subject": "cust-1", "time": "2026-12-01T00:00:00Z",'
            b' "data": {"tokens": 1180591620717411303424, "cost": 12345678901234567.89, "huge": 1e400,'
            b' "note": "caf\\u00e9 \xe2\x98\x95"}}') % (i, tenant)


@pytest.mark.integration
def test_uploaded_json_rows_are_produced_as_the_bytes_sent(api_app):
    """No number passes through a binary float: each NDJSON line and each element of a JSON array
    is produced as it was written (a missing tenantid inserted first)."""
    client, s, auth = api_app.client, api_app.settings, api_app.auth
    ndjson = _exact_event(1) + b"\r\n" + _exact_event(2, tenant=b"") + b"\n"
    r = client.post("/v1/uploads", params={"format": "ndjson"}, content=ndjson, headers=auth)
    assert r.status_code == 202 and r.json()["produced"] == 2, r.text
    array = b"[" + _exact_event(3) + b",\n  " + _exact_event(4, tenant=b"") + b"\n]"
    r = client.post("/v1/uploads", content=array, headers={**auth, "Content-Type": "application/json"})
    assert r.status_code == 202 and r.json()["produced"] == 2, r.text
    with_tenant = b'{"tenantid":"acme",' + _exact_event(0, tenant=b"")[1:]
    assert sorted(value for value in raw_values(s)) == sorted([
        _exact_event(1), with_tenant.replace(b"x-0", b"x-2"),
        _exact_event(3), with_tenant.replace(b"x-0", b"x-4")])


@pytest.mark.integration
def test_an_upload_that_stops_midway_is_a_400_naming_what_was_produced(api_app):
    """A gzip body cut short was read as if it ended there (202, its last row cut: the tokens of a
    row lost), one of several gzip members was all that was read (202, the rest lost), and a body
    that stopped being readable after rows were produced was a bare 400 saying nothing was taken."""
    client, s, auth = api_app.client, api_app.settings, api_app.auth
    csv_headers = {**auth, "Content-Type": "text/csv", "Content-Encoding": "gzip"}
    rows = [f"g-{i},cust-1,{_at(5)},llm.completion,{1000 + i},gpt-4o\n" for i in range(3)]
    header = "id,subject,time,type,data.tokens,data.model\n"
    cut = gzip.compress((header + "".join(rows)).encode())[:-12]  # in the last row's deflate data
    r = client.post("/v1/uploads", content=cut, headers=csv_headers)
    assert r.status_code == 400, r.text
    report = r.json()
    assert (report["error"], report["rows"], report["produced"], report["stopped"]["line"]) == (
        "upload_stopped", 2, 2, 4)
    assert "truncated" in report["message"] and "2 rows produced before it" in report["message"]
    members = gzip.compress((header + rows[0]).encode()) + gzip.compress("".join(rows[1:]).encode())
    r = client.post("/v1/uploads", content=members, headers=csv_headers)
    assert r.status_code == 202 and r.json()["produced"] == 3, r.text
    broken = b'[' + orjson.dumps({"specversion": "1.0", "id": "j-1", "source": "s", "type": "api.call",
                                  "subject": "cust-1", "time": _at(3)}) + b',\n{"id": "j-2", "s": "]'
    r = client.post("/v1/uploads", content=broken, headers={**auth, "Content-Type": "application/json"})
    assert r.status_code == 400 and r.json()["produced"] == 1, r.text
    assert r.json()["stopped"] == {"line": 2, "error": "the JSON array is not closed"}

    run(s, once=True)
    with connect(s.database_url) as conn:
        rows = conn.execute("SELECT event_id, status, reason, l.quantity FROM ledger LEFT JOIN ledger_lines l"
                            " USING (raw_topic_id, raw_partition, raw_offset) ORDER BY 1, 2").fetchall()
    assert rows == [("g-0", "accepted", None, 1000), ("g-0", "duplicate", "same_payload", None),
                    ("g-1", "accepted", None, 1001), ("g-1", "duplicate", "same_payload", None),
                    ("g-2", "accepted", None, 1002), ("j-1", "accepted", None, 1)]


@pytest.mark.integration
def test_upload_command(settings, tmp_path):
    file = tmp_path / "usage.csv"
    file.write_text(f"id,subject,time,type\nu-1,cust-1,{_at(1)},api.call\nu-2,cust-2\n")
    result = CliRunner().invoke(upload, [str(file), "--tenant", "acme"], env=env_of(settings))
    assert result.exit_code == 0, result.output
    report = orjson.loads(result.output[result.output.index("{"):])
    assert (report["produced"], report["bad_rows"], report["errors"][0]["line"]) == (1, 1, 3)
    run(settings, once=True)
    with connect(settings.database_url) as conn:
        rows = conn.execute("SELECT event_id, tier, status FROM ledger").fetchall()
    assert rows == [("u-1", "upload", "accepted")]
