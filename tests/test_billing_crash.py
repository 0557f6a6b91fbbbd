"""kill -9 during a bill run, then run it again: the same invoices as an uninterrupted run, numbered
without gaps, none twice."""

from __future__ import annotations

import dataclasses
import signal
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

import orjson
import pytest
from billing_fixtures import END, PERIOD, START, apply, clock_past, event, on_time, send_at
from conftest import new_database
from integration import env_of, messages

from flows.billing import bill_run
from flows.metering import run
from sinks.invoice_delivery import invoices_topic
from sinks.postgres import connect

pytestmark = pytest.mark.integration

AFORO = str(Path(sys.executable).parent / "aforo")
CUSTOMERS = [f"k{i:02d}" for i in range(40)]
CATALOG = {
    "tenants": [{"id": "crash", "currency": "EUR"}],
    "metrics": [{"tenant": "crash", "code": "calls", "event_type": "api.call", "aggregation": "count"}],
    "plans": [{"tenant": "crash", "code": "p", "version": 1, "currency": "EUR",
               "charges": [{"metric": "calls", "model": "graduated", "included": "3",
                            "tiers": [{"up_to": 10, "unit_price": "0.4"},
                                      {"up_to": None, "unit_price": "0.15"}]}]}],
    "tax_rates": [{"tenant": "crash", "id": "vat", "name": "VAT 21%", "percent": "21"}],
    "coupons": [{"tenant": "crash", "code": "FIVE", "amount_off": "0.5"}],
    "customers": [{"tenant": "crash", "id": c, "tax_rate": "vat"} for c in CUSTOMERS],
    "subscriptions": [{"tenant": "crash", "id": f"s-{c}", "customer": c, "plan": "p", "plan_version": 1,
                       "start": "2026-01-01T00:00:00Z", "minimum": "3" if i % 3 == 0 else None}
                      for i, c in enumerate(CUSTOMERS)],
    "redemptions": [{"tenant": "crash", "customer": c, "coupon": "FIVE", "from_period": PERIOD}
                    for c in CUSTOMERS[::4]],
}


def invoices(settings) -> list[tuple]:
    with connect(settings.database_url) as conn:
        return conn.execute(
            "SELECT i.number, i.customer, i.digest, (SELECT count(*) FROM bill_run_event_index x"
            " WHERE x.invoice_id = i.id) FROM invoices i WHERE tenant = 'crash' ORDER BY number").fetchall()


def stages_done(settings) -> int:
    with connect(settings.database_url) as conn:
        return conn.execute("SELECT count(*) FROM bill_run_stages WHERE status = 'ok'").fetchone()[0]


def published(settings) -> dict[str, set[bytes]]:
    """invoice number -> the distinct messages the invoices topic holds for it."""
    seen: dict[str, set[bytes]] = {}
    for m in messages(settings, (invoices_topic(settings),)):
        seen.setdefault(dict(m.headers())["aforo-invoice"].decode(), set()).add(m.value())
    return seen


def metered(settings) -> None:
    apply(settings, CATALOG)
    lines = [(event(f"{c}-{j}", c, START + timedelta(hours=7 * j + i), tenant="crash"),
              START + timedelta(hours=7 * j + i))
             for i, c in enumerate(CUSTOMERS) for j in range(1 + i % 17)]
    send_at(settings, [*on_time(sorted(lines, key=lambda x: x[1])), clock_past(END, "crash", "k00")])
    run(settings, once=True)


def test_kill_9_during_a_bill_run_then_rerun_gives_the_same_invoices_and_no_gaps(settings, stack,
                                                                                  template_db):
    metered(settings)
    # the same events metered by a second installation, billed without interruption
    reference = dataclasses.replace(settings, database_url_env=new_database(stack, template_db),
                                    topic_prefix=settings.topic_prefix + "ref")
    metered(reference)
    assert bill_run(reference, "crash", PERIOD).ok
    expected = invoices(reference)
    assert len(expected) == len(CUSTOMERS)

    env = {**env_of(settings), "AFORO_ACTOR": "crash-test"}
    total = len(CUSTOMERS) * 10
    kills = 0
    for threshold in (0, total // 20, total // 4, total // 2, total * 3 // 4, total - 3):
        proc = subprocess.Popen([AFORO, "bill", "run", "--tenant", "crash", "--period", PERIOD, "--quiet"],
                                env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 120
        while proc.poll() is None and time.monotonic() < deadline:
            if (threshold == 0 and time.monotonic() > deadline - 119.5) or \
                    (threshold and stages_done(settings) >= threshold):
                proc.send_signal(signal.SIGKILL)
                kills += 1
                break
            time.sleep(0.005)
        proc.wait()
        assert proc.returncode in (0, -signal.SIGKILL), proc.stderr.read().decode()[-3000:]
        if proc.returncode == 0:
            break
    assert kills >= 3, "the run finished before it could be killed often enough"
    for _ in range(5):
        if subprocess.run([AFORO, "bill", "run", "--tenant", "crash", "--period", PERIOD, "--quiet"],
                          env=env, capture_output=True).returncode == 0:
            break

    assert invoices(settings) == expected  # same numbers, customers, digests and event indexes
    assert [n for n, *_ in expected] == [f"INV-2026-{i:04d}" for i in range(1, len(CUSTOMERS) + 1)]
    with connect(settings.database_url) as conn:
        reused = conn.execute("SELECT count(*) FROM bill_run_stages WHERE status = 'reused'").fetchone()[0]
        undelivered = conn.execute("SELECT count(*) FROM invoice_deliveries WHERE status <> 'delivered'"
                                   ).fetchone()[0]
    assert reused > 0 and undelivered == 0
    sent = published(settings)  # at least once, repeats identical, keyed by the invoice number
    assert set(sent) == {n for n, *_ in expected} and all(len(v) == 1 for v in sent.values())
    assert {orjson.loads(next(iter(v)))["number"] for v in sent.values()} == set(sent)
