"""The whole bill run against a real broker and Postgres: ledger to settled, numbered invoices."""

from __future__ import annotations

import hashlib
import json
import random
from datetime import timedelta
from decimal import Decimal as D

import pytest
from billing_fixtures import (
    END,
    MODELS,
    PERIOD,
    START,
    apply,
    cli,
    clock_past,
    event,
    ledger_revenue,
    on_time,
    send_at,
)

from flows.billing import bill_run
from flows.metering import run
from sinks.postgres import connect

pytestmark = pytest.mark.integration

TERMS = {
    "tax_rates": [{"tenant": "acme", "id": "vat20", "name": "VAT 20%", "percent": "20"},
                  {"tenant": "acme", "id": "export", "name": "Export", "percent": "0", "kind": "zero_rated"}],
    "customers": [{"tenant": "acme", "id": "cust-1", "name": "Globex Labs", "tax_rate": "vat20"},
                  {"tenant": "acme", "id": "cust-2", "name": "Initech", "tax_rate": "export"}],
    "subscriptions": [{"tenant": "acme", "id": "sub-1", "customer": "cust-1", "plan": "pro",
                       "plan_version": 1, "start": "2026-01-01T00:00:00Z", "minimum": "5.00"}],
    "coupons": [{"tenant": "acme", "code": "WELCOME10", "percent_off": "10", "periods": 3}],
    "redemptions": [{"tenant": "acme", "customer": "cust-1", "coupon": "WELCOME10",
                     "from_period": "2026-02"}],
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
    assert {c: o.status for c, o in by.items()} == dict.fromkeys(("cust-1", "cust-2", "cust-3"), "settled")
    assert [by[c].invoice.number for c in ("cust-1", "cust-2", "cust-3")] == \
        ["INV-2026-0001", "INV-2026-0002", "INV-2026-0003"]

    inv = by["cust-1"].invoice
    calls, tokens_4o, tokens_mini, true_up = inv.lines
    # graduated api calls: 100 free, then 0.002: the events' own marginal revenue, to the last digit
    assert (calls.metric, calls.quantity, calls.usage_amount) == ("api_calls", 150, D("0.1"))
    assert calls.usage_amount == ledger_revenue(settings, "cust-1")["api_calls"][1]
    assert tokens_4o.group == (("model", "gpt-4o"),) and tokens_4o.amount == D("0.01")
    assert tokens_mini.amount == D("0.0003")
    events_revenue = sum(r for _, r in ledger_revenue(settings, "cust-1").values())
    assert inv.totals.usage_subtotal == D("0.1103") == events_revenue
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
    with connect(settings.database_url) as conn:
        parts = conn.execute("SELECT model, parts FROM invoice_lines WHERE line_no = 1 ORDER BY invoice_id"
                             ).fetchone()
    assert parts == ("graduated", [p.model_dump(mode="json") for p in calls.parts]) and len(parts[1]) == 2
    with connect(settings.database_url) as conn, pytest.raises(Exception, match="immutable"):
        conn.execute("UPDATE invoices SET total = 0")  # settled is immutable


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


# --- all eight pricing models: the invoice adds up to the events' marginal revenue ---------------------

EIGHT = {
    "tenants": [{"id": "umbra", "currency": "USD"}],
    "metrics": [{"tenant": "umbra", "code": m, "event_type": "use", "aggregation": "sum",
                 "value": "$.amount" if m == "percentage" else "$.q",
                 "group_by": ["region"] if m == "matrix" else []} for m in MODELS],
    "plans": [{"tenant": "umbra", "code": "all", "version": 1, "currency": "USD",
               "charges": [{"metric": m, **c} for m, c in MODELS.items()]}],
    "customers": [{"tenant": "umbra", "id": "u1"}],
    "subscriptions": [{"tenant": "umbra", "id": "us1", "customer": "u1", "plan": "all", "plan_version": 1,
                       "start": "2026-01-01T00:00:00Z"}],
}


def test_every_pricing_model_bills_the_sum_of_its_events_marginal_revenue(settings):
    apply(settings, EIGHT)
    rnd = random.Random(8)
    lines = []
    for i in range(400):
        t = START + timedelta(minutes=100 * i)
        data = {"q": f"{rnd.randint(0, 12)}.{rnd.randint(0, 99):02d}",
                "amount": f"{rnd.randint(1, 300)}.{rnd.randint(0, 99)}",
                "region": rnd.choice(["eu", "us", "ap"])}
        lines.append((event(f"u{i}", "u1", t, "use", data, tenant="umbra"), t))
    send_at(settings, [*on_time(lines), clock_past(END, "umbra", "u1")])
    run(settings, once=True)

    report = bill_run(settings, "umbra", PERIOD)
    assert report.ok, report.outcomes
    [inv] = [o.invoice for o in report.outcomes]
    with connect(settings.database_url) as conn:
        marginals = dict(conn.execute(
            "SELECT x.metric || coalesce('/' || (x.grp->>'region'), ''), sum(x.revenue) FROM ledger l"
            " JOIN ledger_lines x USING (raw_topic_id, raw_partition, raw_offset)"
            " WHERE l.tenantid = 'umbra' AND l.period = %s AND l.status = 'accepted' GROUP BY 1", (PERIOD,)))
    got = {x.metric + "".join(f"/{v}" for _, v in x.group): x.amount for x in inv.lines}
    assert set(got) == set(marginals) and len(got) == 10  # seven charges, and the matrix's three regions
    for key, amount in got.items():
        assert amount == marginals[key], key
    assert {x.model for x in inv.lines} == set(MODELS)
    assert inv.totals.usage_subtotal == sum(marginals.values())
    assert all(x.amount == x.usage_amount and x.discount == 0 for x in inv.lines)


def test_a_partitions_events_stamped_out_of_order_bill_as_the_flow_rated_them(settings):
    """Kafka timestamps need not increase along a partition (two door replicas stamp at once,
    their clocks differ): a group's quantity is the running total of the last event rated, in
    the bill run and in the totals a replay rebuilds."""
    times = [START + timedelta(hours=i) for i in range(59)]
    times.append(times[-1] + timedelta(milliseconds=1))
    stamped = on_time([(event(f"o{i}", "cust-1", t), t) for i, t in enumerate(times)])
    # produced last, stamped earlier
    stamped[-1] = (stamped[-1][0], stamped[-2][1] - timedelta(milliseconds=3))
    send_at(settings, [*stamped, clock_past(END)])
    run(settings, once=True)
    with connect(settings.database_url) as conn:
        conn.execute("SELECT aforo_rebuild_totals('acme', %s)", (PERIOD,))  # as `replay --apply` does

    report = bill_run(settings, "acme", PERIOD)
    assert report.ok, report.outcomes
    [inv] = [o.invoice for o in report.outcomes if o.customer == "cust-1"]
    [calls] = [x for x in inv.lines if x.metric == "api_calls"]
    assert (calls.events, calls.quantity) == (60, 60)
    assert calls.usage_amount == ledger_revenue(settings, "cust-1")["api_calls"][1]


# --- disputes: the events behind a line, verifiable offline ------------------------------------------

def test_the_trace_of_a_line_verifies_offline_and_adds_up_to_its_usage_amount(settings, tmp_path):
    apply(settings, TERMS)
    month_of_usage(settings)
    [inv] = [o.invoice for o in bill_run(settings, "acme", PERIOD).outcomes if o.customer == "cust-1"]
    for line in inv.lines[:3]:
        out = tmp_path / f"line{line.line_no}.ndjson"
        traced = cli(settings, "invoice", "trace", inv.number, "--line", str(line.line_no), "-o", str(out))
        assert f"{line.events} rows" in traced
        manifest = json.loads((tmp_path / f"{out.name}.manifest.json").read_bytes())
        assert manifest["invoice"] == inv.number and manifest["rows"] == line.events
        assert D(manifest["totals"][line.metric]["revenue"]) == line.usage_amount
        rows = [json.loads(r) for r in out.read_bytes().splitlines()]
        assert sum(D(x["revenue"]) for r in rows for x in r["lines"] if x["metric"] == line.metric) \
            == line.usage_amount
        assert all(r["validation_hash"] and r["customer"] == "cust-1" for r in rows)
        assert cli(settings, "audit", "verify", str(out)).startswith("OK")
    everything = tmp_path / "all.ndjson"
    assert f"{sum(x.events for x in inv.lines)} rows" in cli(settings, "invoice", "trace", inv.number, "-o",
                                                              str(everything))
    rows = everything.read_bytes().splitlines()  # a doctored trace does not verify
    doctored = json.loads(rows[0])
    doctored["lines"][0]["revenue"] = "0"
    everything.write_bytes(b"\n".join([json.dumps(doctored).encode(), *rows[1:]]) + b"\n")
    assert "BROKEN" in cli(settings, "audit", "verify", str(everything), code=1)
    cli(settings, "invoice", "trace", inv.number, "--line", "9", "-o", str(tmp_path / "x"), code=1)


# --- late events after settling ------------------------------------------------------------------------

def test_a_late_event_approved_after_settling_is_next_periods_adjustment_and_the_invoice_stays(settings):
    apply(settings, TERMS)
    month_of_usage(settings)
    [settled] = [o.invoice for o in bill_run(settings, "acme", PERIOD).outcomes if o.customer == "cust-1"]
    before = json.loads(cli(settings, "invoice", "show", settled.number, "--format", "json"))

    late_at = END - timedelta(hours=2)  # belongs to March, arrives three days late
    send_at(settings, [(event("late-1", "cust-1", late_at), END + timedelta(days=3))])
    run(settings, once=True)
    [held] = json.loads(cli(settings, "reconcile", "list", "--tenant", "acme", "--format", "json"))
    cli(settings, "reconcile", "approve", str(held["id"]))
    run(settings, once=True)

    assert "already settled" in cli(settings, "bill", "run", "--tenant", "acme", "--period", PERIOD)
    after = json.loads(cli(settings, "invoice", "show", settled.number, "--format", "json"))
    assert after["digest"] == before["digest"] and after["digest_verified"]
    assert after["invoice"] == before["invoice"]
    [closed] = json.loads(cli(settings, "period", "show", "--tenant", "acme", "--format", "json"))
    assert [(a["billed_in"], a["events"]) for a in closed["adjustments"]] == [("2026-04", 1)]
    assert closed["digest_now"] == closed["digest"]  # the late row, held after the close, is not in it

    send_at(settings, [clock_past(END + timedelta(days=30))])  # past April's end plus the lateness
    run(settings, once=True)
    april = bill_run(settings, "acme", "2026-04", customer="cust-1")
    [inv] = [o.invoice for o in april.outcomes]
    [calls] = [x for x in inv.lines if x.metric == "api_calls"]
    assert (calls.events, calls.adjustment_events) == (1, 1)
    assert "1 late events of earlier, closed periods" in cli(settings, "invoice", "show", inv.number)


# --- failures, resumption, held events, voiding --------------------------------------------------------

ROLLING = {
    "plans": [{"tenant": "acme", "code": "roll", "version": 1, "currency": "USD", "charges": [
        {"metric": "api_calls", "model": "per_unit", "unit_price": "0.01", "included": "100",
         "rollover": {"max_units": "50", "expires_after_periods": 1}}]}],
    "customers": [{"tenant": "acme", "id": "cust-r", "name": "Rolls"}],
    "subscriptions": [{"tenant": "acme", "id": "sub-r", "customer": "cust-r", "plan": "roll",
                       "plan_version": 1, "start": "2026-02-01T00:00:00Z"}],
}


def test_a_failed_stage_stops_only_its_customer_and_the_next_run_resumes_there(settings):
    apply(settings, ROLLING)
    times = [START + timedelta(hours=i) for i in range(200)]
    lines = [(event(f"r{i}", "cust-r", t), t) for i, t in enumerate(times)]
    send_at(settings, [*on_time(lines), clock_past(END)])
    run(settings, once=True)

    first = bill_run(settings, "acme", PERIOD)
    by = {o.customer: o for o in first.outcomes}
    assert (by["cust-r"].status, by["cust-r"].stage) == ("failed", "rollover") and not first.ok
    assert "bill 2026-02 first" in by["cust-r"].error
    assert [by[c].invoice.number for c in ("cust-1", "cust-2", "cust-3")] == \
        ["INV-2026-0001", "INV-2026-0002", "INV-2026-0003"]
    shown = cli(settings, "bill", "show", str(first.run_id))
    assert "rollover     failed" in shown and "bill 2026-02 first" in shown

    february = bill_run(settings, "acme", "2026-02")  # nothing used: its 100 included units roll over
    [feb] = [o.invoice for o in february.outcomes if o.customer == "cust-r"]
    assert [(c.metric, str(c.units)) for c in feb.rollover_out] == [("api_calls", "50")]

    again = bill_run(settings, "acme", PERIOD)
    [resumed] = [o for o in again.outcomes if o.status != "already settled"]
    assert (resumed.customer, resumed.status, resumed.resumed_from) == ("cust-r", "settled", first.run_id)
    [x] = resumed.invoice.lines
    assert (x.quantity, x.rollover_used, x.included_used, x.billable) == (200, 50, 100, 50)
    assert x.amount == D("0.50")
    assert x.usage_amount == ledger_revenue(settings, "cust-r")["api_calls"][1] == D("2.00")
    assert resumed.invoice.number == "INV-2026-0008"  # after February's four: no gap, no repeat
    stages = cli(settings, "bill", "show", str(again.run_id))
    assert "quota_check  reused" in stages and f"from run {first.run_id}" in stages
    assert "rollover     ok" in stages


def test_a_dry_run_records_closes_and_sends_nothing(settings):
    apply(settings, TERMS)
    month_of_usage(settings, n=110)
    out = cli(settings, "bill", "run", "--tenant", "acme", "--period", PERIOD, "--dry-run")
    assert "dry run (nothing recorded)" in out and "Invoice DRAFT" in out and "TOTAL 5.39 USD" in out
    with connect(settings.database_url) as conn:
        assert conn.execute("SELECT (SELECT count(*) FROM bill_runs) + (SELECT count(*) FROM invoices)"
                            " + (SELECT count(*) FROM closed_periods)").fetchone()[0] == 0


def test_held_events_stop_the_run_until_decided_or_allowed(settings):
    late_at = START + timedelta(days=10)
    send_at(settings, [(event("held-1", "cust-2", late_at), late_at + timedelta(days=2)),  # late: held
                       *on_time([(event("ok-1", "cust-1", START), START)]), clock_past(END)])
    run(settings, once=True)
    refused = cli(settings, "bill", "run", "--tenant", "acme", "--period", PERIOD, code=1)
    assert refused.count("FAILED at quota_check: 1 held events of the period are undecided") == 3
    with connect(settings.database_url) as conn:  # not closed: the held event can still be billed in March
        assert conn.execute("SELECT count(*) FROM closed_periods").fetchone()[0] == 0

    allowed = cli(settings, "bill", "run", "--tenant", "acme", "--period", PERIOD, "--allow-held")
    assert "billed without 1 held events" in allowed and "period closed now" in allowed
    shown = cli(settings, "invoice", "show", "INV-2026-0002")
    assert "Billed without 1 held events awaiting reconciliation" in shown
    assert "Billed without" not in cli(settings, "invoice", "show", "INV-2026-0001")


def test_voiding_issues_a_credit_note_gives_credits_back_and_lets_the_period_be_billed_again(settings):
    month_of_usage(settings, n=150)
    assert "grant cmd-1" in cli(settings, "credit", "grant", "--tenant", "acme", "--customer", "cust-1",
                                "--metric", "api_calls", "--units", "30", "--from-period", PERIOD)
    [inv] = [o.invoice for o in bill_run(settings, "acme", PERIOD).outcomes if o.customer == "cust-1"]
    calls = inv.lines[0]
    assert (calls.credits_used, calls.billable, calls.amount) == (30, 120, D("0.040"))
    assert "remaining 0" in cli(settings, "credit", "list", "--tenant", "acme", "--customer", "cust-1")

    assert "needs a reason" in cli(settings, "invoice", "void", inv.number, "--reason", "  ", code=1)
    voided = cli(settings, "invoice", "void", inv.number, "--reason", "credits applied twice")
    assert f"CN-2026-0001 voids {inv.number}" in voided
    cli(settings, "invoice", "void", inv.number, "--reason", "again", code=1)
    listed = cli(settings, "invoice", "list", "--tenant", "acme")
    assert "voided by CN-2026-0001" in listed and f"voids {inv.number}" in listed
    note = json.loads(cli(settings, "invoice", "show", "CN-2026-0001", "--format", "json"))["invoice"]
    assert D(note["totals"]["total"]) == -inv.totals.total and note["credit_note_of"] == inv.number
    assert "remaining 30" in cli(settings, "credit", "list", "--tenant", "acme", "--customer", "cust-1")

    rebilled = bill_run(settings, "acme", PERIOD)
    [(customer, number)] = [(o.customer, o.invoice.number) for o in rebilled.outcomes
                            if o.status == "settled"]
    assert (customer, number) == ("cust-1", "INV-2026-0004")
    cli(settings, "credit", "grant", "--tenant", "acme", "--customer", "nobody", "--metric", "api_calls",
        "--units", "1", "--from-period", PERIOD, code=1)
    cli(settings, "credit", "grant", "--tenant", "acme", "--customer", "cust-1", "--metric", "api_calls",
        "--units", "-1", "--from-period", PERIOD, code=2)


def test_catalog_billing_terms_apply_idempotently_and_recorded_grants_never_change(settings, tmp_path):
    grant = {"tenant": "acme", "id": "prepaid-1", "customer": "cust-1", "metric": "api_calls", "units": "500",
             "from_period": PERIOD}
    catalog = tmp_path / "terms.json"
    catalog.write_text(json.dumps({**TERMS, "credits": [grant]}))
    assert "changed:" in cli(settings, "catalog", "apply", str(catalog))
    assert "catalog unchanged" in cli(settings, "catalog", "apply", str(catalog))
    shown = json.loads(cli(settings, "catalog", "show"))
    assert "WELCOME10" in {c["code"] for c in shown["coupons"]}
    assert {c["id"]: c["units"] for c in shown["credits"]}["prepaid-1"] == "500"
    assert {c["id"]: c["tax_rate"] for c in shown["customers"] if c["tenant"] == "acme"}["cust-1"] == "vat20"
    catalog.write_text(json.dumps({"credits": [{**grant, "units": "900"}]}))
    assert "never changes" in cli(settings, "catalog", "apply", str(catalog), code=1)
    catalog.write_text(json.dumps({
        "metrics": [{"tenant": "acme", "code": "fees", "event_type": "payment", "aggregation": "sum",
                     "value": "$.amount"}],
        "plans": [{"tenant": "acme", "code": "pay", "version": 1, "charges": [
            {"metric": "fees", "model": "percentage", "rate": "2"}]}],
        "subscriptions": [{"tenant": "acme", "id": "sub-p", "customer": "cust-1", "plan": "pay",
                           "plan_version": 1, "start": "2026-01-01T00:00:00Z"}],
        "quotas": [{"tenant": "acme", "subscription": "sub-p", "metric": "fees", "limit": "5",
                    "overage": "block"}]}))
    assert "prices that metric by percentage" in cli(settings, "catalog", "apply", str(catalog), code=1)


def test_one_bill_run_per_tenant_period_at_a_time(settings, monkeypatch):
    import sinks.billing
    monkeypatch.setattr(sinks.billing, "LOCK_WAIT", "200ms")
    with connect(settings.database_url, autocommit=True) as other, \
            sinks.billing.period_lock(other, "acme", PERIOD):
        busy = cli(settings, "bill", "run", "--tenant", "acme", "--period", PERIOD, code=1)
        assert "another bill run for acme 2026-03 is in progress" in busy
        other_period = cli(settings, "bill", "run", "--tenant", "acme", "--period", "2026-02", "--dry-run",
                           code=1)  # not ready to bill (no events), but not locked out
        assert "dry run (nothing recorded): acme 2026-02" in other_period
    released = cli(settings, "bill", "run", "--tenant", "acme", "--period", PERIOD, "--dry-run", code=1)
    assert "dry run (nothing recorded): acme 2026-03" in released
