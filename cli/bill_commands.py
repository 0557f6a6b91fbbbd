"""`aforo bill`, `aforo invoice`, `aforo credit`: the bill run, its invoices and prepaid credits."""

from __future__ import annotations

import sys
from decimal import Decimal, InvalidOperation
from pathlib import Path

import click
import orjson

import config
from cli.errors import writing


def _settings() -> config.Settings:
    return config.load()


def _connect():
    from sinks.postgres import connect
    return connect(_settings().database_url, autocommit=True)


def _period(value: str | None) -> str | None:
    from operators.revenue import period_bounds
    if value is not None:
        try:
            period_bounds(value)
        except ValueError:
            raise click.BadParameter(f"{value!r}: use YYYY-MM") from None
    return value


def _json(value) -> str:
    def default(v):
        if isinstance(v, Decimal):
            return str(v)
        if hasattr(v, "isoformat"):
            return v.isoformat()
        raise TypeError
    return orjson.dumps(value, default=default, option=orjson.OPT_INDENT_2).decode()


# --- printing an invoice -------------------------------------------------------------------------

def print_invoice(invoice, digest_ok: bool | None = None, voided_by: str | None = None) -> None:
    from operators.billing.settle import digest
    from sinks.invoice_files import deductions_text, exact, notes, part_text, title
    h, t, cur = invoice.header, invoice.totals, invoice.header.currency
    click.echo(f"\n{title(invoice)}: {h.customer_name or h.customer} ({h.customer}), {h.tenant} {h.period}, "
               f"{cur}" + (f"  VOIDED by {voided_by}" if voided_by else ""))
    click.echo(f"  {'#':>3}  {'description':<34} {'quantity':>14} {'amount':>14} {'discount':>12} "
               f"{'net':>10} {'tax':>9} {'total':>10}")
    for x in invoice.lines:
        quantity = exact(x.quantity) if x.kind == "usage" else "-"
        click.echo(f"  {x.line_no:>3}  {x.description[:34]:<34} {quantity:>14} {exact(x.amount):>14} "
                   f"{exact(x.discount):>12} {x.net_rounded!s:>10} {x.tax!s:>9} {x.total!s:>10}")
        if deductions_text(x):
            click.echo(f"  {'':>3}    {deductions_text(x)}")
        for p in x.parts:
            click.echo(f"  {'':>3}    {part_text(p)}")
        for d in x.discounts:
            click.echo(f"  {'':>3}    coupon {d.coupon}: -{exact(d.amount)}")
    click.echo(f"  usage subtotal {exact(t.usage_subtotal)}, commitment true-up {exact(t.commitment)}, "
               f"discounts -{exact(t.discount)}")
    click.echo(f"  net {t.net} + tax {t.tax} = TOTAL {t.total} {cur}")
    for n in notes(invoice):
        click.echo(f"  {n}")
    check = {True: " (verified)", False: " MISMATCH: the stored document was changed", None: ""}[digest_ok]
    click.echo(f"  digest {digest(invoice)}{check}")


# --- aforo bill -----------------------------------------------------------------------------------

@click.group()
def bill() -> None:
    """The bill run: ten stages from the ledger to settled, numbered invoices."""


@bill.command("run")
@click.option("--tenant", required=True)
@click.option("--period", "period_", required=True, callback=lambda _c, _p, v: _period(v), help="YYYY-MM")
@click.option("--customer", help="Only this customer.")
@click.option("--dry-run", is_flag=True,
              help="Compute and print the draft invoices; record, close and send nothing.")
@click.option("--allow-held", is_flag=True,
              help="Bill although held events of the period are undecided (each invoice lists its own).")
