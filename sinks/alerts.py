"""Alerts out: the Postgres `alerts` table and the `<prefix>.alerts` topic; quotas in; reports.

Both outputs are idempotent on the alert's deterministic key. A batch is inserted with
ON CONFLICT DO NOTHING in one transaction; only the rows that were new are produced to Kafka, and
the transaction commits after the broker acknowledged them. So a replay (epochs after the last
snapshot, or a reprocess from scratch) adds no row and no message, and a crash between the
acknowledgement and the commit at worst produces an alert twice, with the same key in the
`aforo-alert` header for consumers to drop it.
"""

from __future__ import annotations

import threading
from datetime import datetime
from decimal import Decimal

import orjson
import psycopg
from bytewax.outputs import DynamicSink, StatelessSinkPartition
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient

from config import Settings
from observe.metrics import alert_fired
from operators.anomaly import Alert, utc
from operators.projection import LEVELS
from operators.quota_pacing import Quota
from sinks.catalog import catalog_state
from sinks.kafka import TopicSpec, create_topics, kafka_config, produce
from sinks.postgres import connect

ALERT_HEADER = "aforo-alert"


def alerts_topic(settings: Settings) -> str:
    return f"{settings.topic_prefix}.alerts"


def ensure_alerts_topic(settings: Settings) -> None:
    """One partition: alerts are few, and consumers see them in the order they fired."""
    admin = AdminClient(kafka_config(settings, "admin"))
    create_topics(admin, [TopicSpec(alerts_topic(settings), 1, settings.replication_factor)],
                  admin.list_topics(timeout=10).topics)


def alert_key(alert: Alert) -> bytes:
    """The key as a JSON array: unambiguous whatever characters the ids contain."""
    return orjson.dumps(list(alert.key))


def alert_message(alert: Alert) -> bytes:
    return orjson.dumps({
        "key": list(alert.key), "kind": alert.kind, "tenant": alert.tenant, "customer": alert.customer,
        "subscription": alert.subscription, "metric": alert.metric, "window": alert.window_id,
        "threshold": alert.threshold, "window_start": utc(alert.window_start_us),
        "window_end": utc(alert.window_end_us), "event_time": utc(alert.event_us),
        "details": alert.details})


class QuotaCatalog:
    """The catalog's quotas, reloaded when the catalog version moves. Shared by the worker
    threads of a process, each with its own connection."""

    def __init__(self, database_url: str):
        self._database_url = database_url
        self._local = threading.local()
        self._version: tuple[str, int] | None = None
        self._quotas: dict[tuple[str, str], dict[str, Quota]] = {}

    def _conn(self) -> psycopg.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None or conn.closed:
            conn = self._local.conn = connect(self._database_url, autocommit=True)
        return conn

    def current(self) -> dict[tuple[str, str], dict[str, Quota]]:
        """(tenant, subscription) -> metric -> quota."""
        conn = self._conn()
        state = catalog_state(conn)
        if state != self._version:
            quotas: dict[tuple[str, str], dict[str, Quota]] = {}
            for tenant, sub, metric, limit, aggregation in conn.execute(
                    'SELECT q.tenant, q.subscription, q.metric, q."limit", m.aggregation FROM quotas q'
                    " JOIN metrics m ON m.tenant = q.tenant AND m.code = q.metric"):
                quota = Quota(Decimal(limit), extrapolate=aggregation not in LEVELS)
                quotas.setdefault((tenant, sub), {})[metric] = quota
            self._version, self._quotas = state, quotas
        return self._quotas


# One statement per batch; RETURNING says which alerts are new (ON CONFLICT skips the others).
_INSERT = """
INSERT INTO alerts (kind, tenant, customer, subscription, metric, window_id, threshold, window_start,
    window_end, event_time, details)
SELECT k, t, c, s, m, w, h, ws, we, et, d::jsonb
FROM unnest(%s::text[], %s::text[], %s::text[], %s::text[], %s::text[], %s::text[], %s::text[],
            %s::timestamptz[], %s::timestamptz[], %s::timestamptz[], %s::text[])
    AS a(k, t, c, s, m, w, h, ws, we, et, d)
ON CONFLICT DO NOTHING
RETURNING kind, tenant, customer, subscription, metric, window_id, threshold
"""


class _AlertPartition(StatelessSinkPartition[Alert]):
    def __init__(self, settings: Settings):
        self._conn = connect(settings.database_url)
        self._producer = Producer(kafka_config(settings, "producer"))
        self._topic = alerts_topic(settings)
        self._errors: list[str] = []

    def _on_delivery(self, err, _msg) -> None:
        if err is not None:
            self._errors.append(str(err))

    def write_batch(self, items: list[Alert]) -> None:
        if not items:
            return
        columns = [list(c) for c in zip(*(
            (*a.key, utc(a.window_start_us), utc(a.window_end_us), utc(a.event_us),
             orjson.dumps(a.details).decode()) for a in items), strict=True)]
        fired = []
        with self._conn.transaction():
            new = set(self._conn.execute(_INSERT, columns).fetchall())  # not written by an earlier run
            for a in items:
                if a.key in new:
                    new.discard(a.key)
                    fired.append(a)
                    produce(self._producer, self._topic, alert_message(a),
                            key=f"{a.tenant}/{a.customer}".encode(), headers=[(ALERT_HEADER, alert_key(a))],
                            on_delivery=self._on_delivery)
            self._producer.flush()
            if self._errors:  # roll back: the replay after the crash writes them again
                errors, self._errors = self._errors, []
                raise RuntimeError(f"producing alerts failed: {errors[:3]}")
        for a in fired:  # committed
            alert_fired(a.tenant, a.kind)

    def close(self) -> None:
        self._producer.flush()
        self._conn.close()


class AlertSink(DynamicSink[Alert]):
    def __init__(self, settings: Settings):
        self._settings = settings

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _AlertPartition:
        return _AlertPartition(self._settings)


# --- reading them back ---------------------------------------------------------------------------

_COLUMNS = ("kind", "tenant", "customer", "subscription", "metric", "window_id", "threshold",
            "window_start", "window_end", "event_time", "details", "detected_at")


def list_alerts(conn: psycopg.Connection, tenant: str | None = None, kind: str | None = None,
                since: datetime | None = None) -> list[dict]:
    """Alerts by event time, oldest first; `since` compares with their event time."""
    rows = conn.execute(
        f"SELECT {', '.join(_COLUMNS)} FROM alerts"
        " WHERE (%(tenant)s::text IS NULL OR tenant = %(tenant)s)"
        " AND (%(kind)s::text IS NULL OR kind = %(kind)s)"
        " AND (%(since)s::timestamptz IS NULL OR event_time >= %(since)s)"
        " ORDER BY event_time, kind, tenant, customer, metric, threshold",
        {"tenant": tenant, "kind": kind, "since": since})
    return [dict(zip(_COLUMNS, row, strict=True)) for row in rows]
