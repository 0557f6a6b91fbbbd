"""Bulk uploads: CSV, a JSON array or NDJSON, read as a stream (never whole in memory), one raw
record per row, each row keeping its own `time`. Tier `upload`.

Rows are produced as they are read, so a bad row cannot hold back the good ones: it is skipped
and reported with its line number and why (a row that is not valid UTF-8 too). Only a problem that
makes the rest of the file unreadable (a broken JSON array, a CSV line over 1 MiB, a body that
cannot be read further, such as broken gzip) stops the upload; the report names where, and the
rows before it were produced. A problem with the CSV header or the mapping refuses the upload
before anything is produced.

CSV column mapping (`mapping`, JSON):

    {"columns": {"id": "event_id", "subject": "customer", "time": "ts", "type": "kind",
                 "data.tokens": "tokens", "data.model": "model"},
     "defaults": {"source": "billing-export", "type": "llm.completion"}}

`columns` maps an event field (a CloudEvents attribute, or `data.<name>`) to a CSV column; only
mapped columns are read. Without a mapping, columns named like an attribute (`id`, `source`,
`type`, `subject`, `time`, `tenantid`, `specversion`) are that attribute, `data.<name>` columns
are data fields, and every other column is a data field of its own name. `defaults` fill fields
that are not mapped or whose cell is empty; `specversion` defaults to "1.0" and `source` to
"upload". Empty cells are left out. Values stay strings (the pipeline's metrics read numbers
from strings).
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import BinaryIO

from pydantic import BaseModel

from api.cloudevents import BOM, MAX_EVENT_BYTES, SPECVERSION, admit
from api.limits import check_depth
from schemas import exact_json
from sinks.raw_producer import MAX_KEPT_ERRORS, RawProducer

FORMATS = ("csv", "json", "ndjson")
MEDIA_TYPES = {"text/csv": "csv", "application/csv": "csv", "application/json": "json",
               "application/x-ndjson": "ndjson", "application/ndjson": "ndjson",
               "application/jsonl": "ndjson", "application/json-seq": "ndjson"}
ATTRIBUTES = ("specversion", "id", "source", "type", "subject", "time", "tenantid")
DEFAULTS = {"specversion": SPECVERSION, "source": "upload"}
CHUNK = 256 * 1024
MAX_LINE = MAX_EVENT_BYTES
# A CSV field may be as long as its row may be (the csv module's default limit is 128 KiB).
csv.field_size_limit(MAX_LINE)


class UploadError(ValueError):
    """The upload cannot start (the API answers 400 before producing anything)."""


class BodyError(OSError):
    """The body cannot be read further (broken gzip, the client went away): the upload stops there."""


@dataclass(frozen=True)
class Row:
    line: int  # 1-based line where the row starts
    value: object = None
    error: str | None = None
    fatal: bool = False  # the rest of the file cannot be read
    raw: bytes | None = None  # a JSON row's own bytes, produced as they are (a CSV row is encoded)


def format_of(fmt: str | None, content_type: str | None) -> str:
    if fmt:
        if fmt not in FORMATS:
            raise UploadError(f"format must be one of {', '.join(FORMATS)}, got {fmt!r}")
        return fmt
    media = (content_type or "").split(";", 1)[0].strip().lower()
    if media not in MEDIA_TYPES:
        raise UploadError(f"cannot tell the format from Content-Type {media!r}: give format=csv|json|ndjson")
    return MEDIA_TYPES[media]


def _json_row(line: int, raw: bytes) -> Row:
    """A JSON row, numbers exact (schemas.exact_json), keeping its bytes without surrounding whitespace."""
    try:
        value = exact_json.loads(raw)
        check_depth(value)
    except ValueError as exc:
        return Row(line, error=str(exc))
    return Row(line, value, raw=raw.strip(_WS))


# --- NDJSON ------------------------------------------------------------------------------------

def ndjson_rows(stream: BinaryIO) -> Iterator[Row]:
    """One JSON value per line; blank lines are skipped; a line over 1 MiB is a bad row. A byte
    order mark before the first line is ignored, as in the other formats."""
    number = 0
    while line := stream.readline(MAX_LINE + 1):
        number += 1
        if number == 1:
            line = line.removeprefix(BOM)
        if len(line) > MAX_LINE and not line.endswith(b"\n"):
            while (rest := stream.readline(CHUNK)) and not rest.endswith(b"\n"):
                pass  # discard the rest of the oversized line without holding it
            yield Row(number, error=f"line is longer than {MAX_LINE} bytes")
            continue
        if line.strip():
            yield _json_row(number, line)


# --- a JSON array, element by element ---------------------------------------------------------

# A complete string (skipped whole, so brackets inside strings do not count), a structural
# character, or a lone quote: a string that continues past the buffer.
_TOKEN = re.compile(rb'"[^"\\]*+(?:\\.[^"\\]*+)*+"|[\[\]{},"]', re.DOTALL)
_WS = b" \t\r\n"


@dataclass
class _ArrayScanner:
    stream: BinaryIO
    buf: bytes = b""
    pos: int = 0
    eof: bool = False
    line: int = 1  # line number at `counted`
    counted: int = 0

    def fill(self) -> bool:
        """Read more, dropping what was consumed; False at end of stream."""
        if self.eof:
            return False
        chunk = self.stream.read(CHUNK)
        if not chunk:
            self.eof = True
            return False
        self.line_at(self.pos)
        self.buf, self.counted = self.buf[self.pos:] + chunk, 0
        self.pos = 0
        return True

    def line_at(self, pos: int) -> int:
        self.line += self.buf.count(b"\n", self.counted, pos)
        self.counted = pos
        return self.line

    def peek(self) -> int | None:
        """The next non-whitespace byte (not consumed), None at end of stream."""
        while True:
            while self.pos < len(self.buf) and self.buf[self.pos] in _WS:
                self.pos += 1
            if self.pos < len(self.buf):
                return self.buf[self.pos]
            if not self.fill():
                return None

    def element_end(self) -> int | None:
        """Position of the `,` or `]` ending the element at pos; None if the buffer ends first."""
        depth = 0
        for m in _TOKEN.finditer(self.buf, self.pos):
            tok = m.group()
            if tok == b'"':
                return None
            if tok in (b"[", b"{"):
                depth += 1
            elif tok in (b"]", b"}"):
                if depth == 0 and tok == b"]":
                    return m.start()
                depth = max(0, depth - 1)
            elif tok == b"," and depth == 0:
                return m.start()
        return None


def json_array_rows(stream: BinaryIO) -> Iterator[Row]:
    """The elements of a top-level JSON array, each with the line it starts on."""
    s = _ArrayScanner(stream)
    while len(s.buf) < 3 and s.fill():
        pass
    if s.buf.startswith(BOM):
        s.pos = len(BOM)
    if s.peek() != ord("["):
        yield Row(s.line_at(s.pos), error="a JSON upload must be an array of events", fatal=True)
        return
    s.pos += 1
    if s.peek() == ord("]"):
        s.pos += 1
    else:
        while True:
            if s.peek() is None:
                yield Row(s.line_at(s.pos), error="the JSON array is not closed", fatal=True)
                return
            end = s.element_end()
            while end is None:
                if len(s.buf) - s.pos > MAX_LINE:
                    yield Row(s.line_at(s.pos), fatal=True,
                              error=f"an element is larger than {MAX_LINE} bytes")
                    return
                if not s.fill():
                    yield Row(s.line_at(s.pos), error="the JSON array is not closed", fatal=True)
                    return
                end = s.element_end()
            yield _json_row(s.line_at(s.pos), s.buf[s.pos:end])
            closing = s.buf[end] == ord("]")
            s.pos = end + 1
            if closing:
                break
    if s.peek() is not None:
        yield Row(s.line_at(s.pos), error="data after the end of the JSON array", fatal=True)


# --- CSV ---------------------------------------------------------------------------------------

@dataclass(frozen=True)
class CsvMapping:
    columns: dict[str, str]  # event field -> CSV column
    defaults: dict[str, str] = field(default_factory=dict)


def _field_ok(name: str) -> bool:
    return name in ATTRIBUTES or (name.startswith("data.") and len(name) > 5)


def parse_csv_mapping(doc: object) -> CsvMapping:
    """UploadError naming the first problem."""
    if not isinstance(doc, dict) or set(doc) - {"columns", "defaults"}:
        raise UploadError('a CSV mapping is {"columns": {field: column}, "defaults": {field: value}}')
    columns, defaults = doc.get("columns", {}), doc.get("defaults", {})
    for what, entries in (("columns", columns), ("defaults", defaults)):
        if not isinstance(entries, dict) or not all(isinstance(v, str) for v in entries.values()):
            raise UploadError(f"mapping {what} must be an object of strings")
        bad = [k for k in entries if not _field_ok(k)]
        if bad:
            raise UploadError(f"mapping {what}: {bad[0]!r} is not an event field "
                              f"({', '.join(ATTRIBUTES)} or data.<name>)")
    return CsvMapping(columns, defaults)


def default_mapping(header: list[str]) -> CsvMapping:
    """Each named column as the field it names; UploadError when two name one field."""
    columns: dict[str, str] = {}
    for column in filter(None, header):
        name = column if _field_ok(column) else f"data.{column}"
        if columns.setdefault(name, column) != column:
            raise UploadError(f"CSV columns {columns[name]!r} and {column!r} are both the event field "
                              f"{name!r}")
    return CsvMapping(columns)


# surrogateescape decodes a byte that is not UTF-8 as one of these (valid UTF-8 never gives one),
# so a row that is not UTF-8 is found and refused alone, by its own line.
_NOT_UTF8 = re.compile("[\udc80-\udcff]")


def _utf8_problem(record: list[str]) -> str | None:
    for number, value in enumerate(record, 1):
        if bad := _NOT_UTF8.search(value):
            return f"not valid UTF-8: byte 0x{ord(bad.group()) - 0xdc00:02x} in field {number}"
    return None


def _event(values: dict[str, str], defaults: dict[str, str]) -> dict:
    event: dict = {}
    data: dict = {}
    for name, value in {**DEFAULTS, **defaults, **values}.items():
        if name.startswith("data."):
            data[name[5:]] = value
        else:
            event[name] = value
    if data:
        event["data"] = data
    return event


def _bounded_lines(text: io.TextIOBase) -> Iterator[str]:
    number = 0
    while line := text.readline(MAX_LINE + 1):
        number += 1
        if len(line) > MAX_LINE:
            raise UploadError(f"line {number} is longer than {MAX_LINE} characters")
        yield line


def csv_rows(stream: BinaryIO, mapping: CsvMapping | None) -> Iterator[Row]:
    """The header first (UploadError when it cannot be read, or a column the mapping reads is
    missing or repeated), then one event per record, empty cells left out."""
    text = io.TextIOWrapper(stream, encoding="utf-8-sig", errors="surrogateescape", newline="")
    reader = csv.reader(_bounded_lines(text))
    try:
        header = next(reader)
    except StopIteration:
        raise UploadError("the CSV file is empty: it needs a header line") from None
    except csv.Error as exc:
        raise UploadError(f"the CSV header cannot be read: {exc}") from None
    if problem := _utf8_problem(header):
        raise UploadError(f"the CSV header is {problem}")
    mapping = mapping or default_mapping(header)
    missing = [c for c in mapping.columns.values() if c not in header]
    if missing:
        raise UploadError(f"mapped column {missing[0]!r} is not in the CSV header")
    repeated = [c for c in mapping.columns.values() if header.count(c) > 1]
    if repeated:
        raise UploadError(f"column {repeated[0]!r} appears {header.count(repeated[0])} times in the CSV "
                          "header: rename one, or map the columns to read")
    index = {name: header.index(column) for name, column in mapping.columns.items()}
    start = reader.line_num + 1
    while True:
        try:
            record = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            yield Row(start, error=f"CSV: {exc}")
            start = reader.line_num + 1
            continue
        except UploadError as exc:
            yield Row(start, error=str(exc), fatal=True)
            return
        line, start = start, reader.line_num + 1
        if not any(record):
            continue  # blank line
        if problem := _utf8_problem(record):
            yield Row(line, error=problem)
            continue
        if len(record) != len(header):
            yield Row(line, error=f"the row has {len(record)} fields, the header {len(header)}")
            continue
        yield Row(line, _event({n: record[i] for n, i in index.items() if record[i] != ""}, mapping.defaults))


def rows_of(stream: BinaryIO, fmt: str, mapping: CsvMapping | None) -> Iterator[Row]:
    if fmt == "csv":
        return csv_rows(stream, mapping)
    if mapping is not None:
        raise UploadError("a column mapping applies to CSV uploads only")
    return json_array_rows(stream) if fmt == "json" else ndjson_rows(stream)


# --- producing ---------------------------------------------------------------------------------

class BadRow(BaseModel):
    line: int
    error: str


class UploadReport(BaseModel):
    """What became of an upload: rows read, produced (acknowledged by the broker) and refused."""

    format: str
    rows: int = 0
    produced: int = 0
    bad_rows: int = 0
    errors: list[BadRow] = []  # the first 1000 bad rows
    stopped: BadRow | None = None  # the problem that made the rest of the file unreadable
    not_acknowledged: int = 0
    not_acknowledged_rows: list[BadRow] = []  # may be uploaded again: the pipeline dedups by id

    def refuse(self, line: int, error: str) -> None:
        self.bad_rows += 1
        if len(self.errors) < MAX_KEPT_ERRORS:
            self.errors.append(BadRow(line=line, error=error))


def event_bytes(row: Row, tenant: str | None) -> bytes:
    """A row's raw record: the bytes the row was written as (a JSON row) or the event it builds (a
    CSV row), admitted for the tenant (ValueError for a row that is not an event or is too large,
    PermissionError for another tenant's). Uploads and backfills alike."""
    raw = admit(row.value, tenant, row.raw)
    if len(raw) > MAX_EVENT_BYTES:
        raise ValueError(f"the event is larger than {MAX_EVENT_BYTES} bytes")
    return raw


def _good_rows(rows: Iterator[Row], tenant: str | None, report: UploadReport) -> Iterator[tuple[int, bytes]]:
    """(line, raw record) of every row that can be produced; the others go to the report."""
    line = 0
    try:
        for row in rows:
            if row.fatal:
                report.stopped = BadRow(line=row.line, error=row.error or "")
                return
            line = row.line
            report.rows += 1
            if row.error is not None:
                report.refuse(row.line, row.error)
                continue
            try:
                raw = event_bytes(row, tenant)
            except (ValueError, PermissionError) as exc:
                report.refuse(row.line, str(exc))
                continue
            yield row.line, raw
    except BodyError as exc:  # what was produced stays produced: the report says how far it got
        report.stopped = BadRow(line=line + 1, error=f"the body cannot be read after line {line}: {exc}")


def run_upload(rows: Iterator[Row], fmt: str, tenant: str | None, producer: RawProducer,
               tier: str = "upload") -> UploadReport:
    """Produce every good row as it is read (stamped with the time it was read); blocks until the
    broker has reported on each. `tenant` None (the CLI without --tenant) leaves rows as they are."""
    report = UploadReport(format=fmt)
    acks = producer.send(_good_rows(rows, tenant, report), tier)
    report.produced = acks.acked
    report.not_acknowledged = acks.sent - acks.acked
    report.not_acknowledged_rows = [BadRow(line=line, error=error)
                                    for line, error in sorted(acks.errors.items())]
    return report
