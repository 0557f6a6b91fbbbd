"""Kafka adapters: client configuration and topic setup. The raw producer is
sinks/raw_producer.py; the metering flow's source and output topics are sinks/raw_source.py and
sinks/outputs.py."""

from __future__ import annotations

import socket

import orjson
from confluent_kafka import KafkaError, KafkaException, Producer, TopicCollection
from confluent_kafka.admin import AdminClient, NewTopic

from config import Settings
from schemas.errors import Unavailable

# Raw records up to this size reach the pipeline (which rejects those over 1 MiB with a reason)
# instead of being refused by a client: a poison record must end in the ledger, not vanish.
MAX_MESSAGE_BYTES = 8 * 1024 * 1024


_ROLE_DEFAULTS: dict[str, dict[str, object]] = {
    "producer": {"enable.idempotence": True, "acks": "all", "linger.ms": 5,
                 "batch.num.messages": 10000, "message.max.bytes": MAX_MESSAGE_BYTES},
    "consumer": {"enable.auto.commit": False, "fetch.max.bytes": 2 * MAX_MESSAGE_BYTES,
                 # librdkafka prefetches up to 64 MB per partition by default: 8 partitions held
                 # half a gigabyte of the worker's memory for no throughput gain
                 "queued.max.messages.kbytes": 8192},
    "admin": {},
}


def kafka_config(settings: Settings, role: str, **overrides: object) -> dict:
    """The one place a Kafka client's configuration is built: the installation's bootstrap
    servers, the defaults of the client's role (producer, consumer or admin), then the caller's
    overrides (given with underscores for dots: group_id="x" sets group.id)."""
    config: dict[str, object] = {"bootstrap.servers": settings.kafka_bootstrap, **_ROLE_DEFAULTS[role]}
    config.update({k.replace("_", "."): v for k, v in overrides.items()})
    return config


def producer_config(settings: Settings) -> dict:
    return kafka_config(settings, "producer")


BROKER_PROBE_TIMEOUT_S = 3.0


def require_broker(settings: Settings) -> None:
    """Unavailable, at once and in one line, when no bootstrap server accepts a connection: a
    Kafka client would instead retry for its whole timeout, logging every attempt."""
    bootstrap = settings.kafka_bootstrap
    problems = []
    for server in bootstrap.split(","):
        address = server.strip().rsplit("://", 1)[-1]
        host, _, port = address.rpartition(":")
        try:
            socket.create_connection((host.strip("[]"), int(port)), timeout=BROKER_PROBE_TIMEOUT_S).close()
            return
        except (OSError, ValueError) as exc:
            problems.append(f"{address}: {getattr(exc, 'strerror', None) or exc}")
    raise Unavailable(f"cannot reach the Kafka broker ({'; '.join(problems)}); "
                      "check AFORO_KAFKA_BOOTSTRAP or `aforo status`")


def ensure_topics(settings: Settings, *extra: str) -> None:
    """Create Aforo's topics if missing (raw with the configured partition count), and any `extra`
    topic (one partition) a component of its own needs."""
    require_broker(settings)
    admin = AdminClient(kafka_config(settings, "admin"))
    try:
        existing = admin.list_topics(timeout=10).topics
    except KafkaException as exc:
        raise Unavailable(f"the Kafka broker at {settings.kafka_bootstrap} does not answer: "
                          f"{exc.args[0].str()}") from None
    t = settings.topics
    wanted = [NewTopic(name, settings.raw_partitions if name == t.raw else 1, 1)
              for name in (t.raw, *t.outputs, *extra) if name not in existing]
    if not wanted:
        return
    for name, future in admin.create_topics(wanted, operation_timeout=10).items():
        try:
            future.result()
        except KafkaException as exc:
            if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                raise RuntimeError(f"cannot create topic {name}: {exc}") from None


def topic_id(settings: Settings, topic: str) -> str:
    """The broker's id for the current incarnation of a topic (a memory-only broker that
    restarts, or a topic deleted and recreated, starts its offsets again under a new id)."""
    admin = AdminClient(kafka_config(settings, "admin"))
    [future] = admin.describe_topics(TopicCollection([topic])).values()
    return str(future.result(timeout=10).topic_id)


TIER_HEADER = "aforo-tier"  # which front door received the event: sdk, rest, upload, webhook, ...
REINJECT_HEADER = "aforo-reinject-of"  # an approved held event, re-injected: its original record
BACKFILL_HEADER = "aforo-backfill"  # history admitted on purpose: its audited backfill (api/backfill.py)


def produce(producer: Producer, topic: str, value: bytes, **kwargs) -> None:
    while True:
        try:
            producer.produce(topic, value, **kwargs)
            return
        except BufferError:  # local queue full: let deliveries drain, then retry
            producer.poll(0.05)


def record_key(line: bytes) -> bytes | None:
    """Partition key of a raw line: tenant and customer, so one customer's events stay in one
    partition (and so in order). Unparsable lines get no key; the pipeline rejects them."""
    try:
        event = orjson.loads(line)
        return f"{event['tenantid']}/{event['subject']}".encode()
    except (orjson.JSONDecodeError, TypeError, KeyError):
        return None
