"""Gauges only the ledger and the broker together can answer, refreshed in the background by one
process of the metering flow (process 0: every process would export the same numbers):

* `aforo_raw_lag_records{partition}`: the raw topic's log end offset minus the ledger's position
  in that partition (the offset after the highest one written): the ledger is the progress the
  flow resumes from, so this is its durable progress, not what a consumer has fetched. A new
  incarnation of the raw topic (a memory-only broker restarted) shows as the whole topic lagging,
  which is what it is until the flow moves to it.
* `aforo_held_events{tenant,reason}`: held events awaiting a reconciliation decision.
"""

from __future__ import annotations

import logging
import threading

from confluent_kafka.admin import AdminClient

from config import Settings
from observe.metrics import HELD_EVENTS, RAW_LAG, tenant_label
from sinks.kafka import kafka_config, log_offsets, topic_id
from sinks.ledger import high_water
from sinks.postgres import connect
from sinks.reconcile import undecided_counts

INTERVAL_S = 15.0
log = logging.getLogger("aforo.observe")


def refresh(settings: Settings, admin: AdminClient) -> None:
    raw = settings.topics.raw
    offsets = log_offsets(admin, raw)
    raw_id = topic_id(settings, raw)
    with connect(settings.database_url, autocommit=True, connect_timeout=5) as conn:
        done = {p: high_water(conn, raw_id, p) for p in offsets}  # the flow resumes after these
        held = undecided_counts(conn)
    for p, (start, end) in offsets.items():
        position = start if done[p] is None else max(start, done[p] + 1)
        RAW_LAG.labels(str(p)).set(max(0, end - position))
    counts: dict[tuple[str, str], int] = {}
    for (tenant, status), n in held.items():
        key = (tenant_label(tenant), status)
        counts[key] = counts.get(key, 0) + n
    for labels in _held_labels_seen - counts.keys():
        HELD_EVENTS.labels(*labels).set(0)  # decided since the last refresh
    for labels, n in counts.items():
        HELD_EVENTS.labels(*labels).set(n)
    _held_labels_seen.update(counts)


_held_labels_seen: set[tuple[str, str]] = set()


def start(settings: Settings, interval_s: float = INTERVAL_S) -> threading.Event:
    """Refresh every interval_s in a daemon thread until the returned event is set. A failed
    refresh is logged and retried at the next interval; the gauges keep their last values."""
    stop = threading.Event()

    def loop() -> None:
        admin = None
        while True:
            try:
                admin = admin or AdminClient(kafka_config(settings, "admin"))
                refresh(settings, admin)
            except Exception as exc:  # a monitoring thread must outlive any one failure
                log.warning("ledger gauges not refreshed: %s", exc)
            finally:
                if admin is not None:
                    admin.poll(0)  # hand librdkafka's queued log lines to Python logging
            if stop.wait(interval_s):
                return

    threading.Thread(target=loop, name="aforo-ledger-gauges", daemon=True).start()
    return stop
