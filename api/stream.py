"""The live tail: processed events, as server-sent events, from the output topics.

Why the output topics and not the ledger: they are the pipeline's published interface, carry the
same status, reason and provenance as the ledger, and arrive as soon as a record is routed. A
ledger poll would need a monotonic cursor the ledger does not have (rows commit out of
`processed_at` order) and would put a query per client per second on Postgres.

One consumer per API process, started with the first subscriber, fans out to every SSE client
(each filtered to its tenant, or all tenants for an operator key), so a hundred open consoles
cost one consumer, not a hundred. Output topics are at least once (after a crash the replayed
epochs are produced again): repeats are dropped once, here, by their `aforo-raw` reference.

Where the stream starts: at the true end of each output partition. The embedded broker reports a
high watermark that lags (the last batch's base offset + 1), so the consumer starts there and
reads to partition EOF before it calls itself positioned; a subscriber is told `: tailing` once
the consumer has stood at the end of every partition since it subscribed, and from then on gets
every record routed after that moment (nothing older); browsers get `event: ready` with it.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import uuid
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

import orjson
from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition

from config import Settings
from sinks.kafka import kafka_config

HEARTBEAT_S = 15.0  # an SSE comment now and then keeps proxies from closing an idle stream
SEEN = 100_000  # raw references remembered to drop at-least-once repeats
QUEUE = 10_000  # frames a slow client may fall behind before it is told to reconnect
# The position is fixed: a client may start producing now. A comment for plain readers, an event
# for browsers (EventSource hides comments).
POSITIONED = b": tailing\n\nevent: ready\ndata: {}\n\n"
OVERFLOW = b"event: overflow\ndata: {}\n\n"
CLOSING = b"event: closing\ndata: {}\n\n"  # the server is shutting down: reconnect later
REVOKED = b"event: revoked\ndata: {}\n\n"  # the key was revoked: a reconnect is refused (401)


def tail_consumer(settings: Settings) -> tuple[Consumer, list[TopicPartition]]:
    """A consumer of the three output topics assigned at their reported high watermarks (which
    may lag the true end: the caller reads on to partition EOF), and the partitions."""
    consumer = Consumer(kafka_config(settings, "consumer", group_id=f"aforo-api-tail-{uuid.uuid4().hex}",
                                     enable_partition_eof=True))
    assignment = []
    for topic in settings.topics.outputs:
        meta = consumer.list_topics(topic, timeout=10).topics[topic]
        for partition in meta.partitions:
            _low, high = consumer.get_watermark_offsets(TopicPartition(topic, partition), timeout=10)
            assignment.append(TopicPartition(topic, partition, high))
    consumer.assign(assignment)
    return consumer, assignment


@dataclass(frozen=True)
class Routed:
    """One routed message, parsed once for every subscriber."""

    ref: str
    tenant: str | None
    customer: str | None
    frame: bytes


def routed(ref: str, value: bytes) -> Routed | None:
    """The SSE frame of a routed message and whose it is (None if it is not a routed message).
    The tenant is read from the event (message keys are tenant/subject, but a tenant id may
    contain '/'); a record too broken to name its tenant belongs to no tenant."""
    try:
        message = orjson.loads(value)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(message, dict):
        return None
    event = message.get("event") if isinstance(message.get("event"), dict) else {}
    billing = message.get("billing") if isinstance(message.get("billing"), dict) else {}
    tenant = event.get("tenantid")
    status = str(message.get("status", "message")).replace("\n", " ")
    return Routed(ref, tenant if isinstance(tenant, str) else None, billing.get("customer"),
                  f"id: {ref}\nevent: {status}\ndata: ".encode() + value + b"\n\n")


def sse_frame(raw_ref: str, value: bytes, tenant: str) -> bytes | None:
    """The SSE frame of one routed message when it is the tenant's, else None."""
    r = routed(raw_ref, value)
    return r.frame if r is not None and r.tenant == tenant else None


