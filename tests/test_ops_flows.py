"""A flow process in production: its lag and held-events gauges against the real ledger and
broker, its metrics/health/readiness server; topics against the configuration; librdkafka's logs;
`aforo migrate` and `aforo doctor` on the real stack."""

from __future__ import annotations

import dataclasses
import logging
import re
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import httpx
import orjson
import pytest
from click.testing import CliRunner
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, NewTopic
from integration import env_of, send

from cli.main import main
from flows.metering import run
from observe import ledger_gauges
from observe.health import Readiness
from observe.metrics import REGISTRY
from observe.server import start
from sinks.entitlements import CatalogCache
from sinks.kafka import ensure_topics, kafka_config, topic_differences
from sinks.postgres import connect

pytestmark = pytest.mark.integration


def _event(i: int, when: datetime, subject: str = "cust-1") -> bytes:
    return orjson.dumps({"specversion": "1.0", "id": f"ops-{i}", "source": "ops-test", "type": "api.call",
                         "subject": subject, "tenantid": "acme", "data": {"route": "/x", "status": 200},
                         "time": when.isoformat().replace("+00:00", "Z")})


def _gauge(name: str, **labels: str) -> float | None:
    return REGISTRY.get_sample_value(name, labels)


def _send_one_by_one(settings, lines: list[bytes]) -> None:
    """One record per produce request: the embedded broker (tansu) reports a partition's log end
    as its last batch's base offset + 1, so only single-record batches give true end offsets
    (real Kafka counts records)."""
    for line in lines:
        assert send(settings, [line]) == 1


def _lag(settings) -> float:
    return sum(_gauge("aforo_raw_lag_records", partition=str(p)) for p in range(settings.raw_partitions))


def test_lag_and_held_events_follow_the_ledger(settings):
    now = datetime.now(UTC)
    ensure_topics(settings)
    admin = AdminClient(kafka_config(settings, "admin"))
    late = [_event(100 + i, now - timedelta(hours=30), f"cust-{i}") for i in range(3)]  # held: late
    _send_one_by_one(settings, [_event(i, now) for i in range(20)] + late)
    ledger_gauges.refresh(settings, admin)
    assert _lag(settings) == 23  # nothing processed yet

    run(settings, once=True)
    ledger_gauges.refresh(settings, admin)
    assert _lag(settings) == 0
    assert _gauge("aforo_held_events", tenant="acme", reason="late") == 3

    _send_one_by_one(settings, [_event(i, now) for i in range(200, 207)])
    ledger_gauges.refresh(settings, admin)
    assert _lag(settings) == 7

    runner = CliRunner()
    with_env = env_of(settings)
    listed = runner.invoke(main, ["reconcile", "list"], env=with_env).output.splitlines()
    ids = [line.split()[0] for line in listed if line.split() and line.split()[0].isdigit()]
    result = runner.invoke(main, ["reconcile", "reject", ids[0], "--note", "test"], env=with_env)
    assert result.exit_code == 0, result.output
    ledger_gauges.refresh(settings, admin)
    assert _gauge("aforo_held_events", tenant="acme", reason="late") == 2


def _count(name: str, **labels: str) -> float:
    return _gauge(name, **labels) or 0.0


def test_decisions_and_revenue_are_counted_once_the_ledger_has_them(settings):
    now = datetime.now(UTC)
    before = {s: _count("aforo_records_total", tenant="acme", status=s, reason=r)
              for s, r in (("accepted", ""), ("duplicate", "same_payload"))}
    revenue_before = _count("aforo_revenue_accrued_total", tenant="acme", currency="USD")
    events = [_event(i, now) for i in range(105)]  # the plan's first 100 calls are free
    send(settings, events + events[:5] + [b"not json"])
    run(settings, once=True)

    accepted = _count("aforo_records_total", tenant="acme", status="accepted", reason="")
    assert accepted - before["accepted"] == 105
    assert (_count("aforo_records_total", tenant="acme", status="duplicate", reason="same_payload")
            - before["duplicate"]) == 5
    assert _count("aforo_records_total", tenant="_other", status="rejected", reason="malformed") >= 1
    with connect(settings.database_url) as conn:
        ledger_revenue = conn.execute("SELECT sum(revenue) FROM ledger WHERE tenantid = 'acme'"
                                      " AND status = 'accepted'").fetchone()[0]
    accrued = _count("aforo_revenue_accrued_total", tenant="acme", currency="USD") - revenue_before
    assert ledger_revenue == Decimal("0.010") and accrued == pytest.approx(float(ledger_revenue))
    assert _count("aforo_ledger_batch_records_count") >= 1


