"""Every gate boundary and every reason, on plain records (no Kafka)."""

from __future__ import annotations

import orjson
import pytest

from operators.parse import MAX_RAW_BYTES, parse
from operators.schema_gate import idempotency_key, parse_time, schema_gate
from operators.timestamp_gate import timestamp_gate
from schemas.record import Reason, Record, Status

INGESTED_MS = 1_780_000_000_000  # 2026-05-28T20:26:40Z
MIN_US = 60_000_000


def iso(us: int) -> str:
    s, frac = divmod(us, 1_000_000)
    from datetime import UTC, datetime
    return datetime.fromtimestamp(s, UTC).strftime("%Y-%m-%dT%H:%M:%S") + f".{frac:06d}Z"


def event(**overrides) -> dict:
    e = {"specversion": "1.0", "id": "e-1", "source": "sdk", "type": "api.call",
         "subject": "cust-1", "time": iso(INGESTED_MS * 1000), "tenantid": "acme",
         "data": {"n": 1}}
    e.update(overrides)
    return {k: v for k, v in e.items() if v is not ...}


def record(raw: bytes, ingested_ms: int = INGESTED_MS) -> Record:
    return parse(Record("raw", "tid", 0, 0, ingested_ms, raw))


KNOWN = {"acme": None, "globex": None}


def gate(e: dict, key_paths: dict | None = None) -> Record:
    return timestamp_gate(schema_gate(record(orjson.dumps(e)), key_paths or KNOWN))


# --- parse -----------------------------------------------------------------------------------

@pytest.mark.parametrize("raw, detail", [
    (b"", "not valid JSON"),
    (b"not json", "not valid JSON"),
    (b"\xff\xfe{}", "not valid JSON"),
    (b"[1,2]", "JSON array"),
    (b'"text"', "JSON string"),
    (b"42", "JSON number"),
    (b"null", "JSON null"),
    (b"[" * 5000 + b"]" * 5000, "not valid JSON"),  # nesting beyond the parser's depth limit
])
def test_malformed(raw, detail):
    r = record(raw)
    assert (r.status, r.reason) == (Status.REJECTED, Reason.MALFORMED)
    assert detail in r.detail


def test_over_one_mebibyte_is_too_large_and_exactly_one_is_not():
    filler = b" " * (MAX_RAW_BYTES - 2)
    assert record(b"{" + filler + b"}").status is None
    r = record(b"{" + filler + b" }")
    assert (r.status, r.reason) == (Status.REJECTED, Reason.TOO_LARGE)


def test_record_without_ingestion_timestamp_is_rejected():
    r = record(orjson.dumps(event()), ingested_ms=0)  # no create/log-append time: see raw_source
    assert (r.status, r.reason) == (Status.REJECTED, Reason.MALFORMED)


# --- schema ----------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["specversion", "id", "source", "type", "subject", "time", "tenantid"])
@pytest.mark.parametrize("value, problem", [(..., "missing"), ("", "empty"), (7, "must be a string"),
                                            (None, "missing"), ("a\x00b", "NUL")])
def test_required_attribute(name, value, problem):
    r = gate(event(**{name: value}))
    assert (r.status, r.reason) == (Status.REJECTED, Reason.SCHEMA)
    assert f"'{name}'" in r.detail and problem in r.detail


@pytest.mark.parametrize("name", ["id", "source", "tenantid"])
def test_indexed_attributes_are_at_most_800_bytes(name):
    """The ledger indexes (tenantid, source, id) and Postgres refuses a btree entry over 2704
    bytes: a longer attribute stalled its partition, its ledger write failing again and again."""
    known = {**KNOWN, "x" * 800: None, "€" * 266: None}
    for fits in ("x" * 800, "€" * 266):  # 800 and 798 bytes
        assert gate(event(**{name: fits}), known).status is None
    for too_long, size in (("x" * 801, 801), ("€" * 267, 801), ("x" * 200_000, 200_000)):
        r = gate(event(**{name: too_long}), known)
        assert (r.status, r.reason, r.detail) == (
            Status.REJECTED, Reason.SCHEMA, f"attribute '{name}' is {size} bytes long; at most 800")


def test_an_idempotency_key_too_long_once_encoded_is_rejected():
    escaped = gate(event(id="\x01" * 800))  # 800 bytes, 4,800 as JSON
    assert (escaped.status, escaped.reason) == (Status.REJECTED, Reason.SCHEMA)
    assert "the idempotency key is 4" in escaped.detail and "at most 2600" in escaped.detail
    by_path = {"acme": "$.request_id"}
    assert gate(event(data={"request_id": "r" * 2570}), by_path).status is None
    r = gate(event(data={"request_id": "r" * 2600}), by_path)
    assert (r.status, r.reason) == (Status.REJECTED, Reason.SCHEMA) and "idempotency key" in r.detail


