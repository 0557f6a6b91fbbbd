"""An invoice as a file: json (its canonical document: the file's SHA-256 is the invoice digest),
csv (one row per line), html and pdf (for people; figures as exact strings, never re-rounded).

The PDF is drawn with fpdf2 (pure Python, maintained, deterministic output once the creation date
is fixed: it is the period's end, so the same invoice gives the same bytes). Its built-in
Helvetica covers Windows-1252; characters beyond it are printed as "?" there, and only there.
"""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path

from fpdf import FPDF
from jinja2 import Environment

from operators.billing.common import group_label
from operators.billing.settle import digest, document
from operators.revenue import period_bounds
from schemas.billing_run import Invoice, Line

FORMATS = ("json", "csv", "html", "pdf")
CSV_COLUMNS = ("number", "line_no", "kind", "subscription", "metric", "group", "description", "events",
               "adjustment_events", "quantity", "blocked", "rollover_used", "included_used", "credits_used",
               "billable", "usage_amount", "amount", "discount", "net", "tax_exact", "net_rounded", "tax",
               "rounding", "total")


def _amount(v: Decimal) -> str:
    return format(v, "f")


def exact(v: Decimal) -> str:
    """An exact amount for people: every digit, none trailing (0.1000000 -> 0.1, 6E-7 -> 0.0000006).
    Rounded money keeps its minor unit as stored."""
    return format(v.normalize(), "f") if v else "0"


def part_text(p) -> str:
    price = f" x {exact(p.unit_price)}" if p.unit_price is not None else ""
    return f"{p.label}: {exact(p.quantity)}{price} = {exact(p.amount)}"


def title(invoice: Invoice) -> str:
    if invoice.kind == "credit_note":
        return f"Credit note {invoice.number} (voids {invoice.credit_note_of})"
    return f"Invoice {invoice.number}"


def notes(invoice: Invoice) -> list[str]:
    """What a reader needs besides the lines: tax treatment, rollovers, what was left out."""
    out = []
    rate = invoice.tax_rate
    if rate is None:
        out.append("No tax is charged on this invoice.")
    elif rate.kind == "reverse_charge":
        out.append(f"{rate.name}: reverse charge, the customer accounts for the tax.")
    elif rate.kind == "zero_rated":
        out.append(f"{rate.name}: zero-rated supply.")
    else:
            out.append(f"Tax: {rate.name} ({exact(rate.percent)}%), exclusive, per line.")
    out.append(f"Amounts are rounded once, per line, to {invoice.minor_units} decimals (half-even); "
               f"rounding difference {exact(invoice.totals.rounding)} {invoice.header.currency}.")
    for c in invoice.rollover_out:
        out.append(f"{c.units} unused included {c.metric} units of {c.subscription} roll over.")
    adjusted = sum(x.adjustment_events for x in invoice.lines)
    if adjusted:
        out.append(f"Includes {adjusted} late events of earlier, closed periods (adjustments).")
    if invoice.held_excluded:
        out.append(f"Billed without {len(invoice.held_excluded)} held events awaiting reconciliation: "
                   + ", ".join(str(h.id) for h in invoice.held_excluded[:20]))
    if invoice.note:
        out.append(f"Note: {invoice.note}")
    return out


def deductions_text(x: Line) -> str:
    """What of the metered quantity is not billed, and why: "blocked 60; billable 500"."""
    deducted = [(n, v) for n, v in (("blocked over quota", x.blocked), ("rolled over", x.rollover_used),
                                    ("included", x.included_used), ("prepaid credits", x.credits_used)) if v]
    if not deducted:
        return ""
    return "; ".join(f"{n} {exact(v)}" for n, v in deducted) + f"; billable {exact(x.billable)}"


def quantity_text(x: Line) -> str:
    if x.kind == "commitment":
        return "-"
    deductions = deductions_text(x)
    return exact(x.quantity) + (f" ({deductions})" if deductions else "")


def to_json(invoice: Invoice) -> bytes:
    return document(invoice)


def to_csv(invoice: Invoice) -> bytes:
    out = io.StringIO()
    w = csv.writer(out, lineterminator="\n")
    w.writerow(CSV_COLUMNS)
    for x in invoice.lines:
        w.writerow([invoice.number, x.line_no, x.kind, x.subscription, x.metric or "", group_label(x.group),
                    x.description, x.events, x.adjustment_events,
                    *(_amount(getattr(x, c)) for c in CSV_COLUMNS[9:])])
    return out.getvalue().encode()


