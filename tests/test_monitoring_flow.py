"""The monitoring flow end to end on a real broker and Postgres: enriched-topic messages in,
alerts out, the same alerts whatever crashes, restarts and replays happen in between."""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime
from decimal import Decimal

import orjson
import pytest
from click.testing import CliRunner
from confluent_kafka import Consumer, KafkaError, Producer, TopicPartition
from integration import env_of

from cli.alerts_commands import alerts, monitor
from flows.monitoring import run
from operators.anomaly import HOUR_US, CustomerMonitor, FirstDelivery, parse_enriched
from operators.quota_pacing import Quota, QuotaPacing
from operators.timestamp_gate import to_us
from schemas.billing import BillingContext, RevenueLine
from schemas.record import Record, Status
from sinks.alerts import ALERT_HEADER, alerts_topic
from sinks.kafka import ensure_topics, kafka_config
from sinks.outputs import routed_message
from sinks.postgres import connect

pytestmark = pytest.mark.integration

START = to_us(datetime(2026, 10, 5, tzinfo=UTC))
OCT = to_us(datetime(2026, 10, 1, tzinfo=UTC))  # 744 hours: 5% is 37.2 h
SPIKY = 24  # customers with one spike each
HOURS = 120
QUOTA_LIMIT = 100
RAW_TOPIC_ID = "raw-incarnation-1"


def message(customer: str, sub: str, at_us: int, metric: str | None, quantity: int, total: int,
            partition: int, offset: int) -> bytes:
    """What the metering flow produces for an accepted event (sinks/outputs.py routed_message);
    without a metric, an unmetered one."""
    when = datetime.fromtimestamp(at_us / 1e6, UTC).isoformat().replace("+00:00", "Z")
    event = {"specversion": "1.0", "id": f"e{offset}", "source": "t", "type": "x", "subject": customer,
             "time": when, "tenantid": "acme", "data": {}}
    rec = Record("raw", RAW_TOPIC_ID, partition, offset, at_us // 1000, orjson.dumps(event), event=event,
                 status=Status.ACCEPTED)
    rec.billing = BillingContext(customer, sub, "pro", 1, "USD", when[:7])
    rec.lines = [RevenueLine(metric, {}, Decimal(quantity), Decimal(total), Decimal(0), Decimal(0),
                             0, Decimal(total), Decimal(0), Decimal(0))] if metric else []
    return routed_message(rec)


def series() -> tuple[list[tuple[str, bytes]], set[str], list[int]]:
    """(aforo-raw reference, message) in production order -- every customer's in event-time
    order, customers interleaved -- the injected spike hours, and the quota customer's events."""
    timed = []
    for h in range(HOURS):
        for i in range(SPIKY):
            quantity = 5000 if h == 30 + 3 * i else 1000 + (h * 7 + i * 13) % 50  # +-2.5%
            timed.append((START + h * HOUR_US + i * 60_000_000, f"cust-s{i}", f"sub-s{i}", "tokens",
                          quantity, 0, i % 8))
    # the quota customer: event k at 4k hours into October brings api_calls to k
    for k in range(1, 151):
        timed.append((OCT + 4 * k * HOUR_US, "cust-2", "sub-2", "api_calls", 1, k, 2))
    # Unmetered events skip rating, so the metering flow emits them ahead of their partition's
    # order: these two, the last raw records of their customers, come first. Read as usage they
    # would make every later event of their customers late, and drop them as repeats.
    timed += [(START + HOURS * HOUR_US, "cust-s0", "sub-s0", None, 0, 0, 0),
              (OCT + 4 * 151 * HOUR_US, "cust-2", "sub-2", None, 0, 0, 2)]
    timed.sort(key=lambda t: t[0])
    out = [(metric is None, f"raw/{partition}/{offset}",
            message(customer, sub, at, metric, quantity, total, partition, offset))
           for offset, (at, customer, sub, metric, quantity, total, partition) in enumerate(timed)]
    out.sort(key=lambda t: not t[0])  # stable: the unmetered first, the rest in order
    out = [(ref, value) for _, ref, value in out]
    spikes = {datetime.fromtimestamp((START + (30 + 3 * i) * HOUR_US) / 1e6, UTC).strftime("%Y-%m-%dT%H:00Z")
              for i in range(SPIKY)}
    return out, spikes, [10, 80, 100, 120]


def reference_alerts(messages: list[tuple[str, bytes]]) -> dict[tuple, dict]:
    """The flow's operators as plain code, in the topic's order."""
    quotas = {"api_calls": Quota(Decimal(QUOTA_LIMIT), extrapolate=True)}
    firsts: dict[str, FirstDelivery] = {}
    monitors: dict[str, CustomerMonitor] = {}
    pacing: dict[str, QuotaPacing] = {}
    found = {}
    for _, value in messages:
        u = parse_enriched(value)
        if u is None or not firsts.setdefault(u.customer, FirstDelivery()).first(u):
            continue
        for a in monitors.setdefault(u.customer, CustomerMonitor()).observe(u):
            found[a.key] = a.details
        for a in pacing.setdefault(u.customer, QuotaPacing()).observe(
                u, quotas if u.subscription == "sub-2" else {}):
            found[a.key] = a.details
    return found


def produce(settings, messages: list[tuple[str, bytes]]) -> None:
    ensure_topics(settings)
    p = Producer(kafka_config(settings, "producer"))
    for ref, value in messages:
        p.produce(settings.topics.enriched, value, key=b"acme", headers=[("aforo-raw", ref.encode())])
        p.poll(0)
    assert p.flush(30) == 0