@dataclass(eq=False)
class Subscriber:
    tenant: str | None  # None: every tenant's records (operator keys); tenantless records too
    loop: asyncio.AbstractEventLoop
    queue: asyncio.Queue = field(default_factory=lambda: asyncio.Queue(QUEUE))
    overflowed: bool = False

    def wants(self, r: Routed) -> bool:
        return self.tenant is None or r.tenant == self.tenant

    def offer(self, frame: bytes) -> None:
        """From the consumer thread: hand a frame to the client's event loop."""
        with contextlib.suppress(RuntimeError):  # its event loop is closed: the client is gone
            self.loop.call_soon_threadsafe(self._put, frame)

    def _put(self, frame: bytes) -> None:
        if self.overflowed:
            return
        try:
            self.queue.put_nowait(frame)
        except asyncio.QueueFull:  # too slow: tell it to reconnect rather than skip records silently
            self.overflowed = True
            self.queue.get_nowait()
            self.queue.put_nowait(OVERFLOW)


class LiveTail:
    """The process's one output-topic consumer and its subscribers."""

    def __init__(self, settings: Settings):
        self._settings = settings
        self._lock = threading.Lock()
        self._subscribers: set[Subscriber] = set()
        self._pending: set[Subscriber] = set()  # waiting for the consumer to stand at the end
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()

    def subscribe(self, tenant: str | None) -> Subscriber:
        sub = Subscriber(tenant, asyncio.get_running_loop())
        with self._lock:
            self._pending.add(sub)
            if self._thread is None or not self._thread.is_alive():
                self._stop.clear()
                self._thread = threading.Thread(target=self._run, name="aforo-live-tail", daemon=True)
                self._thread.start()
        return sub

    def unsubscribe(self, sub: Subscriber) -> None:
        with self._lock:
            self._pending.discard(sub)
            self._subscribers.discard(sub)

    def end_streams(self) -> None:
        """Tell every client the server is going away and end its stream: streams never end by
        themselves and would otherwise hold a graceful shutdown to its timeout."""
        with self._lock:
            for sub in self._subscribers | self._pending:
                sub.offer(CLOSING)

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)

    def _run(self) -> None:
        try:
            consumer, assignment = tail_consumer(self._settings)
        except (KafkaException, KeyError) as exc:  # told to the waiting clients; the next one retries
            error = orjson.dumps({"message": f"cannot read the output topics: {exc}"})
            with self._lock:
                for sub in self._pending:
                    sub.offer(b"event: error\ndata: " + error + b"\n\n")
                self._pending.clear()
            return
        at_end = {(tp.topic, tp.partition): False for tp in assignment}
        seen: OrderedDict[str, None] = OrderedDict()
        try:
            while not self._stop.is_set():
                for msg in consumer.consume(500, 0.5):
                    err = msg.error()
                    if err is not None:
                        if err.code() == KafkaError._PARTITION_EOF:
                            at_end[(msg.topic(), msg.partition())] = True
                        continue
                    at_end[(msg.topic(), msg.partition())] = False
                    ref = dict(msg.headers() or ()).get("aforo-raw", b"").decode() or \
                        f"{msg.topic()}/{msg.partition()}/{msg.offset()}"
                    if ref in seen:
                        continue
                    seen[ref] = None
                    if len(seen) > SEEN:
                        seen.popitem(last=False)
                    r = routed(ref, msg.value() or b"")
                    if r is None:
                        continue
                    with self._lock:
                        for sub in self._subscribers:
                            if sub.wants(r):
                                sub.offer(r.frame)
                if all(at_end.values()):
                    with self._lock:
                        for sub in self._pending:
                            sub.offer(POSITIONED)
                        self._subscribers |= self._pending
                        self._pending.clear()
        finally:
            consumer.close()


async def tail(live: LiveTail, tenant: str | None,
               key_live: Callable[[], Awaitable[bool]]) -> AsyncIterator[bytes]:
    """One client's frames, until it goes away (or falls too far behind: `event: overflow`), or
    its key is revoked: checked before every frame, as a stream outlives the request's check."""
    sub = live.subscribe(tenant)
    try:
        while True:
            try:
                frame = await asyncio.wait_for(sub.queue.get(), timeout=HEARTBEAT_S)
            except TimeoutError:
                frame = b": keepalive\n\n"
            if not await key_live():
                yield REVOKED
                return
            yield frame
            if frame in (OVERFLOW, CLOSING) or frame.startswith(b"event: error"):
                return
    finally:
        live.unsubscribe(sub)
