"""The live tail: a tenant's processed events, as server-sent events, from the output topics.

Why the output topics and not the ledger: they are the pipeline's published interface, carry the
same status, reason and provenance as the ledger, and arrive as soon as a record is routed. A
ledger poll would need a monotonic cursor the ledger does not have (rows commit out of
`processed_at` order) and would put a query per client per second on Postgres. Output topics are
at least once (after a crash the replayed epochs are produced again), so repeats are dropped by
their `aforo-raw` reference.
"""

from __future__ import annotations

import time
import uuid
from collections import OrderedDict
from collections.abc import AsyncIterator

import anyio
import anyio.to_thread
import orjson
from confluent_kafka import Consumer, TopicPartition

from config import Settings
from sinks.kafka import kafka_config

HEARTBEAT_S = 15.0  # an SSE comment now and then keeps proxies from closing an idle stream
SEEN = 100_000  # raw references remembered per connection to drop at-least-once repeats


def tail_consumer(settings: Settings) -> Consumer:
    """A consumer of the three output topics positioned at their current ends (resolved now, so
    everything routed after the stream opened is delivered)."""
    consumer = Consumer(kafka_config(settings, "consumer", group_id=f"aforo-api-tail-{uuid.uuid4().hex}"))
    assignment = []
    for topic in settings.topics.outputs:
        meta = consumer.list_topics(topic, timeout=10).topics[topic]
        for partition in meta.partitions:
            _low, high = consumer.get_watermark_offsets(TopicPartition(topic, partition), timeout=10)
            assignment.append(TopicPartition(topic, partition, high))
    consumer.assign(assignment)
    return consumer


def sse_frame(raw_ref: str, value: bytes, tenant: str) -> bytes | None:
    """The SSE frame of one routed message when it is the tenant's, else None. The tenant is read
    from the event itself (message keys are tenant/subject, but a tenant id may contain '/')."""
    try:
        message = orjson.loads(value)
    except orjson.JSONDecodeError:
        return None
    event = message.get("event") if isinstance(message, dict) else None
    if not isinstance(event, dict) or event.get("tenantid") != tenant:
        return None
    status = str(message.get("status", "message")).replace("\n", " ")
    return f"id: {raw_ref}\nevent: {status}\ndata: ".encode() + value + b"\n\n"


async def tail(consumer: Consumer, tenant: str) -> AsyncIterator[bytes]:
    """The tenant's frames from a positioned consumer, until the client goes away."""
    seen: OrderedDict[str, None] = OrderedDict()
    try:
        yield b": tailing\n\n"  # the position is fixed: a client may start producing now
        last_write = time.monotonic()
        while True:
            messages = await anyio.to_thread.run_sync(consumer.consume, 500, 1.0)
            for msg in messages:
                if msg.error() is not None:
                    continue
                ref = dict(msg.headers() or ()).get("aforo-raw", b"").decode() or \
                    f"{msg.topic()}/{msg.partition()}/{msg.offset()}"
                if ref in seen:
                    continue
                seen[ref] = None
                if len(seen) > SEEN:
                    seen.popitem(last=False)
                frame = sse_frame(ref, msg.value() or b"", tenant)
                if frame is not None:
                    last_write = time.monotonic()
                    yield frame
            if time.monotonic() - last_write >= HEARTBEAT_S:
                last_write = time.monotonic()
                yield b": keepalive\n\n"
    finally:
        with anyio.CancelScope(shield=True):  # the client went away: still release the consumer
            await anyio.to_thread.run_sync(consumer.close)
