"""What the sync and asyncio clients share, free of I/O scheduling: the queue (in memory, or a
spool on disk), batching, what an answer from Aforo means, and the backoff between attempts.

Answers: 2xx delivered; 408/425/429/5xx and network errors retried with exponential backoff and
full jitter, waiting at least `Retry-After`; 400/413 for a batch of several events split it in
halves (so one bad event cannot sink its neighbours); any other 4xx, or 400/413 for one event,
is a rejection: reported to `on_error`, kept in the spool's `rejected-*.ndjson` when there is a
spool, and never retried.
"""

from __future__ import annotations

import contextlib
import email.utils
import logging
import os
import random
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger("aforo_sdk")

RETRYABLE = frozenset({408, 425, 429, 500, 502, 503, 504})
SPLITTABLE = frozenset({400, 413})
MAX_BATCH_EVENTS = 1000  # Aforo's limit per request
MAX_REQUEST_BYTES = 1 << 20


class DeliveryError(Exception):
    """Events that will not reach Aforo from this process: `reason` is `rejected` (Aforo refused
    them; resending cannot help), `dropped` (retries exhausted or the client closed without a
    spool) or `overflow` (the queue was full). `lines` are the encoded events."""

    def __init__(self, reason: str, lines: list[bytes], detail: str, status: int | None = None):
        super().__init__(f"{len(lines)} events {reason}: {detail}")
        self.reason = reason
        self.lines = lines
        self.detail = detail
        self.status = status


@dataclass(frozen=True)
class Options:
    endpoint: str
    api_key: str
    source: str = "sdk/python"
    batch_size: int = 100
    linger_s: float = 1.0
    max_queue: int = 10_000
    overflow: str = "drop"
    block_timeout_s: float = 5.0
    max_retries: int = 10
    backoff_base_s: float = 0.2
    backoff_max_s: float = 30.0
    timeout_s: float = 10.0
    spool_dir: str | os.PathLike | None = None
    spool_max_bytes: int = 256 << 20
    on_error: Callable[[DeliveryError], None] | None = None

    def __post_init__(self) -> None:
        if not self.endpoint:
            raise ValueError("endpoint is required (or set AFORO_ENDPOINT), e.g. http://127.0.0.1:8080")
        if not self.api_key:
            raise ValueError("api_key is required (or set AFORO_API_KEY): `aforo keys create --tenant T`")
        if not 1 <= self.batch_size <= MAX_BATCH_EVENTS:
            raise ValueError(f"batch_size must be between 1 and {MAX_BATCH_EVENTS}")
        if self.overflow not in ("drop", "block"):
            raise ValueError("overflow must be 'drop' or 'block'")
        if self.max_queue < 1 or self.max_retries < 0 or self.linger_s < 0:
            raise ValueError("max_queue must be positive, max_retries and linger_s not negative")

    @property
    def url(self) -> str:
        base = self.endpoint.rstrip("/")
        return base if base.endswith("/v1/events") else base + "/v1/events"


def sdk_headers(api_key: str, name: str, version: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {api_key}", "Content-Type": "application/cloudevents-batch+json",
            "Aforo-SDK": f"{name}/{version}", "User-Agent": f"aforo-sdk-{name}/{version}"}


def body(lines: list[bytes]) -> bytes:
    return b"[" + b",".join(lines) + b"]"


def retry_after_s(value: str | None) -> float | None:
    """`Retry-After` as seconds from now: delta-seconds or an HTTP date."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        return max(0.0, email.utils.parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError):
        return None


def backoff_s(attempt: int, base: float, cap: float, retry_after: float | None,
              rnd: Callable[[], float] = random.random) -> float:
    """Full jitter (uniform in [0, min(cap, base·2^attempt)]), and never sooner than Retry-After."""
    delay = rnd() * min(cap, base * 2 ** min(attempt, 32))
    return delay if retry_after is None else max(delay, retry_after)


# --- queues -----------------------------------------------------------------------------------

class MemoryOutbox:
    """A bounded deque; what is taken is the caller's to deliver."""

    def __init__(self, max_queue: int, batch_size: int):
        self._queue: deque[bytes] = deque()
        self._max = max_queue
        self._batch = batch_size
        self.first_at = 0.0  # when the oldest waiting event arrived (monotonic)

    def __len__(self) -> int:
        return len(self._queue)

    def put(self, line: bytes, now: float) -> bool:
        if len(self._queue) >= self._max:
            return False
        if not self._queue:
            self.first_at = now
        self._queue.append(line)
        return True

    def full_batch(self) -> bool:
        return len(self._queue) >= self._batch

    def take(self) -> tuple[list[bytes], object] | None:
        lines = _take(self._queue, self._batch)
        return (lines, None) if lines else None

    def done(self, token: object) -> None:
        pass

    def drain(self) -> list[bytes]:
        lines = list(self._queue)
        self._queue.clear()
        return lines