def test_flow_process_serves_metrics_health_and_readiness(settings):
    ensure_topics(settings)
    server = start("127.0.0.1", 0, "metering", Readiness(settings).report)
    base = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        metrics, health, ready, missing = (httpx.get(base + p, timeout=10)
                                           for p in ("/metrics", "/healthz", "/readyz", "/nope"))
    finally:
        server.shutdown()
    assert metrics.status_code == 200 and "aforo_ready" in metrics.text
    assert health.status_code == 200 and health.json()["role"] == "metering"
    assert ready.status_code == 200, ready.text
    assert ready.json()["status"] == "ready"
    assert missing.status_code == 404

    broken = dataclasses.replace(settings, database_url_env="postgresql://nobody@127.0.0.1:1/none")
    server = start("127.0.0.1", 0, "metering", Readiness(broken).report)
    try:
        ready = httpx.get(f"http://127.0.0.1:{server.server_address[1]}/readyz", timeout=10)
    finally:
        server.shutdown()
    assert ready.status_code == 503
    assert ready.json()["checks"]["postgres"]["ok"] is False
    assert "127.0.0.1" in ready.json()["checks"]["postgres"]["detail"]


def test_entitlement_cache_layers_are_counted(settings):
    cache = CatalogCache(settings.database_url, settings.redis_url)
    cache.tenants()

    def lookups(layer: str, result: str) -> float:
        return _gauge("aforo_cache_lookups_total", cache="entitlements", layer=layer, result=result) or 0

    before = {(layer, r): lookups(layer, r)
              for layer in ("process", "redis", "postgres") for r in ("hit", "miss")}
    cache.entitlements([("acme", "cust-1"), ("acme", "cust-2")])
    cache.entitlements([("acme", "cust-1")])
    second = CatalogCache(settings.database_url, settings.redis_url)  # another process: Redis has them
    second.tenants()
    second.entitlements([("acme", "cust-2")])
    delta = {k: lookups(*k) - v for k, v in before.items()}
    assert delta == {("process", "hit"): 1, ("process", "miss"): 3, ("redis", "hit"): 1, ("redis", "miss"): 2,
                     ("postgres", "hit"): 2, ("postgres", "miss"): 0}


def test_output_topics_get_as_many_partitions_as_the_raw_topic(settings):
    s = dataclasses.replace(settings, raw_partitions=3)
    ensure_topics(s)
    meta = AdminClient(kafka_config(s, "admin")).list_topics(timeout=10).topics
    assert {name: len(meta[name].partitions) for name in (s.topics.raw, *s.topics.outputs)} == {
        s.topics.raw: 3, **dict.fromkeys(s.topics.outputs, 3)}
    assert topic_differences(s) == []


def test_migrate_says_how_a_recreated_raw_topic_differs(settings):
    """A broker that lost its topics recreates the raw topic with its own partition count on first
    use (seen: 4 instead of 8); the output topics are created to match it. `aforo migrate`
    applies the schema, then says what differs and exits 1."""
    admin = AdminClient(kafka_config(settings, "admin"))
    t = settings.topics
    futures = admin.create_topics([NewTopic(t.raw, 4, 1),
                                   NewTopic(t.held, 4, 1, config={"cleanup.policy": "compact"})])
    for f in futures.values():
        f.result()
    result = CliRunner().invoke(main, ["migrate"], env=env_of(settings))
    assert result.exit_code == 1
    assert f"{t.raw} has 4 partitions, the configuration says 8 (AFORO_RAW_PARTITIONS)" in result.output
    assert f"{t.held} has cleanup.policy=compact" in result.output
    meta = admin.list_topics(timeout=10).topics
    assert len(meta[t.enriched].partitions) == 4  # created to match the raw topic as it is
    assert len(meta[t.raw].partitions) == 4  # nothing changed without a decision


def test_librdkafka_logs_go_through_python_logging(settings, caplog, capfd):
    unreachable = dataclasses.replace(settings, kafka_bootstrap_env="127.0.0.1:1")
    caplog.set_level(logging.WARNING, logger="aforo.librdkafka")
    p = Producer(kafka_config(unreachable, "producer"))
    p.poll(1.0)
    p.flush(0.1)
    assert any("127.0.0.1:1" in r.getMessage() for r in caplog.records if r.name == "aforo.librdkafka")
    # librdkafka's own stderr format is "%3|<time>|FAIL|rdkafka#producer-1| ...": never written
    assert not re.search(r"^%\d\|", capfd.readouterr().err, re.M)


def test_doctor_on_the_stack(settings):
    runner = CliRunner()
    assert runner.invoke(main, ["migrate"], env=env_of(settings)).exit_code == 0
    ok = runner.invoke(main, ["doctor"], env=env_of(settings))
    assert ok.exit_code == 0, ok.output
    assert "all good" in ok.output and "PostgreSQL" in ok.output and "Redis" in ok.output
    bad = runner.invoke(main, ["doctor"], env={**env_of(settings), "AFORO_REDIS_URL": "redis://:pw@127.0.0.1:1/0",
                                               "AFORO_KAFKA_SASL_PASSWORD": "kafka-secret"})
    assert bad.exit_code == 1
    assert "FAIL  redis" in bad.output and "1 problem" in bad.output
    assert "redis://:***@127.0.0.1:1/0" in bad.output and "sasl.password=***" in bad.output
    assert "kafka-secret" not in bad.output and ":pw@" not in bad.output