@click.option("--quiet", is_flag=True, help="Do not print the invoices.")
def bill_run_cmd(tenant, period_, customer, dry_run, allow_held, quiet) -> None:
    """Bill a tenant's period: QuotaCheck, Rollover, Aggregate, Allowance, Rate, Commit, Discount, Tax,
    Route, Settle. Running it again resumes what failed and never bills a customer twice; exit 1
    when a customer's invoice or a delivery failed."""
    from flows.billing import bill_run
    report = bill_run(_settings(), tenant, period_, customer=customer, allow_held=allow_held, dry_run=dry_run)
    what = ("dry run (nothing recorded)" if dry_run else
            f"bill run {report.run_id}" if report.run_id else "nothing to run")
    click.echo(f"{what}: {tenant} {period_}" + (", period closed now" if report.closed_now else ""))
    if report.held:
        click.echo(f"  billed without {report.held} held events of the period (--allow-held)")
    for o in report.outcomes:
        if o.status == "failed":
            click.echo(f"  {o.customer:<14} FAILED at {o.stage}: {o.error}")
            continue
        inv = o.invoice
        resumed = f" (resumed from run {o.resumed_from})" if o.resumed_from else ""
        click.echo(f"  {o.customer:<14} {o.status:<16} {inv.number:<16} {inv.totals.total} "
                   f"{inv.header.currency}{resumed}")
    for number, destination, error in report.deliveries:
        state = f"FAILED, will retry: {error}" if error else "delivered"
        click.echo(f"  delivery {number} -> {destination}: {state}")
    if not quiet:
        for o in report.outcomes:
            if o.invoice is not None and o.status != "already settled":
                print_invoice(o.invoice)
    if not report.ok:
        sys.exit(1)


@bill.command("show")
@click.argument("run_id", type=int)
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table", show_default=True)
def bill_show(run_id, fmt) -> None:
    """A bill run's stages per customer: status, timings, digest of the output, error."""
    from sinks.billing import run_stages
    with _connect() as conn:
        run, stages = run_stages(conn, run_id)
    if fmt == "json":
        click.echo(_json({"run": run, "stages": stages}))
        return
    only = f" customer {run['customer']}" if run["customer"] else ""
    click.echo(f"bill run {run_id}: {run['tenant']} {run['period']}{only}, {run['status']}, "
               f"by {run['actor']}, started {run['started_at'].isoformat()}"
               + (" (--allow-held)" if run["allow_held"] else ""))
    for s in stages:
        took = (f"{(s['finished_at'] - s['started_at']).total_seconds() * 1000:9.1f} ms" if s["finished_at"]
                else "  (interrupted)")
        note = f"from run {s['from_run']}" if s["from_run"] else (s["error"] or "")
        click.echo(f"  {s['customer']:<14} {s['stage_no']:>2} {s['stage']:<12} {s['status']:<8} {took} "
                   f"{(s['digest'] or '')[:16]:<16} {note}")


# --- aforo invoice ----------------------------------------------------------------------------------

@click.group()
def invoice() -> None:
    """Settled invoices and credit notes: list, show, export, void, trace; where they are delivered."""


def _load(conn, number: str, tenant: str | None):
    from sinks.billing import find_invoice, load_invoice
    invoice_id = find_invoice(conn, number, tenant)
    inv, stored = load_invoice(conn, invoice_id)
    return invoice_id, inv, stored


@invoice.command("list")
@click.option("--tenant")
@click.option("--period", callback=lambda _c, _p, v: _period(v))
@click.option("--customer")
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table", show_default=True)
def invoice_list(tenant, period, customer, fmt) -> None:
    """Invoices and credit notes, by tenant and number."""
    from sinks.billing import list_invoices
    with _connect() as conn:
        rows = list_invoices(conn, tenant, period, customer)
    if fmt == "json":
        click.echo(_json(rows))
        return
    for r in rows:
        status = f"voided by {r['voided_by']}" if r["voided_by"] else (
            f"voids {r['credit_note_of']}" if r["credit_note_of"] else "")
        click.echo(f"{r['tenant']:<10} {r['number']:<16} {r['customer']:<14} {r['period']} {r['net']:>14} "
                   f"{r['tax']:>12} {r['total']:>14} {r['currency']}  {status}")
    click.echo(f"{len(rows)} invoices")


