"""The tamper-evident audit trail: how a ledger row is hashed and how hashes chain.

Every write of a ledger row (a new row, or a later change such as a replay applied) appends an
entry to a chain: entry n carries the row's hash and chain_hash(n) = SHA-256(chain_hash(n-1) ||
row_hash), starting from 32 zero bytes. Editing a row changes its hash; deleting one leaves an
entry without its row; inserting one leaves a row without an entry; removing or reordering
entries breaks the links. There is one chain per tenant and raw partition (`<raw topic id>/
<partition>`), so the workers that write different partitions never wait for each other; a
tenant's trail is the set of its chains ('' names the single per-tenant chain of rows written
before chains were per partition).

A row's hash is SHA-256 over its canonical text: the row's AUDIT_COLUMNS as one line of
PostgreSQL COPY text (tab-separated, `\\N` for NULL, backslash escapes), then one such line per
revenue line (AUDIT_LINE_COLUMNS), by metric. That is exactly the text the ledger writer sends
to COPY, so hashing a row costs one SHA-256 of bytes that exist anyway. Column values have one
text each: decimals as fixed-point strings, times as UTC `YYYY-MM-DD HH:MM:SS.ffffff+00`, bytes
as `\\\\x` and hex, JSON with sorted keys; a verifier reading values back from Postgres or from
an export rebuilds the same text (`canonical_fields`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import orjson

from operators.timestamp_gate import to_us

# (column, Postgres type), in the ledger's column order.
AUDIT_TYPES = (
    ("raw_topic", "text"), ("raw_topic_id", "text"), ("raw_partition", "int4"), ("raw_offset", "int8"),
    ("raw_key", "bytea"), ("raw", "bytea"), ("ingested_at", "timestamptz"), ("status", "text"),
    ("reason", "text"), ("detail", "text"), ("tenantid", "text"), ("source", "text"),
    ("event_id", "text"), ("type", "text"), ("subject", "text"), ("event_time", "timestamptz"),
    ("dedup_key", "text"), ("payload_hash", "bytea"), ("route", "text"), ("validation_hash", "text"),
    ("customer", "text"), ("subscription", "text"), ("plan", "text"), ("plan_version", "int4"),
    ("currency", "text"), ("period", "text"), ("revenue", "numeric"), ("cost", "numeric"),
    ("margin", "numeric"), ("tier", "text"), ("reinject_of", "text"), ("adjusts_period", "text"),
    ("backfill", "text"),
)
AUDIT_LINE_TYPES = (
    ("metric", "text"), ("grp", "jsonb"), ("quantity", "numeric"), ("total_after", "numeric"),
    ("revenue", "numeric"), ("cost", "numeric"), ("margin", "numeric"),
)
AUDIT_COLUMNS = tuple(name for name, _ in AUDIT_TYPES)
AUDIT_LINE_COLUMNS = tuple(name for name, _ in AUDIT_LINE_TYPES)
GENESIS = bytes(32)
NULL = "\\N"
LEGACY_CHAIN = ""

# --- the canonical text of one value: also its COPY text -----------------------------------------

_ESCAPES = str.maketrans({"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"})
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_second_text: dict[int, str] = {}


def text(value: str | None) -> str:
    if value is None:
        return NULL
    # The check is one C-level scan; most values need no escaping at all.
    if "\\" in value or "\t" in value or "\n" in value or "\r" in value:
        return value.translate(_ESCAPES)
    return value


def timestamp(us: int | None) -> str:
    """Microseconds since the epoch as a UTC timestamptz literal (memoised by second: the events
    of a batch share few seconds, and strftime is the expensive part)."""
    if us is None:
        return NULL
    second, micros = divmod(us, 1_000_000)
    prefix = _second_text.get(second)
    if prefix is None:
        if len(_second_text) > 100_000:
            _second_text.clear()
        prefix = _second_text[second] = (_EPOCH + timedelta(seconds=second)).strftime("%Y-%m-%d %H:%M:%S")
    return f"{prefix}.{micros:06d}+00"


def number(value: Decimal | None) -> str:
    """Fixed-point, as Postgres prints a numeric: str() is the cheap way there, but for an
    exponent (1E+2, 1E-7) only format() gives the digits."""
    if value is None:
        return NULL
    s = str(value)
    return s if "E" not in s else format(value, "f")


def binary(value: bytes | None) -> str:
    return NULL if value is None else "\\\\x" + value.hex()


def json_text(value: object) -> str:
    return text(orjson.dumps(value, option=orjson.OPT_SORT_KEYS).decode())


def _field(value: object, pg_type: str) -> str:
    """Any representation a verifier meets (Python values from Postgres, or an export's
    normalised JSON values) -> the canonical text."""
    if value is None:
        return NULL
    if pg_type == "text":
        return text(value)
    if pg_type in ("int4", "int8"):
        return str(int(value))
    if pg_type == "numeric":
        return number(Decimal(value))
    if pg_type == "bytea":
        return binary(bytes(value) if isinstance(value, bytes | memoryview) else bytes.fromhex(value))
    if pg_type == "timestamptz":
        return timestamp(to_us(value) if isinstance(value, datetime) else int(value))
    if pg_type == "jsonb":
        return json_text(value)
    raise ValueError(f"no canonical text for type {pg_type}")


def canonical_fields(row: Mapping[str, object]) -> list[str]:
    return [_field(row[c], t) for c, t in AUDIT_TYPES]


def canonical_line(line: Mapping[str, object]) -> str:
    return "\t".join(_field(line[c], t) for c, t in AUDIT_LINE_TYPES)


def leaf(row_text: str, line_texts: Iterable[str]) -> bytes:
    """The row hash, from the row's canonical text and its lines' (each without newline)."""
    h = hashlib.sha256(row_text.encode())
    for line in sorted(line_texts):  # a line's text starts with its metric
        h.update(b"\n")
        h.update(line.encode())
    return h.digest()


def row_hash(row: Mapping[str, object], lines: Iterable[Mapping[str, object]]) -> bytes:
    """Works on Python values and on their normalised (exported) form alike."""
    return leaf("\t".join(canonical_fields(row)), [canonical_line(x) for x in lines])


# --- chains --------------------------------------------------------------------------------------

def chain_name(raw_topic_id: str, raw_partition: int) -> str:
    return f"{raw_topic_id}/{raw_partition}"


def chain_hash(previous: bytes, row: bytes) -> bytes:
    return hashlib.sha256(previous + row).digest()


def chain(previous: bytes, row_hashes: Sequence[bytes]) -> list[bytes]:
    """The chain hashes of consecutive entries after `previous`."""
    out = []
    for h in row_hashes:
        previous = chain_hash(previous, h)
        out.append(previous)
    return out


def _normal(value: object) -> object:
    if isinstance(value, Decimal):
        return format(value, "f")
    if isinstance(value, datetime):
        return to_us(value)
    if isinstance(value, bytes | memoryview):
        return bytes(value).hex()
    if isinstance(value, dict):
        return {k: value[k] for k in sorted(value)}
    return value


def normal_row(row: Mapping[str, object], lines: Iterable[Mapping[str, object]]) -> dict:
    """A row and its lines as JSON values (what exports carry): decimals as strings, times as
    integer microseconds, bytes as hex. row_hash gives the same hash for both forms."""
    out = {c: _normal(row[c]) for c in AUDIT_COLUMNS}
    out["lines"] = sorted(({c: _normal(line[c]) for c in AUDIT_LINE_COLUMNS} for line in lines),
                          key=lambda x: x["metric"])
    return out


def verify_exported(rows: Iterable[Mapping]) -> tuple[int, str | None]:
    """Check an NDJSON audit export: every row against its hash, every entry against its link,
    consecutive entries of a chain against each other. Returns (rows checked, the first problem
    or None)."""
    n = 0
    previous: dict[str, Mapping] = {}  # the last row seen of each chain
    for n, row in enumerate(rows, start=1):
        label = (f"line {n} (raw {row['raw_partition']}/{row['raw_offset']}, "
                 f"{row['source']} {row['event_id']})")
        name = row.get("audit_chain", LEGACY_CHAIN)
        if sealed_hash(name, row, row["lines"]).hex() != row["row_hash"]:
            return n, f"{label}: the row does not match its hash: edited"
        if chain_hash(bytes.fromhex(row["prev_chain_hash"]), bytes.fromhex(row["row_hash"])).hex() \
                != row["chain_hash"]:
            return n, f"{label}: the chain hash does not follow from the previous entry"
        before = previous.get(name)
        if before is not None and before["audit_seq"] + 1 == row["audit_seq"] \
                and before["chain_hash"] != row["prev_chain_hash"]:
            return n, f"{label}: does not link to the row before it"
        previous[name] = row
    return n, None


# Rows sealed before this release (chain '') were hashed over the JSON array of their values:
# kept so that their trail still verifies.
_LEGACY_COLUMNS = AUDIT_COLUMNS[:-1]
_LEGACY_NORMAL = tuple(_LEGACY_COLUMNS.index(c) for c in (
    "raw_key", "raw", "ingested_at", "event_time", "payload_hash", "revenue", "cost", "margin"))


def legacy_row_hash(row: Mapping[str, object], lines: Iterable[Mapping[str, object]]) -> bytes:
    canonical = [row[c] for c in _LEGACY_COLUMNS]
    for i in _LEGACY_NORMAL:
        canonical[i] = _normal(canonical[i])
    canonical.append(sorted(([_normal(line[c]) for c in AUDIT_LINE_COLUMNS] for line in lines),
                            key=lambda x: x[0]))
    return hashlib.sha256(orjson.dumps(canonical)).digest()


def sealed_hash(chain_of_row: str, row: Mapping[str, object], lines: Iterable[Mapping[str, object]]) -> bytes:
    """The hash a row was sealed with, by the chain it belongs to."""
    return legacy_row_hash(row, lines) if chain_of_row == LEGACY_CHAIN else row_hash(row, lines)
