"""The bill run in Postgres: what its stages read (catalog terms, the ledger's lines, the flow's
running totals, held events, credits, earlier invoices) and what it records (runs, stage results,
invoices, their lines and event index, credit draws, the delivery outbox)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from decimal import Decimal
from pathlib import Path

import orjson
import psycopg
from psycopg.types.json import Jsonb, set_json_loads

from operators.billing import STAGES
from operators.billing.common import group_label, shift_period
from operators.billing.settle import digest, document, number
from operators.pricing import group_key, parse_charge
from operators.revenue import period_bounds
from schemas.billing_run import (
    CouponTerms,
    CreditBalance,
    Destination,
    Draft,
    FlowTotal,
    Header,
    HeldEvent,
    Invoice,
    LedgerLine,
    PlanCharge,
    PreviousPeriod,
    QuotaRule,
    SubscriptionTerms,
    TaxTerms,
)
from schemas.catalog import ChargeTerms
from schemas.errors import Conflict, NotFound
from sinks.audit import export_file
from sinks.postgres import as_dicts

_LOCK_SPACE = 0x0AF0_0015  # advisory locks of bill runs: (this, hash of tenant and period)


class RunInProgress(Conflict):
    """Another bill run holds the tenant's period."""


# --- what the stages read --------------------------------------------------------------------------

def flow_totals(conn: psycopg.Connection, tenant: str, period: str) -> list[FlowTotal]:
    """The flow's running totals of the period: the one place the bill run reads `revenue`."""
    return [FlowTotal(customer=c, subscription=s, metric=m, currency=cur, events=n, quantity=q, revenue=r,
                      cost=k)
            for c, s, m, cur, n, q, r, k in conn.execute(
                "SELECT customer, subscription, metric, currency, events, quantity, revenue, cost"
                " FROM revenue WHERE tenant = %s AND period = %s ORDER BY customer, subscription, metric",
                (tenant, period))]


def watermark(conn: psycopg.Connection) -> datetime | None:
    """The pipeline's clock: the latest ingestion time of a record that claimed an idempotency key
    (every accepted or held one does; the claims' time index answers at once)."""
    return conn.execute("SELECT max(ingested_at) FROM dedup_claims").fetchone()[0]


_REF = "l.raw_topic_id || '/' || l.raw_partition || '/' || l.raw_offset"


def held_events(conn: psycopg.Connection, tenant: str, period: str) -> list[HeldEvent]:
    """Held events of the period (by event time) not decided yet, or approved but not rated yet."""
    start, end = period_bounds(period)
    rows = conn.execute(
        f"SELECT l.id, {_REF}, l.status, l.reason, l.subject, l.source, l.event_id, t.action FROM ledger l"
        " LEFT JOIN ledger_transitions t USING (raw_topic_id, raw_partition, raw_offset)"
        " WHERE l.tenantid = %s AND l.status IN ('late', 'unresolved') AND l.event_time >= %s"
        " AND l.event_time < %s AND (t.id IS NULL OR (t.action = 'approve' AND NOT EXISTS"
        f" (SELECT 1 FROM ledger r WHERE r.reinject_of = {_REF})))"
        " ORDER BY l.ingested_at, l.id", (tenant, start, end))
    return [HeldEvent(id=i, ref=ref, status=st, reason=rs, subject=sub, source=src, event_id=eid,
                      approved=action == "approve") for i, ref, st, rs, sub, src, eid, action in rows]


def customers_to_bill(conn: psycopg.Connection, tenant: str, period: str, only: str | None,
                      flow: list[FlowTotal]) -> list[str]:
    """Customers with a subscription during the period or usage billed in it, in id order."""
    start, end = period_bounds(period)
    subscribed = {c for (c,) in conn.execute(
        "SELECT customer FROM subscriptions WHERE tenant = %s AND starts_at < %s"
        " AND (ends_at IS NULL OR ends_at > %s)", (tenant, end, start))}
    return sorted(c for c in subscribed | {f.customer for f in flow} if only is None or c == only)


