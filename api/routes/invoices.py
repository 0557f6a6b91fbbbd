"""Settled invoices and credit notes: GET /v1/invoices (list), /v1/invoices/{number} (lines and
each usage line's attribution), /v1/invoices/{number}/lines/{line}/events (a page of the events
behind a line), /v1/invoices/{number}/export (json, csv, html, pdf) and /v1/invoices/{number}/trace
(the verifiable file `aforo invoice trace` writes, with its manifest, zipped).

A tenant key reads its tenant's invoices, an operator key any tenant's (naming the tenant for one
invoice: numbers restart in every tenant), a customer key its own customer's only (the portal).
An invoice outside the key's scope is answered exactly like one that does not exist: 404."""

from __future__ import annotations

import shutil
import tempfile
import zipfile
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import Annotated, Literal
from urllib.parse import quote, urlencode

from fastapi import APIRouter, Query
from fastapi.responses import FileResponse, Response
from pydantic import BaseModel
from starlette.background import BackgroundTask

from api.errors import documented
from api.reads import Money, money, period_param
from api.services import Svc
from api.viewer import AnyViewer, Viewer
from operators.billing.settle import digest
from schemas.billing_run import Invoice
from schemas.billing_run import Line as InvoiceLine
from schemas.errors import NotFound
from sinks.billing import (
    export_trace,
    find_invoice,
    line_event_counts,
    line_events,
    list_invoices,
    load_invoice,
    voided_by,
)
from sinks.invoice_files import RENDER, notes, quantity_text, title

router = APIRouter(tags=["invoices"])
FIRST_EVENTS = 10  # events listed with each line of an invoice; the rest page by page
MEDIA_TYPES = {"json": "application/json", "csv": "text/csv; charset=utf-8",
               "html": "text/html; charset=utf-8", "pdf": "application/pdf"}
Format = Literal["json", "csv", "html", "pdf"]


class InvoiceSummary(BaseModel):
    number: str
    kind: str  # invoice | credit_note
    tenant: str
    customer: str
    period: str
    net: Money
    tax: Money
    total: Money
    settled_at: datetime
    credit_note_of: str | None  # a credit note: the invoice it voids
    voided_by: str | None  # an invoice: the credit note that voids it


@router.get("/v1/invoices", response_model=list[InvoiceSummary], responses=documented(400, 401, 403, 429),
            summary="Settled invoices and credit notes, by tenant and number")
async def invoices(viewer: AnyViewer, svc: Svc, tenant: str | None = None, period: str | None = None,
                   customer: str | None = None) -> list[InvoiceSummary]:
    scope, who = viewer.tenant_scope(tenant), viewer.customer_scope(customer)
    rows = await svc.db(list_invoices, scope, period_param(period) if period else None, who)
    return [InvoiceSummary(**{k: v for k, v in r.items() if k not in ("net", "tax", "total", "currency")},
                           **{k: money(r[k], r["currency"]) for k in ("net", "tax", "total")})
            for r in rows]


class Part(BaseModel):
    label: str  # tier 2 (above 100), model=gpt-4o, minimum of pro v1...
    quantity: str
    unit_price: str | None
    amount: str


class Discount(BaseModel):
    coupon: str
    amount: str


class AttributedEvent(BaseModel):
    """A ledger row behind a line: where it sits in the raw topic, the event, and what it added."""

    raw_topic_id: str
    raw_partition: int
    raw_offset: int
    source: str | None
    event_id: str | None
    event_time: datetime | None
    ingested_at: datetime
    validation_hash: str
    quantity: str
    total_after: str  # the running total it was priced on
    revenue: str  # its marginal revenue on the line's metric, exact
    adjusts_period: str | None  # a late event of that closed period, billed here


class EventPage(BaseModel):
    invoice: str
    line_no: int
    events: int  # every event behind the line
    offset: int
    limit: int
    items: list[AttributedEvent]
    next_offset: int | None


class Attribution(BaseModel):
    events: int  # ledger rows indexed behind the line when it was settled
    first: EventPage
    events_url: str
    trace_url: str  # NDJSON + manifest (zip): `aforo audit verify` checks it offline


class LineOut(BaseModel):
    line_no: int
    kind: str  # usage | commitment
    subscription: str
    metric: str | None
    group: dict[str, str]
    description: str
    model: str | None
    events: int
    adjustment_events: int
    quantity: str
    quantity_text: str  # the quantity with what was deducted, as the invoice prints it
    billable: str
    parts: list[Part]  # units per tier, packages, steps, fees
    usage_amount: Money  # the price of the whole quantity: the sum of the events' revenue
    amount: Money  # the price of the billable quantity, or the true-up
    discounts: list[Discount]
    discount: Money
    net: Money  # rounded once, per line, half-even
    tax: Money
    total: Money
    rounding: str
    attribution: Attribution | None  # usage lines of an invoice


