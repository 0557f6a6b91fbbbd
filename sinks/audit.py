"""The audit trail in Postgres: append to the hash chains, verify them, export them.

The metering flow appends as it writes the ledger (sinks/ledger.py); this module appends for
the changes made afterwards (a replay applied), and reads the chains back for `aforo audit`.
"""

from __future__ import annotations

import csv
import hashlib
from collections.abc import Iterator
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path

import orjson
import psycopg

from config import clock
from operators.audit import (
    AUDIT_COLUMNS,
    AUDIT_LINE_COLUMNS,
    GENESIS,
    LEGACY_CHAIN,
    binary,
    chain_hash,
    chain_name,
    normal_row,
    row_hash,
    sealed_hash,
    text,
    verify_exported,
)
from sinks.ledger import copy_text, lock_heads, store_heads

Coords = tuple[str, int, int]  # raw topic id, partition, offset
_ZERO = Decimal(0)


def append_to_chains(cur: psycopg.Cursor, action: str,
                     items: list[tuple[str, Coords, bytes]]) -> list[tuple[str, int]]:
    """Append (tenant, row coordinates, row hash) items, in order, to the chains of their tenants
    and raw partitions; store the entries and return each item's (chain, seq). The heads are
    locked until the transaction ends, so entries never interleave with another writer's."""
    by_chain: dict[str, list[int]] = {}
    for i, (_tenant, (topic_id, partition, _offset), _h) in enumerate(items):
        by_chain.setdefault(chain_name(topic_id, partition), []).append(i)
    placed: list[tuple[str, int]] = [("", 0)] * len(items)
    entries = []
    for chain in sorted(by_chain):
        members = by_chain[chain]
        heads = lock_heads(cur, {(chain, items[i][0]) for i in members})
        for i in members:
            tenant, (topic_id, partition, offset), h = items[i]
            seq, previous = heads[chain, tenant]
            link = chain_hash(previous, h)
            heads[chain, tenant] = (seq + 1, link)
            placed[i] = (chain, seq + 1)
            entries.append(f"{text(tenant)}\t{text(chain)}\t{seq + 1}\t{text(action)}\t{text(topic_id)}\t"
                           f"{partition}\t{offset}\t{binary(h)}\t{binary(link)}\n")
        store_heads(cur, heads)
    copy_text(cur, "audit_chain", ("tenant", "chain", "seq", "action", "raw_topic_id", "raw_partition",
                                   "raw_offset", "row_hash", "chain_hash"), "".join(entries).encode())
    return placed


_ROW_SELECT = ("SELECT " + ", ".join(f"l.{c}" for c in AUDIT_COLUMNS)
               + ", coalesce(l.audit_chain, '') AS audit_chain, l.audit_seq FROM ledger l")
_LINE_SELECT = ("SELECT x.raw_topic_id, x.raw_partition, x.raw_offset, "
                + ", ".join(f"x.{c}" for c in AUDIT_LINE_COLUMNS)
                + " FROM ledger_lines x JOIN ledger l USING (raw_topic_id, raw_partition, raw_offset)")


def ledger_rows(conn: psycopg.Connection, where: str, params: tuple) -> Iterator[tuple[dict, list[dict]]]:
    """(row, its lines) as the audit hashes them, for the ledger rows matching `where` (alias l),
    in chain order; rows not yet in a chain (re-inserted by a replay) in raw order, so every
    database appends them alike."""
    lines: dict[Coords, list[dict]] = {}
    for row in conn.execute(f"{_LINE_SELECT} WHERE {where}", params):
        lines.setdefault(row[:3], []).append(dict(zip(AUDIT_LINE_COLUMNS, row[3:], strict=True)))
    for row in conn.execute(f"{_ROW_SELECT} WHERE {where}"
                            " ORDER BY coalesce(l.audit_chain, ''), l.audit_seq NULLS FIRST,"
                            " l.raw_topic_id, l.raw_partition, l.raw_offset", params):
        values = dict(zip((*AUDIT_COLUMNS, "audit_chain", "audit_seq"), row, strict=True))
        coords = (values["raw_topic_id"], values["raw_partition"], values["raw_offset"])
        yield values, lines.get(coords, [])