def _charges(definitions: list[dict]) -> tuple[PlanCharge, ...]:
    out = []
    for d in definitions:
        terms = ChargeTerms.model_validate({k: d[k] for k in ("included", "rollover") if k in d})
        out.append(PlanCharge(metric=d["metric"], definition=d, included=terms.included,
                              rollover=terms.rollover))
    return tuple(out)


def header(conn: psycopg.Connection, tenant: str, customer: str, period: str) -> Header:
    """The customer, the tenant's currency and the subscriptions to bill: those active during the
    period or with usage in it, each with the plan version that rated its events (the catalog's
    when there are none)."""
    start, end = period_bounds(period)
    name, currency = conn.execute(
        "SELECT c.name, t.currency FROM customers c JOIN tenants t ON t.id = c.tenant"
        " WHERE c.tenant = %s AND c.id = %s", (tenant, customer)).fetchone()
    # (plan, version) that rated each subscription's events, when it is one (Aggregate refuses more)
    used = conn.execute(
        "SELECT subscription, min(plan), min(plan_version), count(DISTINCT (plan, plan_version)) FROM ledger"
        " WHERE tenantid = %s AND period = %s AND customer = %s AND status = 'accepted' GROUP BY 1",
        (tenant, period, customer)).fetchall()
    rated = {s: (plan, version) for s, plan, version, n in used if n == 1}
    subscriptions = []
    for sid, plan, version, minimum in conn.execute(
            "SELECT id, plan, plan_version, minimum FROM subscriptions WHERE tenant = %s AND customer = %s"
            " AND ((starts_at < %s AND (ends_at IS NULL OR ends_at > %s)) OR id = ANY(%s)) ORDER BY id",
            (tenant, customer, end, start, [s for s, *_ in used])).fetchall():
        plan, version = rated.get(sid, (plan, version))
        charges = conn.execute("SELECT charges FROM plans WHERE tenant = %s AND code = %s AND version = %s",
                               (tenant, plan, version)).fetchone()[0]
        subscriptions.append(SubscriptionTerms(id=sid, plan=plan, plan_version=version, minimum=minimum,
                                               charges=_charges(charges)))
    return Header(tenant=tenant, customer=customer, customer_name=name, period=period, currency=currency,
                  subscriptions=tuple(subscriptions))


def quota_rules(conn: psycopg.Connection, tenant: str) -> list[QuotaRule]:
    return [QuotaRule(subscription=s, metric=m, limit=lim, overage=o) for s, m, lim, o in conn.execute(
        'SELECT subscription, metric, "limit", overage FROM quotas WHERE tenant = %s ORDER BY 1, 2',
        (tenant,))]


_LINES = """
SELECT l.subscription, l.plan, l.plan_version, l.currency, x.metric, x.grp, x.quantity, x.total_after,
       x.revenue, x.cost, l.adjusts_period, l.raw_topic_id, l.raw_partition, l.raw_offset, l.validation_hash
FROM ledger l JOIN ledger_lines x USING (raw_topic_id, raw_partition, raw_offset)
WHERE l.tenantid = %s AND l.period = %s AND l.customer = %s AND l.status = 'accepted'
"""
# The order the flow rated them in, as the revenue totals are rebuilt: the ledger's insertion order
# (migration 0053 says why it is not ingestion time).
_RATING_ORDER = " ORDER BY l.id, x.metric"


def copy_rows(cur: psycopg.Cursor, table: str, columns: tuple[tuple[str, str], ...], rows) -> None:
    """Binary COPY of rows into the named (column, Postgres type) columns of a table."""
    names = ", ".join(name for name, _ in columns)
    with cur.copy(f"COPY {table} ({names}) FROM STDIN (FORMAT BINARY)") as copy:
        copy.set_types([pg_type for _, pg_type in columns])
        for row in rows:
            copy.write_row(row)


def _stream(conn: psycopg.Connection, sql: str, params: tuple) -> Iterator[tuple]:
    """Rows through a server-side cursor (a line of 100k+ events never sits in memory whole), jsonb
    decoded by orjson."""
    with conn.transaction(), conn.cursor(name="aforo_bill_lines") as cur:
        set_json_loads(orjson.loads, cur)
        cur.itersize = 10_000
        cur.execute(sql, params)
        yield from cur


