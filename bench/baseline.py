"""The transactional baseline: the textbook design, one database transaction per event.

One consumer; per event one transaction that claims its idempotency key in `dedup_claims`,
locks the running totals it feeds with `SELECT ... FOR UPDATE`, prices its marginal revenue from
them, and writes its ledger row, lines, audit entry and new totals. It decides with the flow's
own code (the gates, dedup, enrichment, RunningTotals and so operators.pricing, route) and writes
with the flow's own transaction (sinks.ledger.commit), in a database of its own; only the output
topics are left out, which flatters it. speed-up = flow / baseline.
"""

from __future__ import annotations

import time
from collections.abc import Collection
from typing import Any

import psycopg

import config
from bench.events import Stream
from bench.rules import Rules
from bench.workspace import Workspace, ledger_summary, log, produce, raw_batches
from operators.dedup import decide
from operators.enrich import enrich_batch
from operators.gates import admit
from operators.revenue import PeriodTotals, RunningTotals, TotalsKey
from operators.route import route_batch
from schemas.record import Batch
from sinks.kafka import topic_id
from sinks.ledger import claim, commit, load_totals, writes_of
from sinks.raw_source import record_of


def _locked_totals(conn: psycopg.Connection, keys: Collection[TotalsKey]) -> dict[TotalsKey, PeriodTotals]:
    """The event's running totals, locked until its transaction ends."""
    for key in sorted(keys):
        conn.execute("SELECT 1 FROM revenue WHERE (tenant, subscription, metric, period) = (%s, %s, %s, %s)"
                     " FOR UPDATE", key)
    return load_totals(conn, keys)


class _Claims:
    """Claims inside the event's own transaction."""

    def __init__(self, conn: psycopg.Connection):
        self._conn = conn

    def claim(self, records):
        return claim(self._conn, records)


def run_baseline(settings: config.Settings) -> tuple[int, float]:
    """Process the installation's raw topic to its end; (events processed, seconds)."""
    raw_id = topic_id(settings, settings.topics.raw)
    with psycopg.connect(settings.database_url) as conn:
        rules = Rules(conn)
        claims = _Claims(conn)
        conn.commit()
        started = time.perf_counter()
        n = 0
        for messages in raw_batches(settings):
            for m in messages:
                rec = record_of(m, raw_id)
                batch = Batch(m.topic(), raw_id, m.partition(), [rec])
                with conn.transaction():
                    admit(rules.key_paths(), batch)
                    decide(claims, batch)
                    enrich_batch(rules, batch)
                    # fresh state per event: every total comes from its locked row
                    RunningTotals(lambda keys: _locked_totals(conn, keys)).rate_batch(rules.tenants(), batch)
                    route_batch(settings.topics, settings.secret, batch)
                    commit(conn, [writes_of(batch)], lambda: None)
                n += 1
        return n, time.perf_counter() - started


def measure_baseline(ws: Workspace, stream: Stream, n: int) -> dict[str, Any]:
    """The first n events of the stream through the baseline, in an installation of its own."""
    with ws.installation("baseline") as s:
        log(f"baseline: producing {n:,} events")
        produce(s, stream.lines[:n])
        log("baseline: one transaction per event")
        processed, seconds = run_baseline(s)
        ledger = ledger_summary(s)
    figures = {
        "events": n, "processed": processed, "seconds": seconds, "events_per_s": processed / seconds,
        **ledger, "conserved": ledger["ledger_rows"] == n,
        "counts_match_expected": ledger["status_counts"] == stream.expected(n),
    }
    log(f"baseline: {figures['events_per_s']:,.0f} events/s")
    return figures
