"""The bill run: ten stages per customer, each a pure function in operators/billing/, supplied here
with what it reads and recorded as it finishes.

    quota_check -> rollover -> aggregate -> allowance -> rate -> commit -> discount -> tax
                -> route -> settle  (then the delivery outbox: Kafka, webhooks, files)

Per customer, in customer id order (so invoice numbers do not depend on timing): every stage's
output (the draft invoice so far) is stored in bill_run_stages with its digest in its own
transaction. A stage that fails stops that customer at that stage with the error recorded; the
others go on. Running again resumes each unfinished customer from the stage that failed (or was
interrupted, `kill -9` included), with the results before it taken as stored; a customer whose
invoice is settled is skipped and said so. Settle numbers, stores and indexes the invoice in one
transaction, so numbers never skip and no invoice is settled twice.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field

import psycopg
from babel.numbers import get_currency_precision

from config import Settings
from operators.billing import STAGES
from operators.billing.aggregate import aggregate
from operators.billing.allowance import allowance
from operators.billing.commit import commit
from operators.billing.discount import discount
from operators.billing.quota_check import quota_check, readiness
from operators.billing.rate import rate
from operators.billing.rollover import rollover
from operators.billing.route import route
from operators.billing.settle import credit_note, digest, settle
from operators.billing.tax import tax
from operators.revenue import period_bounds
from schemas.billing_run import Draft, Invoice
from schemas.errors import AforoError, Conflict, NotFound
from sinks import billing as db
from sinks.catalog import require_tenant
from sinks.invoice_delivery import deliver_pending
from sinks.periods import close_period, finish_close, is_closed
from sinks.postgres import connect

SETTLE = len(STAGES)
# What a stage may fail with and still leave the other customers to bill: its own verdict
# (BillingStageError), a charge it cannot price (PricingError, Unpriceable), arithmetic that would
# not be exact, terms that do not parse. A database that is down ends the run instead.
STAGE_ERRORS = (AforoError, ValueError, LookupError, ArithmeticError, TypeError)


@dataclass
class Outcome:
    customer: str
    status: str  # settled | already settled | failed | draft
    stage: str | None = None  # where it failed
    error: str | None = None
    invoice: Invoice | None = None
    resumed_from: int | None = None  # the run whose stage results it continued from


@dataclass
class Report:
    tenant: str
    period: str
    run_id: int | None
    closed_now: bool = False
    held: int = 0  # held events of the period billed without (--allow-held), all customers
    outcomes: list[Outcome] = field(default_factory=list)
    deliveries: list[tuple[str, str, str | None]] = field(default_factory=list)  # invoice, destination, error

    @property
    def ok(self) -> bool:
        return (all(o.status != "failed" for o in self.outcomes)
                and all(error is None for *_, error in self.deliveries))


def _json(draft: Draft) -> str:
    return draft.model_dump_json()


def _stage_functions(conn: psycopg.Connection, ctx: _Context) -> list[Callable[[Draft | None], Draft]]:
    """Stage n's function of the draft stage n-1 left (stage 1 starts from the header), with what
    it reads bound in."""
    t, c, p = ctx.tenant, ctx.customer, ctx.period
    return [
        lambda _: quota_check(db.header(conn, t, c, p), period_end=ctx.period_end, watermark=ctx.watermark,
                              closed=ctx.closed, held=ctx.held, allow_held=ctx.allow_held,
                              quotas=db.quota_rules(conn, t), flow=ctx.flow),
        lambda d: rollover(d, db.previous_period(conn, t, c, p)),
        lambda d: aggregate(d, db.ledger_lines(conn, t, c, p), ctx.flow),
        lambda d: allowance(d, db.credit_balances(conn, t, c)),
        lambda d: rate(d, db.event_amounts(conn, d)),
        commit,
        lambda d: discount(d, db.coupons(conn, t, c)),
        lambda d: tax(d, db.tax_terms(conn, t, c), get_currency_precision(d.header.currency)),
        lambda d: route(d, db.destinations(conn, t)),
    ]


@dataclass
class _Context:
    tenant: str
    period: str
    customer: str
    period_end: object
    watermark: object
    closed: bool
    held: list
    allow_held: bool
    flow: list


def bill_run(settings: Settings, tenant: str, period: str, *, customer: str | None = None,
             allow_held: bool = False, dry_run: bool = False, deliver: bool = True) -> Report:
    """Bill the tenant's period (or one customer of it). A dry run computes the drafts and records,
    closes and sends nothing."""
    period_bounds(period)  # ValueError for anything but YYYY-MM
    with connect(settings.database_url, autocommit=True) as conn:
        require_tenant(conn, tenant)
        with db.period_lock(conn, tenant, period):
            return _bill_period(settings, conn, tenant, period, customer, allow_held, dry_run, deliver)


def _bill_period(settings: Settings, conn: psycopg.Connection, tenant: str, period: str, customer: str | None,
                 allow_held: bool, dry_run: bool, deliver: bool) -> Report:
    _, period_end = period_bounds(period)
    flow = db.flow_totals(conn, tenant, period)
    customers = db.customers_to_bill(conn, tenant, period, customer, flow)
    if customer is not None and not customers:
        raise NotFound(f"{tenant} has no customer {customer!r} with a subscription or usage in "
                       f"{period}")
    report = Report(tenant, period, None)
    todo = []
    for c in customers:
        settled = db.settled_invoice(conn, tenant, period, c)
        if settled is not None:
            report.outcomes.append(Outcome(c, "already settled", invoice=settled))
        else:
            todo.append(c)
    watermark, held = db.watermark(conn), db.held_events(conn, tenant, period)
    closed = is_closed(conn, tenant, period)
    if todo and not dry_run:
        report.run_id = db.start_run(conn, tenant, period, customer, allow_held, settings.actor)
        if closed:
            finish_close(conn, tenant, period)  # a close interrupted before its digest: finished first
        elif readiness(period_end, watermark, held, allow_held) is None:
            close_period(conn, tenant, period, settings.actor)  # `aforo period close`
            closed = report.closed_now = True
    report.held = len(held) if allow_held else 0
    for c in todo:
        ctx = _Context(tenant, period, c, period_end, watermark, closed or dry_run, held, allow_held,
                       flow)
        report.outcomes.append(_bill_customer(conn, ctx, report.run_id, dry_run))
    if report.run_id is not None:
        db.finish_run(conn, report.run_id, all(o.status != "failed" for o in report.outcomes))
    if deliver and not dry_run:
        report.deliveries = deliver_pending(settings, conn, tenant, period)
    return report


def _bill_customer(conn: psycopg.Connection, ctx: _Context, run_id: int | None, dry_run: bool) -> Outcome:
    functions = _stage_functions(conn, ctx)
    draft, first, outcome = None, 1, Outcome(ctx.customer, "draft" if dry_run else "settled")
    resume = None if dry_run else db.resume_point(conn, ctx.tenant, ctx.period, ctx.customer)
    if resume is not None:
        from_run, done, result = resume
        db.stages_reused(conn, run_id, ctx.customer, from_run, done)
        draft, first, outcome.resumed_from = Draft.model_validate_json(result), done + 1, from_run
    for stage_no in range(first, SETTLE):
        if not dry_run:
            db.stage_started(conn, run_id, ctx.customer, stage_no)
        try:
            draft = functions[stage_no - 1](draft)
        except STAGE_ERRORS as exc:
            message = str(exc) or type(exc).__name__
            if not dry_run:
                db.stage_finished(conn, run_id, ctx.customer, stage_no, error=message)
            outcome.status, outcome.stage, outcome.error = "failed", STAGES[stage_no - 1], message
            return outcome
        if not dry_run:
            result = _json(draft)
            db.stage_finished(conn, run_id, ctx.customer, stage_no, result=result,
                              digest_=hashlib.sha256(result.encode()).hexdigest())
    if dry_run:
        outcome.invoice = settle(draft, "DRAFT")
        return outcome
    db.stage_started(conn, run_id, ctx.customer, SETTLE)
    try:
        with conn.transaction():
            invoice = settle(draft, db.next_number(conn, ctx.tenant, "INV", ctx.period))
            invoice_id = db.store_invoice(conn, invoice, run_id)
            db.index_events(conn, invoice_id, invoice)
            db.stage_finished(conn, run_id, ctx.customer, SETTLE, result=invoice.model_dump_json(),
                              digest_=digest(invoice))
    except (RuntimeError, psycopg.errors.UniqueViolation) as exc:
        db.stage_finished(conn, run_id, ctx.customer, SETTLE, error=str(exc))
        outcome.status, outcome.stage, outcome.error = "failed", "settle", str(exc)
        return outcome
    outcome.invoice = invoice
    return outcome


def void_invoice(settings: Settings, number: str, reason: str, tenant: str | None = None) -> Invoice:
    """Issue the credit note that voids a settled invoice: its lines negated, a number of its own,
    delivered where the invoice went."""
    if not reason.strip():  # printed on the note, which can never be changed or issued again
        raise AforoError("a credit note needs a reason (--reason): it is printed on the note")
    with connect(settings.database_url, autocommit=True) as conn:
        invoice_id = db.find_invoice(conn, number, tenant)
        original, _ = db.load_invoice(conn, invoice_id)
        if original.kind != "invoice":
            raise Conflict(f"{number} is a credit note: only an invoice can be voided")
        if (by := db.voided_by(conn, invoice_id)) is not None:
            raise Conflict(f"{number} is already voided by {by}")
        h = original.header
        try:
            with conn.transaction():
                note = credit_note(original, db.next_number(conn, h.tenant, "CN", h.period), reason)
                db.store_invoice(conn, note, None, original=invoice_id)
        except psycopg.errors.UniqueViolation:  # voided at the same moment by someone else
            raise Conflict(f"{number} is already voided by {db.voided_by(conn, invoice_id)}") from None
        deliver_pending(settings, conn, h.tenant, h.period)
    return note