def ledger_lines(conn: psycopg.Connection, tenant: str, customer: str, period: str) -> Iterator[LedgerLine]:
    """The customer's accepted lines billed in the period, adjustments included, in rating order."""
    for row in _stream(conn, _LINES + _RATING_ORDER, (tenant, period, customer)):
        yield LedgerLine(*row[:11])


def event_amounts(conn: psycopg.Connection, draft: Draft) -> dict[tuple[str, str], list[Decimal]]:
    """Each event's own amount, in rating order, for the lines of percentage charges."""
    h = draft.header
    wanted = {(x.subscription, x.metric) for x in draft.lines
              if h.subscription(x.subscription).charge(x.metric).definition.get("model") == "percentage"}
    if not wanted:
        return {}
    out: dict[tuple[str, str], list[Decimal]] = {key: [] for key in wanted}
    for row in _stream(conn, _LINES + _RATING_ORDER, (h.tenant, h.period, h.customer)):
        key = (row[0], row[4])
        if key in out:
            out[key].append(row[6])
    return out


def previous_period(conn: psycopg.Connection, tenant: str, customer: str, period: str) -> PreviousPeriod:
    previous = shift_period(period, -1)
    start, end = period_bounds(previous)
    invoice = settled_invoice(conn, tenant, previous, customer)
    active = frozenset(s for (s,) in conn.execute(
        "SELECT id FROM subscriptions WHERE tenant = %s AND customer = %s AND starts_at < %s"
        " AND (ends_at IS NULL OR ends_at > %s)", (tenant, customer, end, start)))
    return PreviousPeriod(period=previous, invoiced=invoice is not None, active=active,
                          rollover=invoice.rollover_out if invoice else ())


def credit_balances(conn: psycopg.Connection, tenant: str, customer: str) -> list[CreditBalance]:
    """Each grant's units less what invoices drew from it (a voided invoice's draws are given back)."""
    return [CreditBalance(grant=g, metric=m, from_period=p, remaining=r) for g, m, p, r in conn.execute(
        "SELECT g.id, g.metric, g.from_period,"
        " g.units - coalesce(sum(d.units) FILTER (WHERE v.id IS NULL), 0) FROM credit_grants g"
        " LEFT JOIN credit_draws d ON (d.tenant, d.grant_id) = (g.tenant, g.id)"
        " LEFT JOIN invoices v ON v.credit_note_of = d.invoice_id"
        " WHERE g.tenant = %s AND g.customer = %s GROUP BY g.id, g.metric, g.from_period, g.units"
        " ORDER BY g.from_period, g.id", (tenant, customer))]


def coupons(conn: psycopg.Connection, tenant: str, customer: str) -> list[CouponTerms]:
    return [CouponTerms(code=code, name=name, percent_off=pct, amount_off=amt, periods=n,
                        charges=tuple(charges), from_period=since)
            for code, name, pct, amt, n, charges, since in conn.execute(
                "SELECT c.code, c.name, c.percent_off, c.amount_off, c.periods, c.charges, r.from_period"
                " FROM coupon_redemptions r JOIN coupons c ON (c.tenant, c.code) = (r.tenant, r.coupon)"
                " WHERE r.tenant = %s AND r.customer = %s ORDER BY c.code", (tenant, customer))]


def tax_terms(conn: psycopg.Connection, tenant: str, customer: str) -> TaxTerms | None:
    row = conn.execute("SELECT r.id, r.name, r.percent, r.kind FROM customers c"
                       " JOIN tax_rates r ON (r.tenant, r.id) = (c.tenant, c.tax_rate)"
                       " WHERE c.tenant = %s AND c.id = %s", (tenant, customer)).fetchone()
    return None if row is None else TaxTerms(id=row[0], name=row[1], percent=row[2], kind=row[3])


def destinations(conn: psycopg.Connection, tenant: str) -> list[Destination]:
    return [Destination(name=n, kind=k, formats=tuple(f)) for n, k, f in conn.execute(
        "SELECT name, kind, formats FROM invoice_destinations WHERE tenant = %s ORDER BY name", (tenant,))]