_HTML = Environment(autoescape=True).from_string("""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{{ title }}</title>
<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse;width:100%}
td,th{border-bottom:1px solid #ccc;padding:4px 6px;text-align:left}td.n,th.n{text-align:right}
small{color:#555}</style></head><body>
<h1>{{ title }}</h1>
<p>{{ i.header.customer_name or i.header.customer }} ({{ i.header.customer }})
&middot; tenant {{ i.header.tenant }} &middot; period {{ i.header.period }}
&middot; {{ i.header.currency }}</p>
<table><thead><tr><th>#</th><th>description</th><th class="n">quantity</th><th class="n">amount</th>
<th class="n">discount</th><th class="n">net</th><th class="n">tax</th><th class="n">total</th></tr>
</thead><tbody>
{% for x in i.lines %}<tr><td>{{ x.line_no }}</td><td>{{ x.description }}<br><small>{{ x.subscription }}
{% for p in x.parts %}&middot; {{ part(p) }} {% endfor %}
{% for d in x.discounts %}&middot; coupon {{ d.coupon }} &minus;{{ exact(d.amount) }} {% endfor %}
</small></td><td class="n">{{ qty(x) }}</td><td class="n">{{ exact(x.amount) }}</td>
<td class="n">{{ exact(x.discount) }}</td>
<td class="n">{{ x.net_rounded }}</td><td class="n">{{ x.tax }}</td><td class="n">{{ x.total }}</td></tr>
{% endfor %}</tbody></table>
<table style="width:auto;margin-top:1em">
<tr><td>usage subtotal</td><td class="n">{{ exact(i.totals.usage_subtotal) }}</td></tr>
<tr><td>commitment true-up</td><td class="n">{{ exact(i.totals.commitment) }}</td></tr>
<tr><td>discounts</td><td class="n">&minus;{{ exact(i.totals.discount) }}</td></tr>
<tr><td>net</td><td class="n">{{ i.totals.net }}</td></tr>
<tr><td>tax</td><td class="n">{{ i.totals.tax }}</td></tr>
<tr><th>total {{ i.header.currency }}</th><th class="n">{{ i.totals.total }}</th></tr></table>
{% for n in notes %}<p><small>{{ n }}</small></p>{% endfor %}
<p><small>digest {{ digest }}</small></p></body></html>
""")


def to_html(invoice: Invoice) -> bytes:
    return _HTML.render(i=invoice, title=title(invoice), notes=notes(invoice), qty=quantity_text,
                        part=part_text, exact=exact, digest=digest(invoice)).encode()


def _pdf_text(text: str) -> str:
    return text.encode("windows-1252", "replace").decode("windows-1252")


def to_pdf(invoice: Invoice) -> bytes:
    h, t = invoice.header, invoice.totals
    pdf = FPDF(orientation="L")
    pdf.core_fonts_encoding = "windows-1252"
    pdf.set_creation_date(period_bounds(h.period)[1])
    pdf.set_title(title(invoice))
    pdf.add_page()
    pdf.set_font("Helvetica", "B", 16)
    pdf.cell(0, 10, _pdf_text(title(invoice)), new_x="LMARGIN", new_y="NEXT")
    pdf.set_font("Helvetica", size=10)
    pdf.cell(0, 6, _pdf_text(f"{h.customer_name or h.customer} ({h.customer}) - tenant {h.tenant} - period "
                             f"{h.period} - {h.currency}"), new_x="LMARGIN", new_y="NEXT")
    pdf.ln(3)
    widths = (10, 95, 60, 30, 25, 25, 25, 27)
    pdf.set_font("Helvetica", size=8)
    align = ("RIGHT", "LEFT", *("RIGHT",) * 6)
    with pdf.table(col_widths=widths, text_align=align, first_row_as_headings=True) as table:
        table.row(["#", "description", "quantity", "amount", "discount", "net", "tax", "total"])
        for x in invoice.lines:
            parts = "".join(f"\n{part_text(p)}" for p in x.parts)
            table.row([str(x.line_no), _pdf_text(f"{x.description} [{x.subscription}]{parts}"),
                       _pdf_text(quantity_text(x)), exact(x.amount), exact(x.discount), str(x.net_rounded),
                       str(x.tax), str(x.total)])
    pdf.ln(3)
    pdf.set_font("Helvetica", size=10)
    for label, value in (("usage subtotal", exact(t.usage_subtotal)),
                         ("commitment true-up", exact(t.commitment)),
                         ("discounts", f"-{exact(t.discount)}"), ("net", str(t.net)), ("tax", str(t.tax)),
                         (f"total {h.currency}", str(t.total))):
        pdf.cell(60, 6, label)
        pdf.cell(40, 6, value, align="R", new_x="LMARGIN", new_y="NEXT")
    pdf.ln(2)
    pdf.set_font("Helvetica", size=8)
    for n in [*notes(invoice), f"digest {digest(invoice)}"]:
        pdf.multi_cell(0, 4, _pdf_text(n), new_x="LMARGIN", new_y="NEXT")
    return bytes(pdf.output())


RENDER: dict[str, Callable[[Invoice], bytes]] = {"json": to_json, "csv": to_csv, "html": to_html,
                                                 "pdf": to_pdf}


def write_atomically(path: Path, data: bytes) -> None:
    """Write then rename, so a reader never sees half a file and a retry simply rewrites it."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def export_files(invoice: Invoice, directory: Path, formats: tuple[str, ...]) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for fmt in formats:
        path = directory / f"{invoice.number}.{fmt}"
        write_atomically(path, RENDER[fmt](invoice))
        paths.append(path)
    return paths
