"""The one producer of raw records: `aforo send`, the API's doors (events, uploads, backfills,
webhooks, gateways) and the MCP proxy's `--kafka` delivery all produce through it.

A raw record is produced as the bytes given (a client's own bytes, never re-encoded), keyed by
tenant and customer, with the door in the `aforo-tier` header and the time of receipt (the
product clock, config.clock) as its Kafka timestamp (the pipeline's ingestion time). A background
thread polls the producer, so delivery reports arrive while callers wait, and `Acks` tells a
caller which of its records the broker acknowledged.

The producer is idempotent, and its idempotence state (producer id, sequence numbers) belongs to
the broker that issued it. A memory-only broker that restarts forgets it: librdkafka then either
raises a fatal error (`Unknown Producer Id`) or retries with an id the broker rejects until each
message times out. So a producer that fails that way, or that loses every broker after having
delivered, is replaced by a fresh one (a new id from whichever broker answers now). What the old
one still held fails at once with a report; `send`, the blocking path, produces those records
again on the new producer (the pipeline deduplicates one that did land after all).
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import NamedTuple

from confluent_kafka import KafkaError, KafkaException, Producer

from config import Settings, clock
from sinks.kafka import TIER_HEADER, kafka_config, record_key

log = logging.getLogger("aforo.raw_producer")

Headers = tuple[tuple[str, bytes], ...]
MAX_KEPT_ERRORS = 1000  # an upload to a dead broker must not collect millions of error strings
MAX_ATTEMPTS = 3  # per record on the blocking path: the first, then after each producer replacement
# Failures that say nothing about the record, only about the producer that carried it.
_PRODUCER_FAILURES = frozenset({
    KafkaError._MSG_TIMED_OUT, KafkaError._FATAL, KafkaError._PURGE_QUEUE, KafkaError._PURGE_INFLIGHT,
    KafkaError.UNKNOWN_PRODUCER_ID, KafkaError.OUT_OF_ORDER_SEQUENCE_NUMBER,
    KafkaError.INVALID_PRODUCER_EPOCH})


@dataclass
class Acks:
    """The delivery reports of one caller's records, counted on the poll thread. `notify` is
    called once when the caller has sealed its records and every one has its report."""

    notify: Callable[[], None]
    keep_coords: bool = True
    sent: int = 0
    acked: int = 0
    failed: int = 0
    sealed: bool = False
    coords: dict[int, tuple[int, int]] = field(default_factory=dict)  # ref -> (partition, offset)
    errors: dict[int, str] = field(default_factory=dict)  # ref -> why not acknowledged
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def report(self, ref: int, err: KafkaError | None, partition: int, offset: int) -> None:
        with self._lock:
            if err is None:
                self.acked += 1
                if self.keep_coords:
                    self.coords[ref] = (partition, offset)
            else:
                self.failed += 1
                if len(self.errors) < MAX_KEPT_ERRORS:
                    self.errors[ref] = str(err)
            done = self.sealed and self.acked + self.failed == self.sent
        if done:
            self.notify()

    def seal(self) -> None:
        """No more records will be produced for this caller."""
        with self._lock:
            self.sealed = True
            done = self.acked + self.failed == self.sent
        if done:
            self.notify()


@dataclass
class _Generation:
    """One librdkafka producer and whether it has delivered (holds an id the broker issued)."""

    producer: Producer | None = None
    delivered: bool = False


class _Pending(NamedTuple):
    """A record on the blocking path, kept so it can be produced again."""

    ref: int
    value: bytes
    tier: str
    timestamp_ms: int
    attempt: int
    headers: Headers


class RawProducer:
    """Idempotent, acks=all (see sinks.kafka); a bounded delivery timeout turns a dead broker into
    records reported as not acknowledged instead of a caller that hangs."""

    def __init__(self, settings: Settings, delivery_timeout_s: float = 30.0):
        self._config = kafka_config(settings, "producer", message_timeout_ms=int(delivery_timeout_s * 1000))
        self._topic = settings.topics.raw
        self.delivery_timeout_s = delivery_timeout_s
        self._lock = threading.Lock()
        self._current = self._new_generation()
        self._retired: list[Producer] = []
        self._stop = threading.Event()
        self._poller = threading.Thread(target=self._poll, name="aforo-raw-producer", daemon=True)
        self._poller.start()

    # --- producing ---------------------------------------------------------------------------
    def try_produce(self, acks: Acks, value: bytes, tier: str, timestamp_ms: int, ref: int,
                    resend: Callable[[_Pending, KafkaError], bool] | None = None, attempt: int = 1,
                    headers: Headers = ()) -> bool:
        """Hand one record to the producer, with the tier and any other `headers`; False when its
        local queue is full (wait, try again). `resend` may take over a failed record instead of
        reporting it (the blocking path)."""
        pending = None if resend is None else _Pending(ref, value, tier, timestamp_ms, attempt, headers)
        key = record_key(value)
        all_headers = [(TIER_HEADER, tier.encode()), *headers]
        while True:
            gen = self._current
            try:
                gen.producer.produce(self._topic, value, key=key, headers=all_headers, timestamp=timestamp_ms,
                                     on_delivery=self._on_delivery(gen, acks, ref, pending, resend))
            except BufferError:
                return False
            except KafkaException as exc:
                if not exc.args[0].fatal():
                    raise
                self._replace(gen, exc.args[0])
                continue
            if attempt == 1:  # a record produced again is still the one record it was
                acks.sent += 1  # only the producing thread writes it, and only before seal()
            return True

    def produce(self, acks: Acks, value: bytes, tier: str, timestamp_ms: int, ref: int, **kwargs) -> None:
        """try_produce from a thread that may block while the queue drains."""
        while not self.try_produce(acks, value, tier, timestamp_ms, ref, **kwargs):
            time.sleep(0.005)

    async def send_batch(self, values: list[bytes], tier: str, timestamp_ms: int) -> Acks:
        """A request's records (refs are their indexes); returns once every one has a report.
        A failed record is reported, not produced again: the caller answers 503 naming it."""
        loop = asyncio.get_running_loop()
        done = loop.create_future()
        acks = Acks(lambda: loop.call_soon_threadsafe(_resolve, done))
        for ref, value in enumerate(values):
            while not self.try_produce(acks, value, tier, timestamp_ms, ref):
                await asyncio.sleep(0.005)  # the poll thread drains deliveries meanwhile
        acks.seal()
        await done
        return acks

    def send(self, records: Iterable[tuple[int, bytes]], tier: str, *, timestamp_ms: int | None = None,
             headers: Headers = (), keep_coords: bool = False,
             progress: Callable[[int], None] | None = None) -> Acks:
        """Produce (ref, value) records as they come, in order (each stamped with the time it is
        read unless `timestamp_ms` is given), and wait until every one has a report. A record that
        failed only because its producer had to be replaced is produced again, up to
        MAX_ATTEMPTS times (after the records sent meanwhile: order holds unless the broker fails)."""
        done = threading.Event()
        acks = Acks(done.set, keep_coords=keep_coords)
        again: queue.SimpleQueue[_Pending] = queue.SimpleQueue()

        def resend(pending: _Pending, err: KafkaError) -> bool:
            if err.code() not in _PRODUCER_FAILURES or pending.attempt >= MAX_ATTEMPTS:
                return False
            again.put(pending)
            return True

        def retry_failed() -> None:
            while not again.empty():
                p = again.get()
                self.produce(acks, p.value, p.tier, p.timestamp_ms, p.ref, resend=resend,
                             attempt=p.attempt + 1, headers=p.headers)

        n = 0
        for n, (ref, value) in enumerate(records, 1):
            stamp = timestamp_ms or clock.now_ms()
            self.produce(acks, value, tier, stamp, ref, resend=resend, headers=headers)
            retry_failed()
            if progress is not None and n % 1000 == 0:
                progress(n)
        acks.seal()
        while not done.wait(0.05):
            retry_failed()
        if progress is not None:
            progress(n)
        return acks

    def close(self) -> None:
        if self._current.producer.flush(self.delivery_timeout_s):
            log.warning("closing the raw producer with records not yet acknowledged")
        self._stop.set()
        self._poller.join()
        with self._lock:
            producers = [self._current.producer, *self._retired]
            self._retired = []
        for producer in producers:
            producer.close()  # release librdkafka's threads and connections now, not at GC

    # --- delivery reports and replacement (poll thread) ------------------------------------
    def _on_delivery(self, gen: _Generation, acks: Acks, ref: int, pending: _Pending | None,
                     resend: Callable[[_Pending, KafkaError], bool] | None) -> Callable:
        def on_delivery(err: KafkaError | None, msg) -> None:
            if err is None:
                gen.delivered = True
                acks.report(ref, None, msg.partition(), msg.offset())
                return
            if err.code() in _PRODUCER_FAILURES:
                self._replace(gen, err)
            if resend is None or not resend(pending, err):
                acks.report(ref, err, -1, -1)
        return on_delivery

    def _on_error(self, gen: _Generation, err: KafkaError) -> None:
        if err.fatal() or (err.code() == KafkaError._ALL_BROKERS_DOWN and gen.delivered):
            self._replace(gen, err)

    def _new_generation(self) -> _Generation:
        gen = _Generation()
        gen.producer = Producer({**self._config, "error_cb": lambda err: self._on_error(gen, err)})
        return gen

    def _replace(self, gen: _Generation, why: KafkaError) -> None:
        """A fresh producer for `gen` (once: later reports of the same one find it replaced)."""
        with self._lock:
            if gen is not self._current:
                return
            self._current = self._new_generation()
            self._retired.append(gen.producer)
        log.warning("raw producer replaced by a new one (%s); its undelivered records are reported", why)

    def _poll(self) -> None:
        while not self._stop.is_set():
            try:
                self._current.producer.poll(0.05)
                if self._retired:
                    self._drain_retired()
            except Exception:  # a caller's callback failed (its event loop closed...): the others wait on us
                log.exception("a delivery report's callback failed")

    def _drain_retired(self) -> None:
        """Fail what a replaced producer still holds (purged: reported now, not after the delivery
        timeout), then close it."""
        with self._lock:
            retired = list(self._retired)
        for producer in retired:
            producer.purge(in_queue=True, in_flight=True)
            producer.poll(0)
            if len(producer) == 0:
                with self._lock:
                    self._retired.remove(producer)
                producer.close()


def _resolve(future: asyncio.Future) -> None:
    if not future.done():
        future.set_result(None)