# --- runs and their stages -------------------------------------------------------------------------

LOCK_WAIT = "10s"  # a run killed a moment ago holds its lock until the server sees it gone


@contextmanager
def period_lock(conn: psycopg.Connection, tenant: str, period: str) -> Iterator[None]:
    """Hold the tenant's period for a block: one bill run at a time. Released at the end of the
    block, or by the server when the session dies (`kill -9` included), which it notices within a
    moment: the lock is waited for that long before another run is refused."""
    key = (_LOCK_SPACE, f"{tenant}\x1f{period}")
    conn.execute(f"SET lock_timeout = '{LOCK_WAIT}'")
    try:
        conn.execute("SELECT pg_advisory_lock(%s, hashtext(%s))", key)
    except psycopg.errors.LockNotAvailable:
        raise RunInProgress(f"another bill run for {tenant} {period} is in progress") from None
    finally:
        conn.execute("RESET lock_timeout")
    try:
        yield
    finally:
        if not conn.closed and not conn.broken:
            conn.execute("SELECT pg_advisory_unlock(%s, hashtext(%s))", key)


def start_run(conn: psycopg.Connection, tenant: str, period: str, customer: str | None, allow_held: bool,
              actor: str) -> int:
    with conn.transaction():
        return conn.execute("INSERT INTO bill_runs (tenant, period, customer, allow_held, actor)"
                            " VALUES (%s, %s, %s, %s, %s) RETURNING id",
                            (tenant, period, customer, allow_held, actor)).fetchone()[0]


def finish_run(conn: psycopg.Connection, run_id: int, ok: bool) -> None:
    with conn.transaction():
        conn.execute("UPDATE bill_runs SET finished_at = now(), status = %s WHERE id = %s",
                     ("done" if ok else "failed", run_id))


def stage_started(conn: psycopg.Connection, run_id: int, customer: str, stage_no: int) -> None:
    with conn.transaction():
        conn.execute("INSERT INTO bill_run_stages (run_id, customer, stage_no, stage, status)"
                     " VALUES (%s, %s, %s, %s, 'running')",
                     (run_id, customer, stage_no, STAGES[stage_no - 1]))


def stage_finished(conn: psycopg.Connection, run_id: int, customer: str, stage_no: int, *,
                   result: str | None = None, digest_: str | None = None, error: str | None = None) -> None:
    conn.execute("UPDATE bill_run_stages SET status = %s, finished_at = clock_timestamp(), result = %s,"
                 " digest = %s, error = %s WHERE (run_id, customer, stage_no) = (%s, %s, %s)",
                 ("failed" if error else "ok", result, digest_, error, run_id, customer, stage_no))


def stages_reused(conn: psycopg.Connection, run_id: int, customer: str, from_run: int, upto: int) -> None:
    """A resumed run records the stages it takes from an earlier run, with their results."""
    with conn.transaction():
        conn.execute("INSERT INTO bill_run_stages (run_id, customer, stage_no, stage, status, started_at,"
                     " finished_at, digest, result, from_run) SELECT %s, customer, stage_no, stage, 'reused',"
                     " clock_timestamp(), clock_timestamp(), digest, result, %s FROM bill_run_stages"
                     " WHERE run_id = %s AND customer = %s AND stage_no <= %s AND status IN ('ok', 'reused')",
                     (run_id, from_run, from_run, customer, upto))


def resume_point(conn: psycopg.Connection, tenant: str, period: str,
                 customer: str) -> tuple[int, int, str] | None:
    """(run, last finished stage, its result) of the customer's latest unfinished attempt since its
    last invoice (a voided one included), or None: start from QuotaCheck."""
    return conn.execute(
        "SELECT s.run_id, s.stage_no, s.result FROM bill_run_stages s JOIN bill_runs r ON r.id = s.run_id"
        " WHERE r.tenant = %(t)s AND r.period = %(p)s AND s.customer = %(c)s AND s.status IN ('ok', 'reused')"
        " AND s.stage_no < %(settle)s AND s.run_id > coalesce((SELECT max(bill_run_id) FROM invoices"
        " WHERE tenant = %(t)s AND period = %(p)s AND customer = %(c)s AND kind = 'invoice'), 0)"
        " ORDER BY s.run_id DESC, s.stage_no DESC LIMIT 1",
        {"t": tenant, "p": period, "c": customer, "settle": len(STAGES)}).fetchone()