@pytest.mark.parametrize("overrides, problem", [
    ({"specversion": "0.3"}, "specversion"),
    ({"time": "2026-05-28"}, "RFC 3339"),
    ({"time": "2026-05-28T20:26:40"}, "RFC 3339"),  # no offset
    ({"time": "20260528T202640Z"}, "RFC 3339"),  # basic format is ISO 8601, not RFC 3339
    ({"time": "2026-02-30T00:00:00Z"}, "out of range"),
    ({"data": [1]}, "'data'"),
    ({"data": "x"}, "'data'"),
])
def test_schema_problems_name_the_attribute(overrides, problem):
    r = gate(event(**overrides))
    assert (r.status, r.reason) == (Status.REJECTED, Reason.SCHEMA)
    assert problem in r.detail


def test_data_is_optional():
    assert gate(event(data=...)).status is None
    assert gate(event(data=None)).status is None


def test_rfc3339_offsets_and_fractions():
    assert parse_time("1970-01-01T00:00:00Z") == 0
    assert parse_time("1970-01-01T01:00:00+01:00") == 0
    assert parse_time("1969-12-31T23:00:00-01:00") == 0
    assert parse_time("1970-01-01t00:00:01.5z") == 1_500_000
    assert parse_time("1970-01-01T00:00:00.123456789Z") == 123_456  # truncated, deterministic


def test_default_idempotency_key_is_tenant_source_id():
    a = gate(event())
    b = gate(event(type="other", data={"n": 2}))
    c = gate(event(source="other"))
    assert a.dedup_key == b.dedup_key != c.dedup_key
    assert orjson.loads(a.dedup_key) == ["acme", "sdk", "e-1"]


def test_tenant_configured_key_path():
    paths = {"acme": "$.request.id", "globex": None}
    r = gate(event(data={"request": {"id": "r-9"}}), paths)
    assert r.status is None and orjson.loads(r.dedup_key) == ["acme", "$.request.id", "r-9"]
    # another tenant keeps the default key
    assert orjson.loads(gate(event(tenantid="globex"), paths).dedup_key)[1] == "sdk"
    missing = gate(event(data={"request": {}}), paths)
    assert (missing.status, missing.reason) == (Status.REJECTED, Reason.SCHEMA)
    assert "$.request.id" in missing.detail


def test_idempotency_key_is_unambiguous():
    # naive concatenation would make these collide
    assert idempotency_key({"tenantid": "a", "source": "b|c", "id": "d"}, None) != \
        idempotency_key({"tenantid": "a", "source": "b", "id": "c|d"}, None)


# --- timestamp -------------------------------------------------------------------------------

NOW_US = INGESTED_MS * 1000
DAY_US = 24 * 60 * MIN_US


@pytest.mark.parametrize("offset_us, status, reason", [
    (5 * MIN_US, None, None),                         # exactly 5 minutes ahead: accepted
    (5 * MIN_US + 1, Status.REJECTED, Reason.FUTURE_TIMESTAMP),
    (0, None, None),
    (-DAY_US, None, None),                            # exactly 24 hours late: accepted
    (-DAY_US - 1, Status.LATE, Reason.LATE_ARRIVAL),
    (-90 * DAY_US, Status.LATE, Reason.LATE_ARRIVAL),  # exactly 90 days: late, not too old
    (-90 * DAY_US - 1, Status.REJECTED, Reason.TOO_OLD),
])
def test_timestamp_boundaries(offset_us, status, reason):
    r = gate(event(time=iso(NOW_US + offset_us)))
    assert (r.status, r.reason) == (status, reason)


def test_gates_use_ingestion_time_not_the_wall_clock():
    # An event from 2020 ingested in 2020 is on time, whenever it is processed.
    r = Record("raw", "tid", 0, 0, 1_600_000_000_000, orjson.dumps(event(time="2020-09-13T12:26:40Z")))
    assert timestamp_gate(schema_gate(parse(r), KNOWN)).status is None


def test_unknown_tenant_is_rejected():
    r = gate(event(tenantid="initech"))
    assert (r.status, r.reason) == (Status.REJECTED, Reason.UNKNOWN_TENANT)
    assert "initech" in r.detail