def reseal(cur: psycopg.Cursor, action: str, where: str, params: tuple) -> int:
    """Append entries for rows whose content changed by `action` (e.g. a replay applied) and
    point them at their new entries. Returns how many rows were sealed."""
    rows = list(ledger_rows(cur.connection, where, params))
    items = [(row["tenantid"] or "", (row["raw_topic_id"], row["raw_partition"], row["raw_offset"]),
              row_hash(row, lines)) for row, lines in rows]
    if not items:
        return 0
    placed = append_to_chains(cur, action, items)
    cur.executemany(
        "UPDATE ledger SET audit_chain = %s, audit_seq = %s"
        " WHERE (raw_topic_id, raw_partition, raw_offset) = (%s, %s, %s)",
        [(chain, seq, *coords) for (_, coords, _), (chain, seq) in zip(items, placed, strict=True)])
    return len(items)


@dataclass(frozen=True)
class Problem:
    where: str  # the row or entry, for people: "raw 3/1042 (demo/sdk evt-9)" or "entry 17"
    why: str


def _label(chain: str, seq: int) -> str:
    return f"entry {seq}" if chain == LEGACY_CHAIN else f"entry {seq} of chain {chain}"


def verify_tenant(conn: psycopg.Connection, tenant: str) -> tuple[int, list[Problem]]:
    """Recompute every entry's link and every row's hash, chain by chain. Returns (entries
    checked, problems)."""
    problems: list[Problem] = []
    checked = 0
    latest: dict[Coords, tuple[str, int, bytes]] = {}
    heads = {chain: (seq, bytes(h)) for chain, seq, h in conn.execute(
        "SELECT chain, seq, chain_hash FROM audit_heads WHERE tenant = %s", (tenant,))}
    chain, previous, expected_seq = None, GENESIS, 1

    def close_chain() -> None:
        last = (expected_seq - 1, previous)
        if chain is not None and heads.get(chain, last) != last:
            problems.append(Problem(f"head of chain {chain or '(tenant)'}",
                                    "the recorded head is not the last entry"))

    for c, seq, coords_t, coords_p, coords_o, h, link in conn.execute(
            "SELECT chain, seq, raw_topic_id, raw_partition, raw_offset, row_hash, chain_hash"
            " FROM audit_chain"
            " WHERE tenant = %s ORDER BY chain, seq", (tenant,)):
        if c != chain:
            close_chain()
            chain, previous, expected_seq = c, GENESIS, 1
        checked += 1
        if seq != expected_seq:
            problems.append(Problem(_label(c, expected_seq), f"missing (next entry is {seq})"))
        if chain_hash(previous, bytes(h)) != bytes(link):
            problems.append(Problem(_label(c, seq), "chain hash does not follow from the previous entry"))
        previous, expected_seq = bytes(link), seq + 1
        latest[(coords_t, coords_p, coords_o)] = (c, seq, bytes(h))
    close_chain()
    seen: set[Coords] = set()
    for row, lines in ledger_rows(conn, "coalesce(l.tenantid, '') = %s", (tenant,)):
        coords = (row["raw_topic_id"], row["raw_partition"], row["raw_offset"])
        seen.add(coords)
        label = f"raw {coords[1]}/{coords[2]} ({row['source']} {row['event_id']})"
        entry = latest.get(coords)
        if entry is None:
            problems.append(Problem(label, "row has no audit entry: inserted outside the pipeline"))
        elif sealed_hash(entry[0], row, lines) != entry[2]:
            problems.append(Problem(label, f"row differs from what {_label(entry[0], entry[1])} sealed:"
                                           " edited"))
    for coords in latest.keys() - seen:
        c, seq, _ = latest[coords]
        problems.append(Problem(f"raw {coords[1]}/{coords[2]}", f"{_label(c, seq)} has no row: deleted"))
    return checked, problems