def run_stages(conn: psycopg.Connection, run_id: int) -> tuple[dict, list[dict]]:
    run = as_dicts(conn.execute("SELECT * FROM bill_runs WHERE id = %s", (run_id,)))
    if not run:
        raise NotFound(f"no bill run {run_id}")
    stages = as_dicts(conn.execute(
        "SELECT customer, stage_no, stage, status, started_at, finished_at, error, digest, from_run"
        " FROM bill_run_stages WHERE run_id = %s ORDER BY customer, stage_no", (run_id,)))
    return run[0], stages


# --- invoices ----------------------------------------------------------------------------------------

def _active_invoice_id(conn: psycopg.Connection, tenant: str, period: str, customer: str) -> int | None:
    row = conn.execute(
        "SELECT i.id FROM invoices i WHERE i.tenant = %s AND i.period = %s AND i.customer = %s"
        " AND i.kind = 'invoice' AND NOT EXISTS (SELECT 1 FROM invoices v WHERE v.credit_note_of = i.id)"
        " ORDER BY i.id DESC LIMIT 1", (tenant, period, customer)).fetchone()
    return None if row is None else row[0]


def settled_invoice(conn: psycopg.Connection, tenant: str, period: str, customer: str) -> Invoice | None:
    """The customer's invoice of the period that is not voided, if any."""
    invoice_id = _active_invoice_id(conn, tenant, period, customer)
    return None if invoice_id is None else load_invoice(conn, invoice_id)[0]


def load_invoice(conn: psycopg.Connection, invoice_id: int) -> tuple[Invoice, str]:
    """(the invoice from its stored document, the stored digest)."""
    doc, stored = conn.execute("SELECT document, digest FROM invoices WHERE id = %s",
                               (invoice_id,)).fetchone()
    return Invoice.model_validate_json(doc), stored


def find_invoice(conn: psycopg.Connection, number_: str, tenant: str | None = None) -> int:
    rows = conn.execute("SELECT id FROM invoices WHERE number = %s AND (%s::text IS NULL OR tenant = %s)"
                        " ORDER BY tenant", (number_, tenant, tenant)).fetchall()
    if not rows:
        raise NotFound(f"no invoice {number_}" + (f" of tenant {tenant}" if tenant else ""))
    if len(rows) > 1:
        raise Conflict(f"{number_} exists in several tenants: give --tenant")
    return rows[0][0]


def next_number(conn: psycopg.Connection, tenant: str, series: str, period: str) -> str:
    """The next gapless number of the series, taken inside the caller's transaction."""
    year = int(period[:4])
    n = conn.execute("INSERT INTO invoice_numbers AS n (tenant, series, year, last) VALUES (%s, %s, %s, 1)"
                     " ON CONFLICT (tenant, series, year) DO UPDATE SET last = n.last + 1 RETURNING last",
                     (tenant, series, year)).fetchone()[0]
    return number(series, period, n)


_LINE_COLUMNS = (("invoice_id", "int8"), ("line_no", "int4"), ("kind", "text"), ("subscription", "text"),
                 ("metric", "text"), ("grp", "jsonb"), ("description", "text"), ("model", "text"),
                 ("events", "int8"), ("quantity", "numeric"), ("billable", "numeric"), ("parts", "jsonb"),
                 ("usage_amount", "numeric"),
                 ("amount", "numeric"), ("discount", "numeric"), ("tax", "numeric"), ("total", "numeric"))
_INDEX_BATCH = 20_000
_INDEX_COLUMNS = (("invoice_id", "int8"), ("line_no", "int4"), ("raw_topic_id", "text"),
                  ("raw_partition", "int4"), ("raw_offset", "int8"), ("validation_hash", "text"))


