"""The raw topic as the metering flow reads it: one Batch per raw partition per poll.

Each partition is read by one worker (Bytewax assigns them), starting right after the last of
its raw records that is in the ledger: the ledger is the flow's progress, so no recovery snapshot
is needed to resume exactly where the last committed batch ended, whatever happened to the
process or its local state.

A topic can be recreated under a running flow (a memory-only broker restarts, or an operator
deletes and recreates it): its offsets start again under a new topic id. The source notices,
and stops with TopicRecreated rather than read the new incarnation as if it were the old one.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, Message, TopicPartition

from config import Settings
from schemas.record import Batch, Record
from sinks.kafka import BACKFILL_HEADER, REINJECT_HEADER, TIER_HEADER, kafka_config, topic_id

_CREATE_OR_LOG_APPEND_TIME = (1, 2)
_IDLE_WAIT_S = 0.01  # how long a poll waits for data when the worker's partitions are all idle
INCARNATION_CHECK_S = 5.0
# Errors that mean the topic is away for now (deleted and about to come back as a new
# incarnation, or a broker restarting): wait for it rather than fail.
_TOPIC_AWAY = (KafkaError.UNKNOWN_TOPIC_OR_PART, KafkaError._UNKNOWN_PARTITION, KafkaError._UNKNOWN_TOPIC,
               KafkaError.LEADER_NOT_AVAILABLE, KafkaError.NOT_LEADER_FOR_PARTITION)
_log = logging.getLogger(__name__)


class TopicRecreated(RuntimeError):
    """The raw topic the flow reads is not the one it started on."""


class _Incarnation:
    """The current topic id, asked of the broker at most every few seconds per process."""

    def __init__(self, settings: Settings, topic: str, expected: str):
        self._settings, self._topic, self.expected = settings, topic, expected
        self._lock = threading.Lock()
        self._checked_at = time.monotonic()

    def check(self, force: bool = False) -> None:
        with self._lock:
            if not force and time.monotonic() - self._checked_at < INCARNATION_CHECK_S:
                return
            self._checked_at = time.monotonic()
            try:
                current = topic_id(self._settings, self._topic)
            except Exception:  # the broker is away: the consumer will say more when it is back
                return
        if current != self.expected:
            raise TopicRecreated(
                f"the raw topic {self._topic} was recreated (topic id {self.expected} is now {current}): "
                "its offsets start again, so the flow moves to the new incarnation")


def _header(headers: list[tuple[str, bytes]], name: str) -> str | None:
    for k, v in headers:
        if k == name:
            return v.decode(errors="replace") if v else None
    return None


def record_of(m: Message, raw_topic_id: str) -> Record:
    """A raw Kafka message as a Record; without a create or log-append time it gets none (0),
    which the parse step rejects."""
    ts_type, ts = m.timestamp()
    rec = Record(m.topic(), raw_topic_id, m.partition(), m.offset(),
                 ts if ts_type in _CREATE_OR_LOG_APPEND_TIME else 0, m.value() or b"", m.key())
    headers = m.headers()
    if headers:
        rec.tier = _header(headers, TIER_HEADER)
        rec.reinject_of = _header(headers, REINJECT_HEADER)
        rec.backfill = _header(headers, BACKFILL_HEADER)
    return rec


class _WorkerReader:
    """One consumer for every raw partition a worker reads, so one fetch request covers them all.
    A consumer per partition made one fetch per partition: at a live 5,000 events/s over 8
    partitions the embedded broker spent 0.98 cores serving them, against 0.63 for one consumer
    of all 8 (the producer's share included). Each partition takes its own messages from here,
    up to a batch at a time; a poll for one partition buffers what it brings for the others until
    their turn (Bytewax polls a worker's partitions in turn on the worker's thread: no lock)."""

    def __init__(self, settings: Settings, batch_size: int):
        self._consumer = Consumer(kafka_config(
            settings, "consumer", group_id="aforo-metering", enable_partition_eof=True,
            # An offset beyond the log means the topic is not what the ledger says it is: an error,
            # never a silent jump to the end.
            auto_offset_reset="error",
            # A fetch may wait this long for data (default 500 ms): the ingest-to-ledger latency of
            # a quiet stream. Measured on the embedded broker: 250 ms per event at the default,
            # 26-40 ms at 10 ms; 25 ms keeps an idle flow's fetches at 40 per second.
            fetch_wait_max_ms=25,
            # librdkafka prefetches up to 64 MB per partition by default (fetches of up to 50 MB):
            # 8 partitions of a backlog held ~160 MB. 2 MB per partition is ~5 batches. A fetch
            # serves all the worker's partitions (each at most 1 MB): at 1 MB in all, 2 processes
            # read a backlog at 7,161 events/s; at 8 MB, 8,809.
            queued_max_messages_kbytes=2048, queued_min_messages=5000, fetch_max_bytes=8 << 20))
        self._batch_size = batch_size
        self._buffers: dict[int, list[Message]] = {}
        self._empty = 0  # polls in a row that found nothing

    def add(self, topic: str, partition: int, start: int) -> None:
        self._buffers[partition] = []
        self._consumer.incremental_assign([TopicPartition(topic, partition, start)])

    def remove(self, topic: str, partition: int) -> bool:
        """Stop reading a partition (what it buffered is dropped: it was never decided, and the
        ledger says where the next run starts); True when it was the last one."""
        del self._buffers[partition]
        self._consumer.incremental_unassign([TopicPartition(topic, partition)])
        if self._buffers:
            return False
        self._consumer.close()
        return True

    def take(self, partition: int) -> list[Message]:
        """Up to a batch of the partition's messages, polling the consumer if none are buffered.
        Messages that name no partition (consumer-wide errors) go to the partition that polled."""
        buffered = self._buffers[partition]
        if not buffered:
            # When a whole round of polls found nothing, this one waits a little for data:
            # busy-polling an idle topic would spin a core. (Not next_awake: Bytewax compares it
            # with the system clock, which a pinned clock in tests puts years away.)
            wait = self._empty >= len(self._buffers)
            if wait:
                self._empty = 0
            messages = self._consumer.consume(self._batch_size, _IDLE_WAIT_S if wait else 0.0)
            self._empty = 0 if messages else self._empty + 1
            for m in messages:
                p = m.partition()
                # a partition no longer read: dropped, as at its removal
                target = buffered if p is None or p < 0 else self._buffers.get(p)
                if target is not None:
                    target.append(m)
        taken = buffered[:self._batch_size]
        del buffered[:self._batch_size]
        return taken


class _RawPartition(StatefulSourcePartition[Batch, None]):
    def __init__(self, reader: _WorkerReader, release: Callable[[], None], topic: str, raw_topic_id: str,
                 partition: int, tail: bool, stopping: threading.Event, incarnation: _Incarnation):
        self._reader, self._release = reader, release
        self._topic, self._topic_id, self._partition = topic, raw_topic_id, partition
        self._tail = tail
        self._stopping, self._incarnation = stopping, incarnation
        self._eof = False
        self._away = False  # the topic or partition is unavailable (deleted, broker restarting)

    def next_batch(self) -> list[Batch]:
        if self._eof or self._stopping.is_set():
            raise StopIteration
        records = []
        for m in self._reader.take(self._partition):
            err = m.error()
            if err is not None:
                if err.code() == KafkaError._PARTITION_EOF:
                    self._eof = not self._tail
                    continue
                self._incarnation.check(force=True)  # a recreated topic ends this flow here
                if err.retriable() or err.code() in _TOPIC_AWAY:
                    if not self._away:
                        _log.warning("raw topic %s partition %d unavailable (%s): waiting for it",
                                     self._topic, self._partition, err.str())
                    self._away = True
                    continue
                raise RuntimeError(f"reading {self._topic} partition {self._partition}: {err}")
            self._away = False
            records.append(record_of(m, self._topic_id))
        self._incarnation.check()
        return [Batch(self._topic, self._topic_id, self._partition, records)] if records else []

    def snapshot(self) -> None:
        return None  # the ledger is the progress (see the module docstring)

    def close(self) -> None:
        self._release()


class RawSource(FixedPartitionedSource[Batch, None]):
    """`start_at(topic id, partition)`: the last offset of the partition in the ledger, or None."""

    def __init__(self, settings: Settings, raw_topic_id: str, start_at: Callable[[str, int], int | None], *,
                 tail: bool, stopping: threading.Event):
        self._settings = settings
        self._topic = settings.topics.raw
        self._topic_id = raw_topic_id
        self._start_at = start_at
        self._tail = tail
        self._stopping = stopping
        self._incarnation = _Incarnation(settings, self._topic, raw_topic_id)
        self._lock = threading.Lock()
        self._readers: dict[int, _WorkerReader] = {}

    def list_parts(self) -> list[str]:
        consumer = Consumer(kafka_config(self._settings, "consumer", group_id="aforo-metering-meta"))
        try:
            meta = consumer.list_topics(self._topic, timeout=10).topics[self._topic]
            if meta.error is not None:
                raise RuntimeError(f"raw topic {self._topic}: {meta.error}")
            return [str(p) for p in sorted(meta.partitions)]
        finally:
            consumer.close()

    def build_part(self, step_id: str, for_part: str, resume_state: None) -> _RawPartition:
        partition = int(for_part)
        done = self._start_at(self._topic_id, partition)
        worker = threading.get_ident()  # Bytewax builds and polls a worker's partitions on its thread
        with self._lock:
            reader = self._readers.get(worker)
            if reader is None:
                reader = self._readers[worker] = _WorkerReader(self._settings, self._settings.batch_size)
        reader.add(self._topic, partition, OFFSET_BEGINNING if done is None else done + 1)

        def release() -> None:
            if reader.remove(self._topic, partition):
                with self._lock:
                    del self._readers[worker]

        return _RawPartition(reader, release, self._topic, self._topic_id, partition, self._tail,
                             self._stopping, self._incarnation)