def export_rows(conn: psycopg.Connection, tenant: str, customer: str | None = None, period: str | None = None,
                coords: list[Coords] | None = None) -> Iterator[dict]:
    """Every ledger row behind the selection (a customer, a period, or given raw coordinates), in
    chain order, normalised as hashed, with its audit entry (chain, seq, row hash, the previous
    entry's chain hash, chain hash)."""
    where, params = "coalesce(l.tenantid, '') = %s", [tenant]
    if customer is not None:
        where += " AND l.customer = %s"
        params.append(customer)
    if period is not None:
        where += " AND l.period = %s"
        params.append(period)
    if coords is not None:
        where += (" AND (l.raw_topic_id, l.raw_partition, l.raw_offset) IN"
                  " (SELECT * FROM unnest(%s::text[], %s::int4[], %s::int8[]))")
        params.extend([list(c) for c in zip(*coords, strict=True)] if coords else [[], [], []])
    entries = {(chain, seq): (bytes(h), bytes(c), bytes(p) if p is not None else GENESIS)
               for chain, seq, h, c, p in conn.execute(
                   "SELECT e.chain, e.seq, e.row_hash, e.chain_hash, p.chain_hash FROM audit_chain e"
                   " LEFT JOIN audit_chain p ON (p.tenant, p.chain, p.seq) = (e.tenant, e.chain, e.seq - 1)"
                   " WHERE e.tenant = %s AND (e.chain, e.seq) IN (SELECT coalesce(l.audit_chain, ''),"
                   f" l.audit_seq FROM ledger l WHERE {where})", (tenant, *params))}
    for row, lines in ledger_rows(conn, where, tuple(params)):
        h, c, p = entries[(row["audit_chain"], row["audit_seq"])]
        yield {**normal_row(row, lines), "audit_chain": row["audit_chain"], "audit_seq": row["audit_seq"],
               "row_hash": h.hex(), "prev_chain_hash": p.hex(), "chain_hash": c.hex()}


EXPORT_FIELDS = (*AUDIT_COLUMNS, "lines", "audit_chain", "audit_seq", "row_hash", "prev_chain_hash",
                 "chain_hash")


def export_file(conn: psycopg.Connection, output: Path, fmt: str, tenant: str, *, customer: str | None = None,
                period: str | None = None, coords: list[Coords] | None = None,
                about: dict | None = None) -> tuple[int, Path]:
    """Write the selection's rows (NDJSON or CSV) and OUTPUT.manifest.json beside it: row count,
    totals per metric, the file's SHA-256, the heads of the tenant's chains (and `about`, what
    the export is for). Returns (rows, manifest path)."""
    totals: dict[str, dict[str, Decimal]] = {}
    rows = 0
    with output.open("w", newline="") as out:
        writer = None
        for row in export_rows(conn, tenant, customer, period, coords):
            rows += 1
            for line in row["lines"]:
                t = totals.setdefault(line["metric"], {"quantity": _ZERO, "revenue": _ZERO, "cost": _ZERO})
                for k in t:
                    t[k] += Decimal(line[k])
            if fmt == "ndjson":
                out.write(orjson.dumps(row).decode() + "\n")
                continue
            if writer is None:
                writer = csv.DictWriter(out, fieldnames=EXPORT_FIELDS)
                writer.writeheader()
            writer.writerow({**row, "lines": orjson.dumps(row["lines"]).decode()})
    manifest = {
        "file": output.name, "format": fmt, "tenant": tenant, "customer": customer, "period": period,
        **(about or {}),
        "rows": rows, "totals": {m: {k: str(v) for k, v in t.items()} for m, t in sorted(totals.items())},
        "sha256": _file_sha256(output),
        "chain_heads": {c: {"seq": seq, "chain_hash": h}
                        for c, (seq, h) in chain_heads(conn, tenant).items()},
        "exported_at": clock.now().isoformat(),
    }
    manifest_path = output.with_name(output.name + ".manifest.json")
    manifest_path.write_bytes(orjson.dumps(manifest, option=orjson.OPT_INDENT_2))
    return rows, manifest_path


def _file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def verify_file(path: Path) -> tuple[int, str | None]:
    """Check an NDJSON export offline against its manifest (if beside it), its rows against their
    hashes and its entries against their links: (rows checked, the first problem or None)."""
    manifest_path = path.with_name(path.name + ".manifest.json")
    try:
        if manifest_path.exists() and _file_sha256(path) != orjson.loads(manifest_path.read_bytes())[
                "sha256"]:
            return 0, f"{path}: its SHA-256 differs from the manifest's: the file was changed"
        with path.open("rb") as f:
            return verify_exported(map(orjson.loads, filter(bytes.strip, f)))
    except (ValueError, KeyError, TypeError) as exc:  # not JSON, or not the rows an export writes
        why = f"a row has no {exc}" if isinstance(exc, KeyError) else str(exc)
        return 0, f"{path} is not an audit export (or its manifest is not one): {why}"


def chain_heads(conn: psycopg.Connection, tenant: str) -> dict[str, tuple[int, str]]:
    """Each of the tenant's chains: (its last seq, its head hash)."""
    return {chain: (seq, bytes(h).hex()) for chain, seq, h in conn.execute(
        "SELECT chain, seq, chain_hash FROM audit_heads WHERE tenant = %s ORDER BY chain", (tenant,))}