def store_invoice(conn: psycopg.Connection, invoice: Invoice, run_id: int | None,
                  original: int | None = None) -> int:
    """Insert a settled invoice (or credit note), its lines, its draws and its delivery outbox, in
    the caller's transaction. Returns its id."""
    t, h = invoice.totals, invoice.header
    invoice_id = conn.execute(
        "INSERT INTO invoices (tenant, number, kind, customer, period, currency, credit_note_of, bill_run_id,"
        " usage_subtotal, discount, net, tax, rounding, total, document, digest)"
        " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s) RETURNING id",
        (h.tenant, invoice.number, invoice.kind, h.customer, h.period, h.currency, original, run_id,
         t.usage_subtotal, t.discount, t.net, t.tax, t.rounding, t.total, document(invoice).decode(),
         digest(invoice))).fetchone()[0]
    with conn.cursor() as cur:
        copy_rows(cur, "invoice_lines", _LINE_COLUMNS, [
            (invoice_id, x.line_no, x.kind, x.subscription, x.metric, Jsonb(dict(x.group)), x.description,
             x.model, x.events, x.quantity, x.billable, Jsonb([p.model_dump(mode="json") for p in x.parts]),
             x.usage_amount, x.amount, x.discount, x.tax, x.total)
            for x in invoice.lines])
        if invoice.kind == "invoice":
            draws: dict[str, Decimal] = {}
            for x in invoice.lines:
                for d in x.credit_draws:
                    draws[d.grant] = draws.get(d.grant, Decimal(0)) + d.units
            cur.executemany("INSERT INTO credit_draws (invoice_id, tenant, grant_id, units)"
                            " VALUES (%s, %s, %s, %s)",
                            [(invoice_id, h.tenant, g, u) for g, u in sorted(draws.items())])
        cur.executemany("INSERT INTO invoice_deliveries (invoice_id, destination) VALUES (%s, %s)",
                        [(invoice_id, r.destination) for r in invoice.routes])
    return invoice_id


def index_events(conn: psycopg.Connection, invoice_id: int, invoice: Invoice) -> None:
    """bill_run_event_index: every ledger row behind each usage line, with its validation hash, in
    the caller's transaction. The rows are mapped to lines by the same grouping Aggregate used; a
    line whose event count differs from the one Aggregate saw means the ledger moved under the run."""
    h = invoice.header
    line_of: dict[tuple, int] = {}
    charges = {}
    for x in invoice.lines:
        if x.kind == "usage":
            line_of[(x.subscription, x.metric, tuple(v for _, v in x.group))] = x.line_no
            charges[(x.subscription, x.metric)] = parse_charge(
                h.subscription(x.subscription).charge(x.metric).definition)
    counts: dict[int, int] = {}
    batch: list[tuple] = []
    with conn.cursor() as cur:
        # COPY in batches: the ledger cursor cannot be read from while a COPY is in progress
        for r in _stream(conn, _LINES, (h.tenant, h.period, h.customer)):
            charge = charges.get((r[0], r[4]))
            if charge is None:
                continue
            line_no = line_of[(r[0], r[4], group_key(charge, r[5]))]
            counts[line_no] = counts.get(line_no, 0) + 1
            batch.append((invoice_id, line_no, *r[11:15]))
            if len(batch) == _INDEX_BATCH:
                copy_rows(cur, "bill_run_event_index", _INDEX_COLUMNS, batch)
                batch = []
        copy_rows(cur, "bill_run_event_index", _INDEX_COLUMNS, batch)
    moved = [f"line {x.line_no}: {counts.get(x.line_no, 0)} events now, {x.events} aggregated"
             for x in invoice.lines if x.kind == "usage" and counts.get(x.line_no, 0) != x.events]
    if moved:
        raise RuntimeError("the ledger changed while the run was billing it: " + "; ".join(moved))


def traced_rows(conn: psycopg.Connection, invoice_id: int, line_no: int | None) -> list[tuple[str, int, int]]:
    """The raw coordinates of the ledger rows behind an invoice line (every usage line: None)."""
    return conn.execute(
        "SELECT raw_topic_id, raw_partition, raw_offset FROM bill_run_event_index WHERE invoice_id = %s"
        " AND (%s::int IS NULL OR line_no = %s) ORDER BY 1, 2, 3", (invoice_id, line_no, line_no)).fetchall()


