"""The whole bill run against a real broker and Postgres: ledger to settled, numbered invoices."""

from __future__ import annotations

import hashlib
import json
import random
from datetime import timedelta
from decimal import Decimal as D

import pytest
from billing_fixtures import END, PERIOD, START, apply, cli, clock_past, event, ledger_revenue, on_time, send_at

from flows.billing import bill_run
from flows.metering import run
from sinks.postgres import connect

pytestmark = pytest.mark.integration

TERMS = {
    "tax_rates": [{"tenant": "acme", "id": "vat20", "name": "VAT 20%", "percent": "20"},
                  {"tenant": "acme", "id": "export", "name": "Export", "percent": "0", "kind": "zero_rated"}],
    "customers": [{"tenant": "acme", "id": "cust-1", "name": "Globex Labs", "tax_rate": "vat20"},
                  {"tenant": "acme", "id": "cust-2", "name": "Initech", "tax_rate": "export"}],
    "subscriptions": [{"tenant": "acme", "id": "sub-1", "customer": "cust-1", "plan": "pro", "plan_version": 1,
                       "start": "2026-01-01T00:00:00Z", "minimum": "5.00"}],
    "coupons": [{"tenant": "acme", "code": "WELCOME10", "percent_off": "10", "periods": 3}],
    "redemptions": [{"tenant": "acme", "customer": "cust-1", "coupon": "WELCOME10", "from_period": "2026-02"}],
}


def month_of_usage(settings, n: int = 150) -> None:
    """cust-1: n api calls and two llm completions; cust-2: 40 api calls; all on time in PERIOD."""
    rnd = random.Random(15)

    def at() -> object:
        return START + timedelta(minutes=rnd.randint(0, 40_000))

    lines = [(event(f"c1-{i}", "cust-1", t), t) for i in range(n) for t in [at()]]
    lines += [(event(f"c2-{i}", "cust-2", t), t) for i in range(40) for t in [at()]]
    t1, t2 = START + timedelta(days=3), START + timedelta(days=4)
    lines += [(event("t1", "cust-1", t1, "llm.completion", {"tokens": 1000, "model": "gpt-4o"}), t1),
              (event("t2", "cust-1", t2, "llm.completion", {"tokens": 500, "model": "gpt-4o-mini"}), t2)]
    timed = sorted(lines, key=lambda x: x[1])
    send_at(settings, [*on_time(timed), clock_past(END)])
    run(settings, once=True)


def test_a_period_is_billed_with_commitment_discount_and_tax_and_billing_again_changes_nothing(settings):
    apply(settings, TERMS)
    month_of_usage(settings)
    report = bill_run(settings, "acme", PERIOD)
    assert report.ok and report.closed_now
    by = {o.customer: o for o in report.outcomes}
    assert {c: o.status for c, o in by.items()} == {"cust-1": "settled", "cust-2": "settled", "cust-3": "settled"}
    assert [by[c].invoice.number for c in ("cust-1", "cust-2", "cust-3")] == \
        ["INV-2026-0001", "INV-2026-0002", "INV-2026-0003"]

    inv = by["cust-1"].invoice
    calls, tokens_4o, tokens_mini, true_up = inv.lines
    # graduated api calls: 100 free, then 0.002: the events' own marginal revenue, to the last digit
    assert (calls.metric, calls.quantity, calls.usage_amount) == ("api_calls", 150, D("0.1"))
    assert calls.usage_amount == ledger_revenue(settings, "cust-1")["api_calls"][1]
    assert tokens_4o.group == (("model", "gpt-4o"),) and tokens_4o.amount == D("0.01")
    assert tokens_mini.amount == D("0.0003")
    assert inv.totals.usage_subtotal == D("0.1103") == sum(r for _, r in ledger_revenue(settings, "cust-1").values())
    assert (true_up.kind, true_up.amount) == ("commitment", D("5.00") - D("0.1103"))
    assert sum(p.amount for p in true_up.parts) == true_up.amount
    assert [x.discount for x in inv.lines] == [D("0.01"), D("0.001"), D("0.00003"), D("0.48897")]
    assert inv.totals.discount == D("0.5") and inv.totals.net == D("4.50")
    assert [x.tax for x in inv.lines] == [D("0.02"), D("0.00"), D("0.00"), D("0.88")]
    assert inv.totals.total == D("5.40") and inv.totals.tax == D("0.90")
    assert inv.totals.rounding == D("5.40") - (D("4.5") + D("0.9"))  # shown, however small
    # cust-2: 40 calls are within the free tier; zero-rated
    assert by["cust-2"].invoice.totals.total == 0 and by["cust-2"].invoice.tax_rate.kind == "zero_rated"

    again = bill_run(settings, "acme", PERIOD)
    assert again.run_id is None and {o.status for o in again.outcomes} == {"already settled"}
    assert [o.invoice.number for o in again.outcomes] == [o.invoice.number for o in report.outcomes]
    listed = cli(settings, "invoice", "list", "--tenant", "acme", "--period", PERIOD)
    assert listed.count("INV-2026-") == 3 and "3 invoices" in listed
    shown = cli(settings, "invoice", "show", "INV-2026-0001")
    assert "(verified)" in shown and "minimum commitment true-up" in shown and "coupon WELCOME10" in shown
    stages = cli(settings, "bill", "show", str(report.run_id))
    assert stages.count("ok") == 30 and "settle" in stages and "quota_check" in stages
    with connect(settings.database_url) as conn:  # settled is immutable
        with pytest.raises(Exception, match="immutable"):
            conn.execute("UPDATE invoices SET total = 0")


def test_exports_are_deterministic_and_the_json_is_the_digested_document(settings, tmp_path):
    apply(settings, TERMS)
    month_of_usage(settings, n=120)
    bill_run(settings, "acme", PERIOD)
    digest = json.loads(cli(settings, "invoice", "show", "INV-2026-0001", "--format", "json"))["digest"]
    for fmt in ("json", "csv", "pdf", "html"):
        out = tmp_path / f"a.{fmt}"
        cli(settings, "invoice", "export", "INV-2026-0001", "--format", fmt, "-o", str(out))
        again = tmp_path / f"b.{fmt}"
        cli(settings, "invoice", "export", "INV-2026-0001", "--format", fmt, "-o", str(again))
        assert out.read_bytes() == again.read_bytes()
    assert hashlib.sha256((tmp_path / "a.json").read_bytes()).hexdigest() == digest
    assert (tmp_path / "a.pdf").read_bytes().startswith(b"%PDF")
    assert "WELCOME10" in (tmp_path / "a.html").read_text()
    rows = (tmp_path / "a.csv").read_text().splitlines()
    assert rows[0].startswith("number,line_no,kind") and len(rows) == 5