@invoice.command("show")
@click.argument("number")
@click.option("--tenant", help="When the number exists in several tenants.")
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table", show_default=True)
def invoice_show(number, tenant, fmt) -> None:
    """An invoice with its lines, parts, discounts, tax, totals and deliveries; its digest is
    recomputed from the stored document and compared."""
    from operators.billing.settle import digest
    from sinks.billing import deliveries, voided_by
    with _connect() as conn:
        invoice_id, inv, stored = _load(conn, number, tenant)
        sent, voided = deliveries(conn, invoice_id), voided_by(conn, invoice_id)
    if fmt == "json":
        click.echo(_json({"invoice": inv.model_dump(mode="json"), "digest": stored,
                          "digest_verified": digest(inv) == stored, "voided_by": voided, "deliveries": sent}))
        return
    print_invoice(inv, digest(inv) == stored, voided)
    for d in sent:
        click.echo(f"  delivery -> {d['destination']}: {d['status']} after {d['attempts']} attempts"
                   + (f" ({d['last_error']})" if d["last_error"] else ""))


@invoice.command("export")
@click.argument("number")
@click.option("--format", "fmt", type=click.Choice(["json", "csv", "pdf", "html"]), default="json",
              show_default=True)
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path),
              help="Default: NUMBER.FORMAT in the current directory.")
@click.option("--tenant")
def invoice_export(number, fmt, output, tenant) -> None:
    """Write an invoice as json (its canonical document: SHA-256 = its digest), csv, pdf or html."""
    from sinks.invoice_files import RENDER, write_atomically
    with _connect() as conn:
        _, inv, _ = _load(conn, number, tenant)
    output = output or Path(f"{inv.number}.{fmt}")
    with writing(output):
        write_atomically(output, RENDER[fmt](inv))
    click.echo(f"{inv.number} -> {output}")


@invoice.command("void")
@click.argument("number")
@click.option("--reason", required=True, help="Why: printed on the credit note.")
@click.option("--tenant")
def invoice_void(number, reason, tenant) -> None:
    """Void a settled invoice by issuing a credit note (a negative invoice referencing it). The
    invoice itself never changes; its period can then be billed again."""
    from flows.billing import void_invoice
    note = void_invoice(_settings(), number, reason, tenant)
    click.echo(f"{note.number} voids {number}: total {note.totals.total} {note.header.currency}")


@invoice.command("trace")
@click.argument("number")
@click.option("--line", "line_no", type=int, help="One line (default: every usage line).")
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), required=True)
@click.option("--tenant")
def invoice_trace(number, line_no, output, tenant) -> None:
    """The ledger rows behind an invoice line, with their validation hashes and audit chain entries,
    in `aforo audit export`'s format (NDJSON + manifest): `aforo audit verify FILE` checks it."""
    from sinks.billing import export_trace
    with _connect() as conn:
        invoice_id, inv, _ = _load(conn, number, tenant)
        with writing(output):
            rows, manifest = export_trace(conn, invoice_id, inv, line_no, output)
    click.echo(f"{rows} rows -> {output}; manifest {manifest}")


@invoice.group("destinations")
def destinations() -> None:
    """Where a tenant's invoices are delivered besides the invoices topic."""


@destinations.command("add")
@click.argument("name")
@click.option("--tenant", required=True)
@click.option("--webhook", "url", help="POST each invoice here, signed like Aforo's generic webhooks.")
@click.option("--secret", help="The webhook's HMAC-SHA256 secret.")
@click.option("--directory", type=click.Path(file_okay=False), help="Write each invoice's files here.")
@click.option("--formats", default="json", show_default=True, help="For a directory: json,csv,pdf,html.")
def destinations_add(name, tenant, url, secret, directory, formats) -> None:
    """Add a signed webhook or a file directory."""
    from sinks.billing import add_destination
    from sinks.invoice_files import FORMATS
    if (url is None) == (directory is None):
        raise click.UsageError("give exactly one of --webhook URL or --directory DIR")
    if url is not None and not secret:
        raise click.UsageError("a webhook needs --secret (receivers verify the signature)")
    wanted = [f.strip() for f in formats.split(",") if f.strip()]
    if not wanted or set(wanted) - set(FORMATS):
        raise click.BadParameter(f"choose from {', '.join(FORMATS)}", param_hint="--formats")
    directory = str(Path(directory).absolute()) if directory else None
    with _connect() as conn:
        add_destination(conn, tenant, name, "webhook" if url else "directory", url, secret, directory, wanted)
    click.echo(f"invoices of {tenant} now also go to {name}")