def _take(queue: deque[bytes], limit: int) -> list[bytes]:
    lines: list[bytes] = []
    size = 2
    while queue and len(lines) < limit and (not lines or size + len(queue[0]) + 1 <= MAX_REQUEST_BYTES):
        line = queue.popleft()
        lines.append(line)
        size += len(line) + 1
    return lines


class SpoolLocked(RuntimeError):
    pass


class SpoolOutbox:
    """The queue on disk: every event is appended to the head segment before meter() returns, so
    it survives the process exiting or being killed (not a machine crash: there is no fsync per
    event). A segment holds one batch; it is deleted once Aforo acknowledged it. Segments left by
    an earlier run are sent first (an event that was delivered just before a crash is sent again:
    a duplicate in the ledger, never a second charge). One process per spool directory (a lock)."""

    def __init__(self, directory: str | os.PathLike, max_bytes: int, batch_size: int):
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self._lock = _lock(self.dir / ".lock")
        self._max = max_bytes
        self._batch = batch_size
        self._sealed: deque[Path] = deque(sorted(self.dir.glob("seg-*.ndjson")))
        self._bytes = sum(p.stat().st_size for p in self._sealed)
        self._seq = max((int(p.stem[4:]) for p in self._sealed), default=0) + 1
        self._head: int | None = None  # file descriptor
        self._head_path: Path | None = None
        self._head_count = 0
        self._head_bytes = 0
        self.first_at = 0.0

    def __len__(self) -> int:
        return self._head_count + len(self._sealed)  # sealed segments count once: enough for "empty?"

    def _path(self, prefix: str) -> Path:
        self._seq += 1
        return self.dir / f"{prefix}-{self._seq:020d}.ndjson"

    def put(self, line: bytes, now: float) -> bool:
        size = len(line) + 1
        if self._bytes + size > self._max:
            return False
        if self._head_count and (self._head_count >= self._batch
                                 or self._head_bytes + size + 2 > MAX_REQUEST_BYTES):
            self._seal()
        if self._head is None:
            self._head_path = self._path("seg")
            self._head = os.open(self._head_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
            self.first_at = now
        os.write(self._head, line + b"\n")
        self._head_count += 1
        self._head_bytes += size
        self._bytes += size
        return True

    def full_batch(self) -> bool:
        return bool(self._sealed) or self._head_count >= self._batch

    def _seal(self) -> None:
        if self._head is not None:
            os.close(self._head)
            self._sealed.append(self._head_path)
            self._head, self._head_path, self._head_count, self._head_bytes = None, None, 0, 0

    def take(self) -> tuple[list[bytes], object] | None:
        if not self._sealed:
            self._seal()
        if not self._sealed:
            return None
        path = self._sealed[0]
        # A crash can leave a last line half written: only newline-terminated lines are events.
        lines = [line for line in path.read_bytes().split(b"\n")[:-1] if line]
        return lines, path

    def done(self, token: object) -> None:
        path = self._sealed.popleft()
        assert path == token
        with contextlib.suppress(FileNotFoundError):
            self._bytes -= path.stat().st_size
            path.unlink()

    def reject(self, lines: list[bytes]) -> Path:
        path = self._path("rejected")
        path.write_bytes(b"".join(line + b"\n" for line in lines))
        return path

    def drain(self) -> list[bytes]:
        return []  # everything waiting is on disk already

    def close(self) -> None:
        if self._head is not None:
            os.close(self._head)
            self._head = None
        self._lock.close()


def _lock(path: Path):
    f = open(path, "a+")  # noqa: SIM115 - held open for the life of the spool
    try:
        import fcntl
        fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except ImportError:  # no flock on this platform: one process per directory is on the user
        pass
    except OSError:
        f.close()
        raise SpoolLocked(f"spool directory {path.parent} is used by another process; "
                          "give each process its own spool_dir") from None
    return f


# --- the state machine ------------------------------------------------------------------------

@dataclass
class Stats:
    queued: int = 0
    delivered: int = 0
    requests: int = 0
    retries: int = 0
    rejected: int = 0
    dropped: int = 0
    unattributed: int = 0  # calls metered by middleware/decorators/AI wrappers with no customer


@dataclass
class _Work:
    token: object
    parts: deque[list[bytes]]
    attempt: int = 0
    not_before: float = 0.0


@dataclass
class Outbound:
    """Not thread-safe: the clients call it under their own lock. Methods return the errors to
    report, which the clients hand to `on_error` outside the lock."""

    options: Options
    rnd: Callable[[], float] = random.random
    stats: Stats = field(default_factory=Stats)

    def __post_init__(self) -> None:
        o = self.options
        self.spool = SpoolOutbox(o.spool_dir, o.spool_max_bytes, o.batch_size) if o.spool_dir else None
        self.outbox = self.spool if self.spool is not None else MemoryOutbox(o.max_queue, o.batch_size)
        self._work: _Work | None = None

    def put(self, line: bytes, now: float) -> bool:
        if self.outbox.put(line, now):
            self.stats.queued += 1
            return True
        return False

    def idle(self) -> bool:
        return self._work is None and not len(self.outbox)

    def _ready(self, now: float, force: bool) -> bool:
        return len(self.outbox) > 0 and (
            force or self.outbox.full_batch() or now - self.outbox.first_at >= self.options.linger_s)

    def next_request(self, now: float, force: bool) -> list[bytes] | None:
        """The events to send now, if any (force: flushing, so no lingering)."""
        if self._work is None and self._ready(now, force):
            taken = self.outbox.take()
            if taken:
                self._work = _Work(taken[1], deque([taken[0]]))
        if self._work is not None and now >= self._work.not_before:
            return self._work.parts[0]
        return None

    def wait_s(self, now: float) -> float | None:
        """How long until next_request may have something; None: until an event is put."""
        if self._work is not None:
            return max(0.0, self._work.not_before - now)
        if len(self.outbox):
            return max(0.0, self.outbox.first_at + self.options.linger_s - now)
        return None

    def answered(self, status: int, retry_after: str | None, detail: str, now: float) -> list[DeliveryError]:
        work = self._work
        assert work is not None
        self.stats.requests += 1
        lines = work.parts[0]
        if 200 <= status < 300:
            self.stats.delivered += len(lines)
            return self._part_done()
        if status in RETRYABLE:
            return self._retry(f"HTTP {status}: {detail}", retry_after_s(retry_after), now)
        if status in SPLITTABLE and len(lines) > 1:
            half = len(lines) // 2
            work.parts.popleft()
            work.parts.extendleft([lines[half:], lines[:half]])
            return []
        self.stats.rejected += len(lines)
        where = ""
        if self.spool is not None:
            where = f" (kept in {self.spool.reject(lines)})"
        log.error("Aforo refused %d events with HTTP %s%s: %s", len(lines), status, where, detail)
        return [DeliveryError("rejected", lines, detail + where, status), *self._part_done()]

    def failed(self, exc: BaseException, now: float) -> list[DeliveryError]:
        """The request did not get an answer (connection refused, reset, timeout)."""
        self.stats.requests += 1
        return self._retry(f"{type(exc).__name__}: {exc}", None, now)

    def _part_done(self) -> list[DeliveryError]:
        work = self._work
        work.parts.popleft()
        work.attempt = 0
        if not work.parts:
            self.outbox.done(work.token)
            self._work = None
        return []

    def _retry(self, why: str, retry_after: float | None, now: float) -> list[DeliveryError]:
        work = self._work
        o = self.options
        if work.attempt >= o.max_retries and self.spool is None:
            lines = [line for part in work.parts for line in part]
            self.stats.dropped += len(lines)
            self._work = None
            log.error("dropped %d events after %d retries: %s", len(lines), o.max_retries, why)
            return [DeliveryError("dropped", lines, f"after {o.max_retries} retries: {why}")]
        # With a spool nothing is given up: the batch stays on disk and is retried at the cap.
        delay = backoff_s(work.attempt, o.backoff_base_s, o.backoff_max_s, retry_after, self.rnd)
        work.attempt += 1
        work.not_before = now + delay
        self.stats.retries += 1
        log.warning("Aforo did not take %d events (%s); retrying in %.2fs", len(work.parts[0]), why, delay)
        return []

    def abandon(self) -> list[DeliveryError]:
        """On close, past the flush deadline: what is lost (nothing, with a spool)."""
        if self.spool is not None:
            self.spool.close()
            return []
        lines = [line for part in (self._work.parts if self._work else ()) for line in part]
        lines += self.outbox.drain()
        self._work = None
        if not lines:
            return []
        self.stats.dropped += len(lines)
        log.error("closing with %d events undelivered and no spool_dir: they are lost", len(lines))
        return [DeliveryError("dropped", lines, "the client closed before Aforo took them")]

    def overflow(self, line: bytes) -> list[DeliveryError]:
        self.stats.dropped += 1
        where = "spool" if self.spool is not None else "queue"
        log.error("Aforo %s full: dropped an event (see overflow / max_queue / spool_max_bytes)", where)
        return [DeliveryError("overflow", [line], f"the {where} is full")]


def report(options: Options, errors: list[DeliveryError]) -> None:
    if options.on_error is None:
        return
    for error in errors:
        try:
            options.on_error(error)
        except Exception:
            log.exception("on_error callback failed")