class Totals(BaseModel):
    usage_subtotal: Money
    commitment: Money
    discount: Money
    net: Money
    tax: Money
    rounding: Money
    total: Money


class InvoiceDetail(BaseModel):
    number: str
    kind: str
    title: str
    tenant: str
    customer: str
    customer_name: str | None
    period: str
    currency: str
    credit_note_of: str | None
    voided_by: str | None
    digest: str
    digest_verified: bool  # recomputed from the stored document
    notes: list[str]
    totals: Totals
    lines: list[LineOut]
    exports: dict[str, str]  # format -> download URL
    trace_url: str  # every usage line


def _url(number: str, tail: str, tenant: str, viewer: Viewer, **params: object) -> str:
    """A link within the key's scope (an operator's names the tenant)."""
    query = urlencode({**params, **({"tenant": tenant} if viewer.operator else {})})
    return f"/v1/invoices/{quote(number)}{tail}" + (f"?{query}" if query else "")


def _find(conn, number: str, tenant: str, customer: str | None) -> tuple[int, Invoice, str]:
    """The invoice within the key's scope, or NotFound (whether it is absent or another's)."""
    invoice_id = find_invoice(conn, number, tenant)
    inv, stored = load_invoice(conn, invoice_id)
    if customer is not None and inv.header.customer != customer:
        raise NotFound(f"no invoice {number} of tenant {tenant}")
    return invoice_id, inv, stored


def _scope(viewer: Viewer, tenant: str | None) -> tuple[str, str | None]:
    return viewer.one_tenant(tenant), viewer.customer_scope(None)


def _page(invoice_id: int, line_no: int, total: int, offset: int, limit: int, rows: list[dict],
          number: str) -> EventPage:
    items = [AttributedEvent(**{k: format(v, "f") if isinstance(v, Decimal) else v for k, v in r.items()})
             for r in rows]
    return EventPage(invoice=number, line_no=line_no, events=total, offset=offset, limit=limit, items=items,
                     next_offset=offset + limit if offset + limit < total else None)


def _detail(conn, number: str, tenant: str, customer: str | None, first: int) -> tuple[Invoice, dict]:
    invoice_id, inv, stored = _find(conn, number, tenant, customer)
    counts = line_event_counts(conn, invoice_id)
    pages = {x.line_no: line_events(conn, invoice_id, x.line_no, 0, first)
             for x in inv.lines if x.kind == "usage" and inv.kind == "invoice"}
    return inv, {"id": invoice_id, "stored": stored, "voided_by": voided_by(conn, invoice_id),
                 "counts": counts, "pages": pages}


def _line(x: InvoiceLine, cur: str, attribution: Attribution | None) -> LineOut:
    m = {k: money(getattr(x, k), cur) for k in ("usage_amount", "amount", "discount", "tax", "total")}
    return LineOut(
        line_no=x.line_no, kind=x.kind, subscription=x.subscription, metric=x.metric, group=dict(x.group),
        description=x.description, model=x.model, events=x.events, adjustment_events=x.adjustment_events,
        quantity=str(x.quantity), quantity_text=quantity_text(x), billable=str(x.billable),
        parts=[Part(label=p.label, quantity=str(p.quantity), amount=str(p.amount),
                    unit_price=None if p.unit_price is None else str(p.unit_price)) for p in x.parts],
        discounts=[Discount(coupon=d.coupon, amount=str(d.amount)) for d in x.discounts],
        net=money(x.net_rounded, cur), rounding=str(x.rounding), attribution=attribution, **m)


@router.get("/v1/invoices/{number}", response_model=InvoiceDetail,
            responses=documented(400, 401, 403, 404, 429),
            summary="One invoice or credit note: its lines, and per usage line the events behind it")