@destinations.command("list")
@click.option("--tenant")
def destinations_list(tenant) -> None:
    from sinks.billing import list_destinations
    with _connect() as conn:
        for d in list_destinations(conn, tenant):
            where = d["url"] or f"{d['directory']} ({', '.join(d['formats'])})"
            click.echo(f"{d['tenant']:<10} {d['name']:<16} {d['kind']:<10} {where}")


@destinations.command("remove")
@click.argument("name")
@click.option("--tenant", required=True)
def destinations_remove(name, tenant) -> None:
    from sinks.billing import remove_destination
    with _connect() as conn:
        remove_destination(conn, tenant, name)
    click.echo(f"removed {name}")


# --- aforo credit -----------------------------------------------------------------------------------

@click.group()
def credit() -> None:
    """Prepaid credits: units of a metric a customer bought ahead."""


@credit.command("grant")
@click.option("--tenant", required=True)
@click.option("--customer", required=True)
@click.option("--metric", required=True)
@click.option("--units", required=True, help="Exact, e.g. 5000 or 12.5.")
@click.option("--from-period", required=True, callback=lambda _c, _p, v: _period(v),
              help="YYYY-MM: the first period the units may be used in.")
@click.option("--note")
def credit_grant(tenant, customer, metric, units, from_period, note) -> None:
    """Grant prepaid units; invoices draw them after included and rolled-over units."""
    from sinks.billing import grant_credit
    try:
        amount = Decimal(units)
    except InvalidOperation:
        raise click.BadParameter(f"{units!r} is not a number", param_hint="--units") from None
    if not amount.is_finite() or amount <= 0:
        raise click.BadParameter("must be a positive number", param_hint="--units")
    with _connect() as conn:
        grant = grant_credit(conn, tenant, customer, metric, amount, from_period, _settings().actor, note)
    click.echo(f"granted {amount} {metric} units to {tenant}/{customer} from {from_period}: grant {grant}")


@credit.command("list")
@click.option("--tenant", required=True)
@click.option("--customer", required=True)
def credit_list(tenant, customer) -> None:
    """A customer's grants and what is left of them."""
    from sinks.billing import credit_balances
    with _connect() as conn:
        for g in credit_balances(conn, tenant, customer):
            click.echo(f"{g.grant:<16} {g.metric:<14} from {g.from_period}  remaining {g.remaining}")


# --- the demo ---------------------------------------------------------------------------------------

def demo_billing(settings: config.Settings, now) -> None:
    """Bill the demo tenants' last ended period (its history was sent with the demo stream) and
    print the invoices; a later demo finds them settled and prints them again."""
    from cli.demo import TENANTS, billable_period
    from flows.billing import bill_run
    period = billable_period(now)
    click.echo(f"\nbilling {period}, the last period that has ended plus the lateness allowance "
               "(aforo bill run --allow-held: the demo's own late events stay held)")
    for tenant in TENANTS:
        report = bill_run(settings, tenant, period, allow_held=True)
        for o in report.outcomes:
            if o.status == "failed":
                click.echo(f"{tenant} {o.customer}: FAILED at {o.stage}: {o.error}")
            else:
                print_invoice(o.invoice)
    click.echo("\nmore: aforo invoice list | show INV | export INV --format pdf | trace INV --line 1 -o FILE")
