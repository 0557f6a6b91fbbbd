"""Event delivery off the relay's path: an in-memory queue drained by a background thread, with a
bounded on-disk spool for whatever the endpoint cannot take now. An unreachable endpoint costs
the MCP traffic nothing (submit never blocks) and loses no event: spooled batches are sent,
oldest first, once it answers again, and survive a restart of the proxy."""

from __future__ import annotations

import importlib.metadata
import logging
import os
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

import httpx

from config import Settings
from observe.metrics import MCP_EVENTS, MCP_QUEUED_EVENTS, MCP_SPOOL_BYTES
from sinks.raw_producer import RawProducer

log = logging.getLogger("aforo.mcp_proxy.delivery")

TIER = "mcp"
MAX_BATCH = 500  # well under the REST API's 1,000 events / 1 MiB per request


class DeliveryError(Exception):
    """The endpoint did not take the batch now; send it again later."""


class Rejected(Exception):
    """The endpoint refused the batch as malformed; sending it again cannot help."""


class Sender(Protocol):
    def send(self, events: list[bytes]) -> None: ...

    def close(self) -> None: ...


def _version() -> str:
    try:
        return f"mcp-proxy/{importlib.metadata.version('aforo')}"
    except importlib.metadata.PackageNotFoundError:  # run from a source tree
        return "mcp-proxy/dev"


class HttpSender:
    """POST /v1/events batches with the tenant's API key, named as the MCP proxy (tier `mcp`); 202
    means the broker acknowledged all."""

    def __init__(self, endpoint: str, api_key: str, timeout_s: float = 10.0):
        base = endpoint.rstrip("/")
        self._url = base if base.endswith("/v1/events") else base + "/v1/events"
        # Aforo-MCP-Proxy: the REST door records these events as tier `mcp` (api/routes/events.py)
        self._headers = {"Authorization": f"Bearer {api_key}", "Aforo-MCP-Proxy": _version(),
                         "Content-Type": "application/cloudevents-batch+json"}
        self._client = httpx.Client(timeout=timeout_s)

    def send(self, events: list[bytes]) -> None:
        try:
            r = self._client.post(self._url, content=b"[" + b",".join(events) + b"]", headers=self._headers)
        except httpx.HTTPError as exc:
            raise DeliveryError(f"{self._url}: {exc!r}") from None
        if r.status_code == 202:
            return
        if r.status_code in (400, 413, 415):
            raise Rejected(f"{r.status_code} {r.text[:300]}")
        raise DeliveryError(f"{self._url}: {r.status_code} {r.text[:300]}")  # 401/403 too: a key fix helps

    def close(self) -> None:
        self._client.close()


class KafkaSender:
    """Straight to `<prefix>.events.raw` through Aforo's raw producer (the one every door uses),
    tier `mcp`."""

    def __init__(self, bootstrap: str, topic_prefix: str = "aforo", timeout_s: float = 10.0):
        settings = Settings(home=Path("."), kafka_bootstrap_env=bootstrap, topic_prefix=topic_prefix)
        # A bounded delivery timeout turns an unreachable broker into a failed batch we spool,
        # instead of librdkafka holding it in memory for its default five minutes.
        self._producer = RawProducer(settings, delivery_timeout_s=timeout_s)

    def send(self, events: list[bytes]) -> None:
        acks = self._producer.send(enumerate(events), TIER)
        if acks.failed:
            raise DeliveryError(f"kafka: {acks.failed} of {len(events)} not acknowledged, e.g. "
                                f"{list(acks.errors.values())[:3]}")

    def close(self) -> None:
        self._producer.close()


class Spool:
    """Batches as NDJSON files named by creation time, written atomically, bounded in bytes."""

    def __init__(self, directory: Path, max_bytes: int):
        self.dir = directory
        self.max_bytes = max_bytes
        directory.mkdir(parents=True, exist_ok=True)

    def files(self) -> list[Path]:
        return sorted(self.dir.glob("batch-*.ndjson"))

    def size(self) -> int:
        return sum(p.stat().st_size for p in self.files())

    def write(self, events: list[bytes], prefix: str = "batch") -> bool:
        body = b"\n".join(events) + b"\n"
        if prefix == "batch" and self.size() + len(body) > self.max_bytes:
            return False
        path = self.dir / f"{prefix}-{time.time_ns():020d}-{uuid.uuid4().hex[:8]}.ndjson"
        tmp = path.with_suffix(".tmp")
        with open(tmp, "wb") as f:
            f.write(body)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)  # a reader never sees half a batch
        return True

    @staticmethod
    def read(path: Path) -> list[bytes]:
        return [line for line in path.read_bytes().split(b"\n") if line]