def export_trace(conn: psycopg.Connection, invoice_id: int, invoice: Invoice, line_no: int | None,
                 output: Path) -> tuple[int, Path]:
    """Write the ledger rows behind one usage line (None: every usage line) with their validation
    hashes and audit chain entries, in `aforo audit export`'s NDJSON with its manifest (which names
    the invoice and the lines' usage amounts): `aforo audit verify` checks it. (rows, manifest)."""
    lines = [x for x in invoice.lines if x.kind == "usage" and (line_no is None or x.line_no == line_no)]
    if line_no is not None and not lines:
        raise NotFound(f"{invoice.number} has no usage line {line_no}")
    about = {"customer": invoice.header.customer, "period": invoice.header.period, "invoice": invoice.number,
             "lines": [{"line_no": x.line_no, "metric": x.metric, "group": group_label(x.group),
                        "events": x.events, "usage_amount": str(x.usage_amount)} for x in lines]}
    return export_file(conn, output, "ndjson", invoice.header.tenant,
                       coords=traced_rows(conn, invoice_id, line_no), about=about)


def line_event_counts(conn: psycopg.Connection, invoice_id: int) -> dict[int, int]:
    """line -> the ledger rows indexed behind it when the invoice was settled."""
    return dict(conn.execute("SELECT line_no, count(*) FROM bill_run_event_index WHERE invoice_id = %s"
                             " GROUP BY line_no ORDER BY line_no", (invoice_id,)).fetchall())


def line_events(conn: psycopg.Connection, invoice_id: int, line_no: int, offset: int,
                limit: int) -> list[dict]:
    """A page of the events behind an invoice line, in raw order (as the trace export lists them),
    each with the validation hash it was settled with and its revenue on the line's metric."""
    return as_dicts(conn.execute(
        "SELECT i.raw_topic_id, i.raw_partition, i.raw_offset, l.source, l.event_id, l.event_time,"
        " l.ingested_at, i.validation_hash, x.quantity, x.total_after, x.revenue, l.adjusts_period"
        " FROM bill_run_event_index i"
        " JOIN invoice_lines il ON (il.invoice_id, il.line_no) = (i.invoice_id, i.line_no)"
        " JOIN ledger l ON (l.raw_topic_id, l.raw_partition, l.raw_offset)"
        " = (i.raw_topic_id, i.raw_partition, i.raw_offset)"
        " JOIN ledger_lines x ON (x.raw_topic_id, x.raw_partition, x.raw_offset, x.metric)"
        " = (i.raw_topic_id, i.raw_partition, i.raw_offset, il.metric)"
        " WHERE i.invoice_id = %s AND i.line_no = %s ORDER BY i.raw_topic_id, i.raw_partition, i.raw_offset"
        " OFFSET %s LIMIT %s", (invoice_id, line_no, offset, limit)))


def list_invoices(conn: psycopg.Connection, tenant: str | None, period: str | None,
                  customer: str | None) -> list[dict]:
    return as_dicts(conn.execute(
        "SELECT i.number, i.kind, i.tenant, i.customer, i.period, i.currency, i.net, i.tax, i.total,"
        " i.settled_at, c.number AS credit_note_of, v.number AS voided_by FROM invoices i"
        " LEFT JOIN invoices c ON c.id = i.credit_note_of LEFT JOIN invoices v ON v.credit_note_of = i.id"
        " WHERE (%(t)s::text IS NULL OR i.tenant = %(t)s) AND (%(p)s::text IS NULL OR i.period = %(p)s)"
        " AND (%(c)s::text IS NULL OR i.customer = %(c)s) ORDER BY i.tenant, i.number",
        {"t": tenant, "p": period, "c": customer}))


def voided_by(conn: psycopg.Connection, invoice_id: int) -> str | None:
    row = conn.execute("SELECT number FROM invoices WHERE credit_note_of = %s", (invoice_id,)).fetchone()
    return None if row is None else row[0]


# --- the delivery outbox ---------------------------------------------------------------------------

