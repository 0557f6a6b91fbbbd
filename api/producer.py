"""Producing raw records and knowing which ones the broker acknowledged.

One idempotent producer serves every door (the tier travels per record in the `aforo-tier`
header). A background thread polls it, so delivery reports arrive while request handlers wait;
a request answers only once every record it produced has a delivery report.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from confluent_kafka import Producer

from config import Settings, clock
from sinks.kafka import TIER_HEADER, producer_config, record_key

MAX_KEPT_ERRORS = 1000  # an upload to a dead broker must not collect millions of error strings


@dataclass
class Acks:
    """The delivery reports of one request's records, counted on the producer's poll thread.
    `notify` is called once when the request has sealed its records and all are reported."""

    notify: Callable[[], None]
    keep_coords: bool = True
    sent: int = 0
    acked: int = 0
    failed: int = 0
    sealed: bool = False
    coords: dict[int, tuple[int, int]] = field(default_factory=dict)  # ref -> (partition, offset)
    errors: dict[int, str] = field(default_factory=dict)  # ref -> why not acknowledged
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def report(self, ref: int) -> Callable:
        def on_delivery(err, msg) -> None:
            with self._lock:
                if err is None:
                    self.acked += 1
                    if self.keep_coords:
                        self.coords[ref] = (msg.partition(), msg.offset())
                else:
                    self.failed += 1
                    if len(self.errors) < MAX_KEPT_ERRORS:
                        self.errors[ref] = str(err)
                done = self.sealed and self.acked + self.failed == self.sent
            if done:
                self.notify()
        return on_delivery

    def seal(self) -> None:
        """No more records will be produced for this request."""
        with self._lock:
            self.sealed = True
            done = self.acked + self.failed == self.sent
        if done:
            self.notify()


class RawTopicProducer:
    """The API's producer to the raw topic (idempotent, acks=all, see sinks.kafka)."""

    def __init__(self, settings: Settings, delivery_timeout_s: float = 30.0):
        # A bounded delivery timeout turns a dead broker into a 503 instead of a hung request.
        self._producer = Producer({**producer_config(settings),
                                   "message.timeout.ms": int(delivery_timeout_s * 1000)})
        self._topic = settings.topics.raw
        self.delivery_timeout_s = delivery_timeout_s
        self._stop = threading.Event()
        self._poller = threading.Thread(target=self._poll, name="aforo-api-producer", daemon=True)
        self._poller.start()

    def _poll(self) -> None:
        while not self._stop.is_set():
            self._producer.poll(0.05)

    def _produce(self, line: bytes, tier: str, timestamp_ms: int, acks: Acks, ref: int,
                 headers: tuple[tuple[str, bytes], ...] = ()) -> None:
        """Raises BufferError when the local queue is full (callers wait and retry)."""
        self._producer.produce(self._topic, line, key=record_key(line),
                               headers=[(TIER_HEADER, tier.encode()), *headers], timestamp=timestamp_ms,
                               on_delivery=acks.report(ref))
        acks.sent += 1

    async def send_batch(self, lines: list[bytes], tier: str, timestamp_ms: int) -> Acks:
        """Produce a request's records; returns once every one has a delivery report."""
        loop = asyncio.get_running_loop()
        done = loop.create_future()
        acks = Acks(lambda: loop.call_soon_threadsafe(_resolve, done))
        for ref, line in enumerate(lines):
            while True:
                try:
                    self._produce(line, tier, timestamp_ms, acks, ref)
                    break
                except BufferError:  # the poll thread drains deliveries meanwhile
                    await asyncio.sleep(0.005)
        acks.seal()
        await done
        return acks

    def send_stream(self, acks: Acks, line: bytes, tier: str, timestamp_ms: int, ref: int,
                    headers: tuple[tuple[str, bytes], ...] = ()) -> None:
        """Produce one record of a long stream (an upload, a backfill) from a worker thread, in
        the order of the calls (the producer is idempotent, so each partition keeps it)."""
        while True:
            try:
                self._produce(line, tier, timestamp_ms, acks, ref, headers)
                return
            except BufferError:
                time.sleep(0.005)

    def close(self) -> None:
        self._producer.flush(self.delivery_timeout_s)
        self._stop.set()
        self._poller.join()
        self._producer.close()  # release librdkafka's threads and connections now, not at GC


def _resolve(future: asyncio.Future) -> None:
    if not future.done():
        future.set_result(None)


def now_ms() -> int:
    """The time of receipt, which becomes the raw record's Kafka timestamp (the pipeline's
    ingestion time)."""
    return clock.now_ms()