class Delivery:
    def __init__(self, sender: Sender, spool: Spool | None, *, batch_size: int = MAX_BATCH,
                 max_memory: int = 10_000, retry_max_s: float = 5.0, linger_s: float = 0.2,
                 clock: Callable[[], float] = time.monotonic):
        self._sender = sender
        self._spool = spool
        self._batch_size = batch_size
        self._max_memory = max_memory
        self._retry_max_s = retry_max_s
        self._linger_s = linger_s
        self._first_at = 0.0  # when the oldest queued event arrived
        self._clock = clock
        self._queue: deque[bytes] = deque()
        self._cond = threading.Condition()
        self._stopping = False
        self._retry_at = 0.0
        self._backoff_s = 0.0
        self._spool_full = False
        # Whether spool files may be waiting (left by an earlier run, or spilled since): saves a
        # directory listing each time the thread wakes up.
        self._spooled = spool is not None and bool(spool.files())
        self.delivered = 0
        self.dropped = 0
        self._thread = threading.Thread(target=self._run, name="aforo-mcp-delivery", daemon=True)

    def start(self) -> Delivery:
        self._thread.start()
        return self

    def export_gauges(self) -> None:
        """Read the queue and spool depths at each scrape (this process's only Delivery)."""
        MCP_QUEUED_EVENTS.set_function(lambda: len(self._queue))
        if self._spool is not None:
            MCP_SPOOL_BYTES.set_function(self._spool.size)

    def submit(self, events: list[bytes]) -> None:
        """Never blocks on the endpoint: the relay calls this inline."""
        if not events:
            return
        with self._cond:
            if self._spool_full and len(self._queue) >= self._max_memory:
                self.dropped += len(events)  # nowhere left to keep them: say so rather than grow
                MCP_EVENTS.labels("dropped").inc(len(events))
                log.error("spool full and memory buffer full: dropped %d events", len(events))
                return
            first = not self._queue
            if first:
                self._first_at = self._clock()
            self._queue.extend(events)
            if first or len(self._queue) >= self._batch_size:
                self._cond.notify()  # to start the linger, or to send a full batch now

    def close(self, timeout_s: float = 10.0) -> None:
        """Flush: what is queued goes to the spool, then one last attempt delivers the spool, even
        if the endpoint failed a moment ago (an outage that just ended is the usual case); what it
        cannot take waits there for the next start. Closing again does nothing."""
        with self._cond:
            if self._stopping:
                return
            self._stopping = True
            self._cond.notify()
        self._thread.join(timeout_s)
        self._sender.close()

    # --- the delivery thread ------------------------------------------------------------
    def _down(self) -> bool:
        return self._clock() < self._retry_at

    def _ready(self) -> bool:
        if self._down():  # persist what arrives meanwhile rather than hold it only in memory
            return bool(self._queue) and self._spool is not None and not self._spool_full
        # Linger: one request per batch, not per event, costs the relay (same process) far less.
        return len(self._queue) >= self._batch_size or self._linger_over() or self._has_spool()

    def _linger_over(self) -> bool:
        return bool(self._queue) and self._clock() - self._first_at >= self._linger_s

    def _wait_s(self) -> float | None:
        if self._down():
            return max(0.01, self._retry_at - self._clock())
        return max(0.01, self._first_at + self._linger_s - self._clock()) if self._queue else None

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._stopping and not self._ready():
                    self._cond.wait(self._wait_s())
                stopping = self._stopping
            if stopping:
                # On disk first, so an endpoint that hangs past close()'s wait costs nothing.
                self._spill(self._take(len(self._queue)))
                self._deliver_once()
                return
            if self._down():
                self._spill(self._take(len(self._queue)))
                continue
            self._deliver_once()

    def _has_spool(self) -> bool:
        return self._spooled

    def _take(self, n: int) -> list[bytes]:
        with self._cond:
            return [self._queue.popleft() for _ in range(min(n, len(self._queue)))]

    def _deliver_once(self) -> None:
        """Spooled batches first (they are older), then the queue, until the endpoint fails."""
        if self._spool is not None and self._spooled:
            for path in self._spool.files():
                if not self._send(Spool.read(path), path):
                    return
            self._spooled = False
        while True:
            batch = self._take(self._batch_size)
            if not batch:
                return
            if not self._send(batch, None):
                self._spill(batch)
                return

    def _send(self, batch: list[bytes], path: Path | None) -> bool:
        try:
            self._sender.send(batch)
        except DeliveryError as exc:
            self._backoff_s = min(self._retry_max_s, max(0.2, self._backoff_s * 2))
            self._retry_at = self._clock() + self._backoff_s
            log.warning("delivery failed (%d events), retrying in %.1fs: %s",
                        len(batch), self._backoff_s, exc)
            return False
        except Rejected as exc:
            log.error("endpoint rejected %d events, kept aside in the spool: %s", len(batch), exc)
            MCP_EVENTS.labels("rejected").inc(len(batch))
            if self._spool is not None:
                self._spool.write(batch, prefix="rejected")
        else:
            self.delivered += len(batch)
            MCP_EVENTS.labels("delivered").inc(len(batch))
        self._backoff_s, self._retry_at, self._spool_full = 0.0, 0.0, False
        if path is not None:
            path.unlink(missing_ok=True)
        return True

    def _spill(self, events: list[bytes]) -> None:
        for i in range(0, len(events), self._batch_size):
            chunk = events[i:i + self._batch_size]
            if self._spool is not None and self._spool.write(chunk):
                self._spooled = True
            else:
                self._spool_full = True
                self._keep_or_drop(chunk)

    def _keep_or_drop(self, chunk: list[bytes]) -> None:
        """No room on disk: keep in memory up to max_memory, then drop (and say so loudly)."""
        with self._cond:
            room = max(0, self._max_memory - len(self._queue))
            self._queue.extendleft(reversed(chunk[:room]))
            lost = len(chunk) - room
        if lost > 0:
            self.dropped += lost
            MCP_EVENTS.labels("dropped").inc(lost)
            log.error("spool full: dropped %d events", lost)