def add_quota(settings) -> None:
    with connect(settings.database_url) as conn:
        conn.execute('INSERT INTO quotas (tenant, subscription, metric, "limit") VALUES'
                     " ('acme', 'sub-2', 'api_calls', %s) ON CONFLICT (tenant, subscription, metric)"
                     ' DO UPDATE SET "limit" = excluded."limit"', (QUOTA_LIMIT,))
        conn.execute("UPDATE catalog_state SET version = version + 1")


def table(settings) -> dict[tuple, dict]:
    with connect(settings.database_url) as conn:
        return {tuple(r[:7]): r[7] for r in conn.execute(
            "SELECT kind, tenant, customer, subscription, metric, window_id, threshold, details FROM alerts")}


def alert_count(settings) -> int:
    with connect(settings.database_url) as conn:
        return conn.execute("SELECT count(*) FROM alerts").fetchone()[0]


def topic_keys(settings) -> list[tuple]:
    """The alert key of every message on the alerts topic, read to its end."""
    c = Consumer(kafka_config(settings, "consumer", group_id="aforo-test", enable_partition_eof=True))
    c.assign([TopicPartition(alerts_topic(settings), 0, 0)])
    keys, done = [], False
    while not done:
        for m in c.consume(1000, 5.0):
            if m.error():
                assert m.error().code() == KafkaError._PARTITION_EOF, m.error()
                done = True
                continue
            header = dict(m.headers())[ALERT_HEADER]
            assert orjson.loads(m.value())["key"] == orjson.loads(header)
            keys.append(tuple(orjson.loads(header)))
    c.close()
    return keys


def check_known_answer(found: dict[tuple, dict], spikes: set[str]) -> None:
    anomalies = {k for k in found if k[0] in ("spike", "dip", "weekly_drop")}
    assert {(k[0], k[5]) for k in anomalies} == {("spike", s) for s in spikes}
    assert len(anomalies) == SPIKY
    quota = sorted((k[0], k[6], int(Decimal(found[k]["used"]))) for k in found if k[0].startswith("quota"))
    assert quota == [("quota_actual", "100", 100), ("quota_actual", "120", 120), ("quota_actual", "80", 80),
                     ("quota_projected", "100", 10), ("quota_projected", "120", 10),
                     ("quota_projected", "80", 10)]


def test_alerts_once_through_restarts_replays_and_repeated_input(settings, monkeypatch):
    messages, spikes, _ = series()
    # the metering flow after a crash: a stretch of messages produced again (same aforo-raw)
    repeated = messages + messages[1000:1600]
    expected = reference_alerts(repeated)
    check_known_answer(expected, spikes)
    add_quota(settings)
    produce(settings, repeated)

    run(settings, once=True)
    assert table(settings) == expected
    assert sorted(topic_keys(settings)) == sorted(expected)

    run(settings, once=True)  # resumes at the end: nothing new
    shutil.rmtree(settings.recovery_dir)
    run(settings, once=True)  # recovery state lost: a replay of the whole topic
    assert table(settings) == expected
    assert sorted(topic_keys(settings)) == sorted(expected)  # not a message more

    monkeypatch.setattr("config.load", lambda: settings)
    out = CliRunner().invoke(alerts, ["list", "--tenant", "acme", "--kind", "spike", "--format", "json"])
    assert out.exit_code == 0, out.output
    assert sorted(r["window_id"] for r in orjson.loads(out.output)) == sorted(spikes)
    out = CliRunner().invoke(alerts, ["list", "--since", "2026-10-01T12:00:00Z"])
    assert out.exit_code == 0 and out.output.count("quota_") == 6, out.output
    assert CliRunner().invoke(monitor, ["--once"]).exit_code == 0
    assert table(settings) == expected


def test_kill_9_mid_series_and_resume_gives_the_same_alerts(settings):
    messages, spikes, _ = series()
    expected = reference_alerts(messages)
    add_quota(settings)
    produce(settings, messages)
    env = {**env_of(settings), "AFORO_BATCH_SIZE": "50", "AFORO_EPOCH_INTERVAL": "0.1"}
    code = "import config; from flows.monitoring import run; run(config.load(), once=True)"

    total, kills, mid = len(expected), 0, 0
    for threshold in (1, total // 3, total * 2 // 3):
        proc = subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE)
        deadline = time.monotonic() + 120
        while proc.poll() is None and time.monotonic() < deadline:
            if alert_count(settings) >= threshold:
                proc.send_signal(signal.SIGKILL)
                kills += 1
                break
            time.sleep(0.01)
        proc.wait()
        assert proc.returncode in (0, -signal.SIGKILL), proc.stderr.read().decode()[-3000:]
        mid += 0 < alert_count(settings) < total
        if proc.returncode == 0:
            break
    assert kills >= 1 and mid >= 1, "the flow finished before it could be killed mid-series"

    for _ in range(5):  # restart until done
        if subprocess.run([sys.executable, "-c", code], env=env, capture_output=True).returncode == 0:
            break
    assert table(settings) == expected
    check_known_answer(table(settings), spikes)
    # at least once on the topic; a repeat only ever carries the same key
    keys = topic_keys(settings)
    assert set(keys) == set(expected)
    print(f"\n{kills} kills, {len(keys) - len(set(keys))} repeated alert messages on the topic")
