"""The audit trail in Postgres: append to the per-tenant hash chains, verify them, export them."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import psycopg

from operators.audit import AUDIT_COLUMNS, AUDIT_LINE_COLUMNS, GENESIS, chain_hash, normal_row, row_hash

Coords = tuple[str, int, int]  # raw topic id, partition, offset


def append_to_chains(cur: psycopg.Cursor, action: str,
                     items: list[tuple[str, Coords, bytes]]) -> tuple[list[tuple], list[int]]:
    """Append (tenant, row coordinates, row hash) items to their tenants' chains, in order.

    Returns the entries to store in audit_chain and each item's sequence number. The heads are
    locked in tenant order (so concurrent writers never deadlock) until the transaction ends, so
    one tenant's entries never interleave between writers."""
    tenants = sorted({tenant for tenant, _, _ in items})
    cur.execute("INSERT INTO audit_heads (tenant, seq, chain_hash) SELECT t, 0, %s"
                " FROM unnest(%s::text[]) AS t ON CONFLICT DO NOTHING", (GENESIS, tenants))
    heads = {t: (seq, h) for t, seq, h in cur.execute(
        "SELECT tenant, seq, chain_hash FROM audit_heads WHERE tenant = ANY(%s) ORDER BY tenant FOR UPDATE",
        (tenants,))}
    entries, seqs = [], []
    for tenant, (topic_id, partition, offset), h in items:
        seq, previous = heads[tenant]
        heads[tenant] = (seq + 1, chain_hash(previous, h))
        entries.append((tenant, seq + 1, action, topic_id, partition, offset, h, heads[tenant][1]))
        seqs.append(seq + 1)
    cur.executemany("UPDATE audit_heads SET seq = %s, chain_hash = %s WHERE tenant = %s",
                    [(seq, h, t) for t, (seq, h) in heads.items()])
    return entries, seqs


_ROW_SELECT = "SELECT " + ", ".join(f"l.{c}" for c in AUDIT_COLUMNS) + ", l.audit_seq FROM ledger l"
_LINE_SELECT = ("SELECT x.raw_topic_id, x.raw_partition, x.raw_offset, "
                + ", ".join(f"x.{c}" for c in AUDIT_LINE_COLUMNS)
                + " FROM ledger_lines x JOIN ledger l USING (raw_topic_id, raw_partition, raw_offset)")


def ledger_rows(conn: psycopg.Connection, where: str, params: tuple) -> Iterator[tuple[dict, list[dict]]]:
    """(row, its lines) as the audit hashes them, for the ledger rows matching `where` (alias l)."""
    lines: dict[Coords, list[dict]] = {}
    for row in conn.execute(f"{_LINE_SELECT} WHERE {where}", params):
        lines.setdefault(row[:3], []).append(dict(zip(AUDIT_LINE_COLUMNS, row[3:], strict=True)))
    for row in conn.execute(f"{_ROW_SELECT} WHERE {where} ORDER BY l.audit_seq NULLS FIRST", params):
        values = dict(zip((*AUDIT_COLUMNS, "audit_seq"), row, strict=True))
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
    entries, seqs = append_to_chains(cur, action, items)
    store_entries(cur, entries)
    cur.executemany(
        "UPDATE ledger SET audit_seq = %s WHERE (raw_topic_id, raw_partition, raw_offset) = (%s, %s, %s)",
        [(seq, *coords) for (_, coords, _), seq in zip(items, seqs, strict=True)])
    return len(items)


def store_entries(cur: psycopg.Cursor, entries: list[tuple]) -> None:
    with cur.copy("COPY audit_chain (tenant, seq, action, raw_topic_id, raw_partition, raw_offset,"
                  " row_hash, chain_hash) FROM STDIN (FORMAT BINARY)") as copy:
        copy.set_types(["text", "int8", "text", "text", "int4", "int8", "bytea", "bytea"])
        for entry in entries:
            copy.write_row(entry)


@dataclass(frozen=True)
class Problem:
    where: str  # the row or entry, for people: "raw 3/1042 (demo/sdk evt-9)" or "entry 17"
    why: str


