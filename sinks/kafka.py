"""Kafka adapters: client configuration and topic setup. The raw producer is
sinks/raw_producer.py; the metering flow's source and output topics are sinks/raw_source.py and
sinks/outputs.py."""

from __future__ import annotations

import logging
import socket
from collections.abc import Iterable
from dataclasses import dataclass

import orjson
from confluent_kafka import KafkaError, KafkaException, Producer, TopicCollection, TopicPartition
from confluent_kafka.admin import AdminClient, ConfigResource, NewTopic, OffsetSpec, ResourceType

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
# librdkafka's own log lines (connection failures, configuration warnings) reach Python logging
# through this logger, so they come out as the process's structured log lines, not raw stderr.
LIBRDKAFKA_LOG = logging.getLogger("aforo.librdkafka")


def kafka_config(settings: Settings, role: str, **overrides: object) -> dict:
    """The one place a Kafka client's configuration is built: the installation's bootstrap
    servers, the defaults of the client's role (producer, consumer or admin), the operator's
    properties (AFORO_KAFKA_CONFIG file and AFORO_KAFKA_* variables: TLS, SASL, client id, acks,
    any librdkafka property), then the caller's overrides (given with underscores for dots:
    group_id="x" sets group.id). librdkafka logs through Python logging."""
    config: dict[str, object] = {"bootstrap.servers": settings.kafka_bootstrap, **_ROLE_DEFAULTS[role],
                                 **settings.kafka_properties_for(role), "logger": LIBRDKAFKA_LOG}
    config.update({k.replace("_", "."): v for k, v in overrides.items()})
    return config


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


# --- topics ---------------------------------------------------------------------------------

# Every Aforo topic keeps records by time: compaction would keep only the latest raw record per
# tenant/customer key and silently drop the rest before the flow read them.
CLEANUP_POLICY = "delete"


@dataclass(frozen=True)
class TopicSpec:
    name: str
    partitions: int
    replication_factor: int  # -1: the broker's default


def topic_specs(settings: Settings, raw_partitions: int | None = None) -> list[TopicSpec]:
    """Aforo's topics as the configuration wants them: the raw topic with AFORO_RAW_PARTITIONS
    partitions and each output topic with as many as the raw topic has (`raw_partitions`, when
    it exists already), so the output keeps the raw topic's parallelism and key placement."""
    t, rf = settings.topics, settings.replication_factor
    outputs = raw_partitions or settings.raw_partitions
    return [TopicSpec(t.raw, settings.raw_partitions, rf),
            *(TopicSpec(name, outputs, rf) for name in t.outputs)]


def create_topics(admin: AdminClient, specs: Iterable[TopicSpec], existing: Iterable[str]) -> None:
    """Create the topics that do not exist yet; one that appeared meanwhile is fine."""
    wanted = [NewTopic(s.name, s.partitions, s.replication_factor, config={"cleanup.policy": CLEANUP_POLICY})
              for s in specs if s.name not in set(existing)]
    if not wanted:
        return
    for name, future in admin.create_topics(wanted, operation_timeout=10).items():
        try:
            future.result()
        except KafkaException as exc:
            if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                raise RuntimeError(f"cannot create topic {name}: {exc}") from None


def ensure_topics(settings: Settings, *extra: str) -> None:
    """Create Aforo's topics if missing (see topic_specs), and any `extra` topic (one partition) a
    component of its own needs; existing topics are left as they are (`aforo migrate` reports how
    they differ from the configuration)."""
    require_broker(settings)
    admin = AdminClient(kafka_config(settings, "admin"))
    try:
        existing = admin.list_topics(timeout=10).topics
    except KafkaException as exc:
        raise Unavailable(f"the Kafka broker at {settings.kafka_bootstrap} does not answer: "
                          f"{exc.args[0].str()}") from None
    raw = existing.get(settings.topics.raw)
    specs = topic_specs(settings, len(raw.partitions) if raw else None)
    specs += [TopicSpec(name, 1, settings.replication_factor) for name in extra]
    create_topics(admin, specs, existing)