def pending_deliveries(conn: psycopg.Connection, tenant: str,
                       period: str | None = None) -> list[tuple[int, str]]:
    """(invoice id, destination) not delivered yet, oldest invoice first."""
    return conn.execute(
        "SELECT d.invoice_id, d.destination FROM invoice_deliveries d JOIN invoices i ON i.id = d.invoice_id"
        " WHERE i.tenant = %s AND (%s::text IS NULL OR i.period = %s) AND d.status <> 'delivered'"
        " ORDER BY d.invoice_id, d.destination", (tenant, period, period)).fetchall()


def delivery_done(conn: psycopg.Connection, invoice_id: int, destination: str, tries: int,
                  error: str | None) -> None:
    with conn.transaction():
        conn.execute("UPDATE invoice_deliveries SET attempts = attempts + %s, status = %s, last_error = %s,"
                     " delivered_at = CASE WHEN %s THEN now() END WHERE invoice_id = %s AND destination = %s",
                     (tries, "failed" if error else "delivered", error, error is None, invoice_id,
                      destination))


def deliveries(conn: psycopg.Connection, invoice_id: int) -> list[dict]:
    return as_dicts(conn.execute(
        "SELECT destination, status, attempts, last_error, delivered_at FROM invoice_deliveries"
        " WHERE invoice_id = %s ORDER BY destination", (invoice_id,)))


def destination_config(conn: psycopg.Connection, tenant: str, name: str) -> dict:
    rows = as_dicts(conn.execute("SELECT name, kind, url, secret, directory, formats"
                                 " FROM invoice_destinations WHERE tenant = %s AND name = %s",
                                 (tenant, name)))
    if not rows:
        raise NotFound(f"tenant {tenant} has no invoice destination {name!r}")
    return rows[0]


def add_destination(conn: psycopg.Connection, tenant: str, name: str, kind: str, url: str | None,
                    secret: str | None, directory: str | None, formats: list[str]) -> None:
    try:
        with conn.transaction():
            conn.execute("INSERT INTO invoice_destinations (tenant, name, kind, url, secret, directory,"
                         " formats) VALUES (%s, %s, %s, %s, %s, %s, %s)",
                         (tenant, name, kind, url, secret, directory, Jsonb(formats)))
    except psycopg.errors.UniqueViolation:
        raise Conflict(f"{tenant} already has a destination {name!r}") from None
    except psycopg.errors.ForeignKeyViolation:
        raise NotFound(f"no tenant {tenant!r}") from None


def remove_destination(conn: psycopg.Connection, tenant: str, name: str) -> None:
    with conn.transaction():
        if not conn.execute("DELETE FROM invoice_destinations WHERE tenant = %s AND name = %s",
                            (tenant, name)).rowcount:
            raise NotFound(f"{tenant} has no destination {name!r}")


def list_destinations(conn: psycopg.Connection, tenant: str | None) -> list[dict]:
    return as_dicts(conn.execute(
        "SELECT tenant, name, kind, url, directory, formats, created_at FROM invoice_destinations"
        " WHERE %s::text IS NULL OR tenant = %s ORDER BY tenant, name", (tenant, tenant)))


# --- credits -----------------------------------------------------------------------------------------

def grant_credit(conn: psycopg.Connection, tenant: str, customer: str, metric: str, units: Decimal,
                 from_period: str, actor: str, note: str | None) -> str:
    """Record a grant made by command; its id is `cmd-<n>`, n counting the tenant's command grants."""
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s, hashtext(%s))", (_LOCK_SPACE, f"credit\x1f{tenant}"))
        n = conn.execute("SELECT count(*) + 1 FROM credit_grants WHERE tenant = %s AND source = 'command'",
                         (tenant,)).fetchone()[0]
        grant = f"cmd-{n}"
        try:
            with conn.transaction():
                conn.execute("INSERT INTO credit_grants (tenant, id, customer, metric, units, from_period,"
                             " source, granted_by, note) VALUES (%s, %s, %s, %s, %s, %s, 'command', %s, %s)",
                             (tenant, grant, customer, metric, units, from_period, actor, note))
        except psycopg.errors.ForeignKeyViolation:
            raise NotFound(f"{tenant} has no customer {customer!r} or no metric {metric!r}") from None
    return grant