async def invoice(number: str, viewer: AnyViewer, svc: Svc, tenant: str | None = None,
                  events: Annotated[int, Query(ge=0, le=500)] = FIRST_EVENTS) -> InvoiceDetail:
    """Each usage line lists its event count, its first `events` events (raw coordinates, event id,
    time, validation hash, revenue) and the URLs of the rest and of its trace export."""
    scope, who = _scope(viewer, tenant)
    inv, found = await svc.db(_detail, number, scope, who, events)
    h, t, cur = inv.header, inv.totals, inv.header.currency
    lines = []
    for x in inv.lines:
        attribution = None
        if x.line_no in found["pages"]:
            total = found["counts"].get(x.line_no, 0)
            attribution = Attribution(
                events=total, first=_page(found["id"], x.line_no, total, 0, events, found["pages"][x.line_no],
                                          inv.number),
                events_url=_url(inv.number, f"/lines/{x.line_no}/events", scope, viewer),
                trace_url=_url(inv.number, "/trace", scope, viewer, line=x.line_no))
        lines.append(_line(x, cur, attribution))
    return InvoiceDetail(
        number=inv.number, kind=inv.kind, title=title(inv), tenant=h.tenant, customer=h.customer,
        customer_name=h.customer_name, period=h.period, currency=cur, credit_note_of=inv.credit_note_of,
        voided_by=found["voided_by"], digest=found["stored"], digest_verified=digest(inv) == found["stored"],
        notes=notes(inv), lines=lines,
        totals=Totals(**{k: money(getattr(t, k), cur) for k in Totals.model_fields}),
        exports={f: _url(inv.number, "/export", scope, viewer, format=f) for f in RENDER},
        trace_url=_url(inv.number, "/trace", scope, viewer))


def _events(conn, number: str, tenant: str, customer: str | None, line_no: int, offset: int,
            limit: int) -> EventPage:
    invoice_id, inv, _ = _find(conn, number, tenant, customer)
    if not any(x.line_no == line_no and x.kind == "usage" for x in inv.lines):
        raise NotFound(f"{number} has no usage line {line_no}")
    total = line_event_counts(conn, invoice_id).get(line_no, 0)
    return _page(invoice_id, line_no, total, offset, limit,
                 line_events(conn, invoice_id, line_no, offset, limit), inv.number)


@router.get("/v1/invoices/{number}/lines/{line_no}/events", response_model=EventPage,
            responses=documented(400, 401, 403, 404, 429),
            summary="A page of the events behind a usage line, in raw order")
async def invoice_line_events(number: str, line_no: int, viewer: AnyViewer, svc: Svc,
                              tenant: str | None = None, offset: Annotated[int, Query(ge=0)] = 0,
                              limit: Annotated[int, Query(ge=1, le=1000)] = 100) -> EventPage:
    scope, who = _scope(viewer, tenant)
    return await svc.db(_events, number, scope, who, line_no, offset, limit)


def _attachment(name: str) -> dict[str, str]:
    return {"Content-Disposition": f'attachment; filename="{name}"'}


@router.get("/v1/invoices/{number}/export", response_class=Response,
            responses={200: {"description": "The invoice as a file: json is its canonical document (its "
                             "SHA-256 is the invoice's digest)",
                             "content": {t.split(";")[0]: {} for t in MEDIA_TYPES.values()}},
                       **documented(400, 401, 403, 404, 429)},
            summary="Download an invoice as json, csv, html or pdf (as `aforo invoice export`)")
async def invoice_export(number: str, viewer: AnyViewer, svc: Svc, tenant: str | None = None,
                         format: Format = "json") -> Response:
    scope, who = _scope(viewer, tenant)
    _, inv, _ = await svc.db(_find, number, scope, who)
    return Response(RENDER[format](inv), media_type=MEDIA_TYPES[format],
                    headers=_attachment(f"{inv.number}.{format}"))


def _trace_zip(conn, number: str, tenant: str, customer: str | None, line_no: int | None,
               directory: Path) -> Path:
    invoice_id, inv, _ = _find(conn, number, tenant, customer)
    name = f"{inv.number}-line-{line_no}" if line_no is not None else f"{inv.number}-trace"
    ndjson = directory / f"{name}.ndjson"
    _, manifest = export_trace(conn, invoice_id, inv, line_no, ndjson)
    archive = directory / f"{name}.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as z:
        z.write(ndjson, ndjson.name)
        z.write(manifest, manifest.name)
    return archive


@router.get("/v1/invoices/{number}/trace", response_class=FileResponse,
            responses={200: {"description": "A zip of the NDJSON export and its manifest, as `aforo invoice "
                             "trace` writes them; unzip and check with `aforo audit verify FILE.ndjson`",
                             "content": {"application/zip": {}}},
                       **documented(400, 401, 403, 404, 429)},
            summary="Download the ledger rows behind a usage line (or every usage line), verifiable offline")
async def invoice_trace(number: str, viewer: AnyViewer, svc: Svc, tenant: str | None = None,
                        line: int | None = None) -> FileResponse:
    scope, who = _scope(viewer, tenant)
    directory = Path(tempfile.mkdtemp(prefix="aforo-trace-"))
    try:
        archive = await svc.db(_trace_zip, number, scope, who, line, directory)
    except BaseException:
        shutil.rmtree(directory, ignore_errors=True)
        raise
    return FileResponse(archive, media_type="application/zip", filename=archive.name,
                        background=BackgroundTask(shutil.rmtree, directory, ignore_errors=True))
