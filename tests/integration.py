"""Helpers shared by the integration tests: send, run, read the ledger and the output topics."""

from __future__ import annotations

import os
import time
from collections import Counter
from datetime import UTC, datetime

import orjson
from confluent_kafka import Consumer, KafkaError, Message, TopicPartition

import config
from flows.metering import run
from sinks.kafka import ensure_topics, kafka_config
from sinks.postgres import connect
from sinks.raw_producer import RawProducer


def send(s: config.Settings, lines: list[bytes], timestamp_ms: int | None = None) -> int:
    ensure_topics(s)
    p = RawProducer(s)
    try:
        acks = p.send(enumerate(lines), "sdk", timestamp_ms=timestamp_ms)
    finally:
        p.close()
    assert not acks.failed, acks.errors
    return acks.acked


def ledger(s: config.Settings) -> list[tuple]:
    """The ledger's decisions, in a stable order (processed_at excluded: it is wall-clock metadata)."""
    with connect(s.database_url) as conn:
        return conn.execute(
            "SELECT raw_partition, raw_offset, status, reason, detail, dedup_key, route,"
            " validation_hash, tenantid, event_id, customer, subscription, plan, plan_version,"
            " currency, period, revenue, cost, margin FROM ledger ORDER BY 1, 2").fetchall()


def ledger_lines(s: config.Settings) -> list[tuple]:
    with connect(s.database_url) as conn:
        return conn.execute("SELECT raw_partition, raw_offset, metric, grp, quantity, total_after,"
                            " revenue, cost, margin FROM ledger_lines ORDER BY 1, 2, 3").fetchall()


def revenue_totals(s: config.Settings) -> list[tuple]:
    with connect(s.database_url) as conn:
        return conn.execute("SELECT tenant, customer, subscription, metric, period, currency, events,"
                            " quantity, revenue, cost FROM revenue ORDER BY 1, 3, 4, 5").fetchall()


def outcomes(s: config.Settings) -> Counter:
    return Counter(f"{row[2]}/{row[3] or ''}" for row in ledger(s))


def messages(s: config.Settings, topics: tuple[str, ...]) -> list[Message]:
    """Every message of the topics, read from the start to partition EOF, in partition order (a
    partition may report its end more than once, so ends are counted per partition)."""
    c = Consumer(kafka_config(s, "consumer", group_id="aforo-test", enable_partition_eof=True))
    parts = []
    for topic in topics:
        meta = c.list_topics(topic, timeout=10).topics[topic]
        parts += [TopicPartition(topic, p, 0) for p in meta.partitions]
    c.assign(parts)
    found, at_end = [], set()
    deadline = time.monotonic() + 60
    while len(at_end) < len(parts):
        assert time.monotonic() < deadline, f"only {len(at_end)} of {len(parts)} partitions reached their end"
        for m in c.consume(1000, 1.0):
            if m.error():
                assert m.error().code() == KafkaError._PARTITION_EOF, m.error()
                at_end.add((m.topic(), m.partition()))
                continue
            found.append(m)
    c.close()
    return sorted(found, key=lambda m: (m.topic(), m.partition(), m.offset()))


def raw_values(s: config.Settings) -> list[bytes]:
    """The value of every raw record, in partition order."""
    return [m.value() for m in messages(s, (s.topics.raw,))]


def routed(s: config.Settings) -> dict[str, set[str]]:
    """raw reference -> the output topics it was produced to."""
    seen: dict[str, set[str]] = {}
    for m in messages(s, s.topics.outputs):
        seen.setdefault(dict(m.headers())["aforo-raw"].decode(), set()).add(m.topic())
    return seen


def meter_demo(s: config.Settings, normal: int) -> config.Settings:
    """The demo stream (both tenants, duplicates, late, rejected and unresolved events), metered."""
    from cli.demo import demo_stream
    lines, _ = demo_stream(datetime.now(UTC), normal=normal)
    send(s, lines)
    run(s, once=True)
    return s


def env_of(s: config.Settings) -> dict[str, str]:
    """The environment that makes a subprocess `aforo` see the same installation."""
    return {**os.environ, **s.to_env()}


def periods_of(lines: list[bytes], tenant: str = "acme") -> list[str]:
    """The billing periods (YYYY-MM in UTC) a tenant's events fall in by their own `time`: what a
    test replays or reports on, rather than the month the clock happens to be in."""
    found = set()
    for line in lines:
        try:
            event = orjson.loads(line)
            if isinstance(event, dict) and event.get("tenantid") == tenant:
                found.add(datetime.fromisoformat(event["time"]).astimezone(UTC).strftime("%Y-%m"))
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
            continue  # the demo's broken lines belong to no period
    return sorted(found)