def topic_differences(settings: Settings) -> list[str]:
    """How the existing topics differ from the configuration, one sentence each: partition
    counts (the raw topic against AFORO_RAW_PARTITIONS, each output topic against the raw topic),
    replication below AFORO_REPLICATION_FACTOR, a cleanup policy other than delete, a missing topic.
    Nothing is changed: repartitioning moves keys between partitions and needs a decision."""
    admin = AdminClient(kafka_config(settings, "admin"))
    topics = admin.list_topics(timeout=10).topics
    t = settings.topics
    raw = topics.get(t.raw)
    raw_count = len(raw.partitions) if raw else None
    problems = []
    if raw is not None and raw_count != settings.raw_partitions:
        problems.append(f"{t.raw} has {raw_count} partitions, the configuration says "
                        f"{settings.raw_partitions} (AFORO_RAW_PARTITIONS). A broker that lost its topics "
                        "recreates them with its own default: records keyed to a partition that no "
                        "longer exists move")
    for spec in topic_specs(settings, raw_count):
        meta = topics.get(spec.name)
        if meta is None:
            problems.append(f"{spec.name} does not exist (`aforo migrate` creates it)")
            continue
        if spec.name != t.raw and len(meta.partitions) != spec.partitions:
            problems.append(f"{spec.name} has {len(meta.partitions)} partitions, the raw topic "
                            f"{raw_count}: output topics should have as many as the raw topic")
        replicas = min((len(p.replicas) for p in meta.partitions.values()), default=0)
        if spec.replication_factor > 0 and replicas < spec.replication_factor:
            problems.append(f"{spec.name} has {replicas} replicas, the configuration says "
                            f"{spec.replication_factor} (AFORO_REPLICATION_FACTOR)")
    present = [name for name in (s.name for s in topic_specs(settings)) if name in topics]
    for name, policy in _cleanup_policies(admin, present).items():
        if policy != CLEANUP_POLICY:
            problems.append(f"{name} has cleanup.policy={policy}: Aforo's topics must be "
                            f"cleanup.policy={CLEANUP_POLICY} (compaction drops raw records)")
    return problems


def _cleanup_policies(admin: AdminClient, names: list[str]) -> dict[str, str]:
    if not names:
        return {}
    futures = admin.describe_configs([ConfigResource(ResourceType.TOPIC, n) for n in names])
    policies = {}
    for resource, future in futures.items():
        entry = future.result(timeout=10).get("cleanup.policy")
        # a broker that lists no value applies its default, which is delete unless changed
        policies[resource.name] = entry.value if entry is not None and entry.value else CLEANUP_POLICY
    return policies


def topic_id(settings: Settings, topic: str) -> str:
    """The broker's id for the current incarnation of a topic (a memory-only broker that
    restarts, or a topic deleted and recreated, starts its offsets again under a new id)."""
    admin = AdminClient(kafka_config(settings, "admin"))
    [future] = admin.describe_topics(TopicCollection([topic])).values()
    return str(future.result(timeout=10).topic_id)


def log_offsets(admin: AdminClient, topic: str, timeout_s: float = 5.0) -> dict[int, tuple[int, int]]:
    """Per partition of `topic`: (log start offset, log end offset)."""
    meta = admin.list_topics(topic, timeout=timeout_s).topics[topic]
    if meta.error is not None:
        raise KafkaException(meta.error)
    parts = [TopicPartition(topic, p) for p in meta.partitions]
    ends = {}
    for spec in (OffsetSpec.earliest(), OffsetSpec.latest()):
        for tp, future in admin.list_offsets({tp: spec for tp in parts}, request_timeout=timeout_s).items():
            ends.setdefault(tp.partition, []).append(future.result().offset)
    return {p: (start, end) for p, (start, end) in sorted(ends.items())}


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
