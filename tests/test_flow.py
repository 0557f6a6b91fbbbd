"""The metering dataflow without a broker: the flow's own wiring, fed batches by Bytewax's
TestingSource, its decisions collected by a TestingSink; claims and running totals in memory,
the demo catalog from the test's database."""

from __future__ import annotations

import dataclasses
import zlib
from collections import Counter
from datetime import UTC, datetime
from functools import partial

import pytest
from bytewax.testing import TestingSink, TestingSource, run_main

from cli.demo import demo_stream
from flows.metering import PartitionTotals, build
from operators.dedup import InMemoryClaims
from operators.revenue import fresh_totals
from schemas.record import Batch, Record
from sinks.entitlements import CatalogCache
from sinks.kafka import ensure_topics, record_key
from sinks.ledger import LedgerSink
from sinks.outputs import OutputTopics

pytestmark = pytest.mark.integration

NOW = datetime(2026, 5, 15, 12, tzinfo=UTC)
NOW_MS = int(NOW.timestamp() * 1000)


def batches(lines: list[bytes], partitions: int = 3, size: int = 250) -> list[Batch]:
    """The stream as the raw source would give it: keyed records spread over partitions, in
    offset order, a batch per poll."""
    by_partition: dict[int, list[bytes]] = {}
    for line in lines:  # keyed by tenant and customer, as every door keys them
        key = record_key(line)
        by_partition.setdefault(0 if key is None else zlib.crc32(key) % partitions, []).append(line)
    out = []
    for p, mine in sorted(by_partition.items()):
        records = [Record("raw", "tid", p, i, NOW_MS, line) for i, line in enumerate(mine)]
        out += [Batch("raw", "tid", p, records[i:i + size]) for i in range(0, len(records), size)]
    return out


def decide(settings, lines: list[bytes]) -> list[Record]:
    decided: list[Batch] = []
    catalog = CatalogCache(settings.database_url, settings.redis_url)
    flow = build(TestingSource(batches(lines)), TestingSink(decided), catalog=catalog,
                 claims=InMemoryClaims(),
                 totals=PartitionTotals(fresh_totals), topics=settings.topics, secret=b"s")
    try:
        run_main(flow)
    finally:
        catalog.close()
    return [r for b in decided for r in b.records]


def test_every_record_ends_in_its_status_with_its_revenue(settings):
    lines, expected = demo_stream(NOW, normal=1_000)
    records = decide(settings, lines)
    assert len(records) == len(lines)
    assert Counter(f"{r.status}/{r.reason or ''}" for r in records) == Counter(expected)
    accepted = [r for r in records if r.status == "accepted" and r.lines]
    assert accepted and all(r.validation_hash and r.route.endswith(".enriched") for r in accepted)
    # the marginals of a subscription's events add up to its running total's revenue
    by_sub: dict[tuple, list] = {}
    for r in accepted:
        for line in r.lines:
            by_sub.setdefault((r.billing.subscription, line.metric), []).append(line)
    for lines_ in by_sub.values():
        assert sum(x.revenue for x in lines_) == lines_[-1].revenue_after


def test_a_ledger_write_that_fails_stops_the_flow_with_its_error(settings):
    """A failure on the ledger writer's thread reaches the worker as one clear exception; the
    sink's close, run again while Bytewax unwinds, must not raise it twice (that aborts Python)."""
    ensure_topics(settings)

    def broken(_writes) -> None:
        raise ValueError("the disk is on fire")

    lines, _ = demo_stream(NOW, normal=600)
    catalog = CatalogCache(settings.database_url, settings.redis_url)
    sink = LedgerSink(settings.database_url, partial(OutputTopics, settings), on_commit=broken)
    flow = build(TestingSource(batches(lines, partitions=1, size=100)), sink, catalog=catalog,
                 claims=InMemoryClaims(), totals=PartitionTotals(fresh_totals), topics=settings.topics,
                 secret=b"s")
    try:
        with pytest.raises(Exception) as raised:  # Bytewax wraps it, naming the step
            run_main(flow)
    finally:
        catalog.close()
    chain, error = [], raised.value
    while error is not None:
        chain.append(str(error))
        error = error.__cause__
    assert any("writing the ledger failed" in e and "the disk is on fire" in e for e in chain), chain


def test_an_output_message_the_broker_never_takes_fails_its_ledger_commit(settings):
    """The output producer hears of failed deliveries through its one delivery callback, and the
    flush before each ledger commit raises them: the batch is not committed, so it is decided and
    routed again (at least once on the output topics), never silently missing from them."""
    from stack.embedded import free_port

    nowhere = dataclasses.replace(settings, kafka_bootstrap_env=f"127.0.0.1:{free_port()}",
                                  kafka_properties=(("producer.message.timeout.ms", "500"),))
    outputs = OutputTopics(nowhere)
    record = Record("raw", "tid", 0, 7, NOW_MS, b"not json", status="rejected", reason="parse",
                    route=settings.topics.rejected, validation_hash="00")
    try:
        outputs.produce_batch(Batch("raw", "tid", 0, [record]))
        with pytest.raises(RuntimeError, match=r"routing to Kafka failed.*timed out"):
            outputs.flush()
    finally:
        outputs.close()
