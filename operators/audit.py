"""The tamper-evident audit trail: how a ledger row is hashed and how hashes chain.

Every write to a tenant's ledger (a new row, or a later change such as a replay applied)
appends an entry to the tenant's chain: entry n carries the row's hash and
chain_hash(n) = SHA-256(chain_hash(n-1) || row_hash), starting from 32 zero bytes. Editing a
row changes its hash; deleting one leaves an entry without its row; inserting one leaves a row
without an entry; removing or reordering entries breaks the links.

A row's hash is SHA-256 over its canonical form: the JSON array of AUDIT_COLUMNS values, then
its revenue lines, each the array of AUDIT_LINE_COLUMNS, by metric. Values are normalised so
that the writer (Python objects) and a verifier (what Postgres or an export returns) agree:
decimals as fixed-point strings, times as integer microseconds since the epoch, bytes as hex.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from decimal import Decimal

import orjson

from operators.timestamp_gate import to_us

AUDIT_COLUMNS = (
    "raw_topic", "raw_topic_id", "raw_partition", "raw_offset", "raw_key", "raw", "ingested_at",
    "status", "reason", "detail", "tenantid", "source", "event_id", "type", "subject", "event_time",
    "dedup_key", "payload_hash", "route", "validation_hash", "customer", "subscription", "plan",
    "plan_version", "currency", "period", "revenue", "cost", "margin", "tier", "reinject_of",
    "adjusts_period",
)
AUDIT_LINE_COLUMNS = ("metric", "grp", "quantity", "total_after", "revenue", "cost", "margin")
GENESIS = bytes(32)


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


# The only row columns whose values are not JSON-native as written or read back (times, bytes,
# decimals), by position: the sink hashes every row it writes, so this is a hot path.
_NEEDS_NORMAL = tuple(AUDIT_COLUMNS.index(c) for c in (
    "raw_key", "raw", "ingested_at", "event_time", "payload_hash", "revenue", "cost", "margin"))


def row_hash(row: Mapping[str, object], lines: Iterable[Mapping[str, object]]) -> bytes:
    """Works on Python values and on their normalised form alike (normalising is idempotent)."""
    return values_hash([row[c] for c in AUDIT_COLUMNS], lines)


def values_hash(values: Sequence[object], lines: Iterable[Mapping[str, object]]) -> bytes:
    """row_hash of the row's values in AUDIT_COLUMNS order."""
    canonical = list(values)
    for i in _NEEDS_NORMAL:
        canonical[i] = _normal(canonical[i])
    canonical.append(sorted(([_normal(line[c]) for c in AUDIT_LINE_COLUMNS] for line in lines),
                            key=lambda x: x[0]))
    return hashlib.sha256(orjson.dumps(canonical)).digest()


def chain_hash(previous: bytes, row: bytes) -> bytes:
    return hashlib.sha256(previous + row).digest()


def chain(previous: bytes, row_hashes: Sequence[bytes]) -> list[bytes]:
    """The chain hashes of consecutive entries after `previous`."""
    out = []
    for h in row_hashes:
        previous = chain_hash(previous, h)
        out.append(previous)
    return out


def normal_row(row: Mapping[str, object], lines: Iterable[Mapping[str, object]]) -> dict:
    """A row and its lines in the normalised form its hash is computed over (what exports carry)."""
    out = {c: _normal(row[c]) for c in AUDIT_COLUMNS}
    out["lines"] = sorted(({c: _normal(line[c]) for c in AUDIT_LINE_COLUMNS} for line in lines),
                          key=lambda x: x["metric"])
    return out


def verify_exported(rows: Iterable[Mapping]) -> tuple[int, str | None]:
    """Check an NDJSON audit export: every row against its hash, every entry against its link,
    consecutive entries against each other. Returns (rows checked, the first problem or None)."""
    n, previous = 0, None
    for n, row in enumerate(rows, start=1):
        label = (f"line {n} (raw {row['raw_partition']}/{row['raw_offset']}, "
                 f"{row['source']} {row['event_id']})")
        if row_hash(row, row["lines"]).hex() != row["row_hash"]:
            return n, f"{label}: the row does not match its hash: edited"
        if chain_hash(bytes.fromhex(row["prev_chain_hash"]), bytes.fromhex(row["row_hash"])).hex() \
                != row["chain_hash"]:
            return n, f"{label}: the chain hash does not follow from the previous entry"
        if previous is not None and previous["audit_seq"] + 1 == row["audit_seq"] \
                and previous["chain_hash"] != row["prev_chain_hash"]:
            return n, f"{label}: does not link to the row before it"
        previous = row
    return n, None