def verify_tenant(conn: psycopg.Connection, tenant: str) -> tuple[int, list[Problem]]:
    """Recompute every entry's link and every row's hash. Returns (entries checked, problems)."""
    problems: list[Problem] = []
    previous, expected_seq = GENESIS, 1
    latest: dict[Coords, tuple[int, bytes]] = {}
    for seq, coords_t, coords_p, coords_o, h, c in conn.execute(
            "SELECT seq, raw_topic_id, raw_partition, raw_offset, row_hash, chain_hash FROM audit_chain"
            " WHERE tenant = %s ORDER BY seq", (tenant,)):
        if seq != expected_seq:
            problems.append(Problem(f"entry {expected_seq}", f"missing (next entry is {seq})"))
        if chain_hash(previous, bytes(h)) != bytes(c):
            problems.append(Problem(f"entry {seq}", "chain hash does not follow from the previous entry"))
        previous, expected_seq = bytes(c), seq + 1
        latest[(coords_t, coords_p, coords_o)] = (seq, bytes(h))
    head = conn.execute("SELECT seq, chain_hash FROM audit_heads WHERE tenant = %s", (tenant,)).fetchone()
    if head is not None and (head[0], bytes(head[1])) != (expected_seq - 1, previous):
        problems.append(Problem("chain head", "the recorded head is not the last entry"))
    seen: set[Coords] = set()
    where = "coalesce(l.tenantid, '') = %s"
    for row, lines in ledger_rows(conn, where, (tenant,)):
        coords = (row["raw_topic_id"], row["raw_partition"], row["raw_offset"])
        seen.add(coords)
        label = f"raw {coords[1]}/{coords[2]} ({row['source']} {row['event_id']})"
        entry = latest.get(coords)
        if entry is None:
            problems.append(Problem(label, "row has no audit entry: inserted outside the pipeline"))
        elif row_hash(row, lines) != entry[1]:
            problems.append(Problem(label, f"row differs from what entry {entry[0]} sealed: edited"))
    for coords in latest.keys() - seen:
        problems.append(Problem(f"raw {coords[1]}/{coords[2]}",
                                f"entry {latest[coords][0]} has no row: deleted"))
    return expected_seq - 1, problems


def export_rows(conn: psycopg.Connection, tenant: str, customer: str | None,
                period: str | None, raw_rows: tuple[str, tuple] | None = None) -> Iterator[dict]:
    """Every ledger row behind the selection, in chain order, normalised as hashed, with its audit
    entry (seq, row hash, the previous entry's chain hash, chain hash). `raw_rows` narrows the
    selection to the rows a query names: (SQL selecting raw_topic_id, raw_partition, raw_offset,
    its parameters), e.g. the events behind an invoice line."""
    where, params = "coalesce(l.tenantid, '') = %s", [tenant]
    if customer is not None:
        where += " AND l.customer = %s"
        params.append(customer)
    if period is not None:
        where += " AND l.period = %s"
        params.append(period)
    if raw_rows is not None:
        where += f" AND (l.raw_topic_id, l.raw_partition, l.raw_offset) IN ({raw_rows[0]})"
        params.extend(raw_rows[1])
    entries = {seq: (bytes(h), bytes(c), bytes(p) if p is not None else GENESIS)
               for seq, h, c, p in conn.execute(
                   "SELECT e.seq, e.row_hash, e.chain_hash, p.chain_hash FROM audit_chain e"
                   " LEFT JOIN audit_chain p ON p.tenant = e.tenant AND p.seq = e.seq - 1"
                   " WHERE e.tenant = %s AND e.seq IN (SELECT l.audit_seq FROM ledger l"
                   f" WHERE {where})", (tenant, *params))}
    for row, lines in ledger_rows(conn, where, tuple(params)):
        h, c, p = entries[row["audit_seq"]]
        yield {**normal_row(row, lines), "audit_seq": row["audit_seq"], "row_hash": h.hex(),
               "prev_chain_hash": p.hex(), "chain_hash": c.hex()}


def chain_head(conn: psycopg.Connection, tenant: str) -> tuple[int, str]:
    head = conn.execute("SELECT seq, chain_hash FROM audit_heads WHERE tenant = %s", (tenant,)).fetchone()
    return (0, GENESIS.hex()) if head is None else (head[0], bytes(head[1]).hex())
