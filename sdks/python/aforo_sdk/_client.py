"""The synchronous client: meter() queues and returns at once; a background thread batches and
delivers. The asyncio client (aio.py) shares everything but the scheduling."""

from __future__ import annotations

import atexit
import logging
import os
import threading
import time
import weakref
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any

import httpx

from aforo_sdk import _context
from aforo_sdk._delivery import DeliveryError, Options, Outbound, Stats, body, report, sdk_headers
from aforo_sdk._events import encode, new_event
from aforo_sdk._metered import Metered
from aforo_sdk._version import __version__

log = logging.getLogger("aforo_sdk")

SDK_NAME = "python"


class Base:
    """Options, event building and the decorator, shared by Aforo and AsyncAforo."""

    def __init__(self, endpoint: str | None = None, api_key: str | None = None, **options: Any):
        self.options = Options(endpoint=endpoint or os.environ.get("AFORO_ENDPOINT", ""),
                               api_key=api_key or os.environ.get("AFORO_API_KEY", ""), **options)
        self._headers = sdk_headers(self.options.api_key, SDK_NAME, __version__)
        self._out = Outbound(self.options)
        self._closed = False

    @property
    def stats(self) -> Stats:
        """Counters: queued, delivered, requests, retries, rejected, dropped, unattributed."""
        return self._out.stats

    def _line(self, type: str, subject: str | None, data: Mapping[str, Any] | None,
              id: str | None, time: datetime | None) -> tuple[str, bytes]:
        if self._closed:
            raise RuntimeError("this Aforo client is closed")
        subject = subject or _context.current().customer
        if not subject:
            raise ValueError("no subject: pass the customer, or meter inside aforo_sdk.context(customer=...)")
        event = new_event(type, subject, data, source=self.options.source, id=id, time=time)
        return event["id"], encode(event)

    def metered(self, type: str, *, customer: str | Callable[..., str | None] | None = None,
                data: Mapping[str, Any] | None = None, quantity: Any = None) -> Metered:
        """A decorator (sync or async functions) and a context manager (`with`/`async with`) that
        meters each call: outcome ok/error, duration_ms, and `quantity` (a number, or a function of
        the result). `customer`: a string, a function of the call's arguments, or the context's."""
        return Metered(self, type, customer, data, quantity)

    def _unattributed(self, what: str) -> None:
        self._out.stats.unattributed += 1
        level = logging.DEBUG if self._out.stats.unattributed > 1 else logging.WARNING  # once is enough
        log.log(level, "not metered (%s): no customer; set one with aforo_sdk.context(customer=...) "
                "(counted in stats.unattributed)", what)


class Aforo(Base):
    """`Aforo(endpoint, api_key, **options)`; see the README for every option."""

    def __init__(self, endpoint: str | None = None, api_key: str | None = None, **options: Any):
        super().__init__(endpoint, api_key, **options)
        self._cond = threading.Condition()
        self._flushing = 0
        self._deadline: float | None = None  # set by close(): the sender gives up after it
        self._thread: threading.Thread | None = None
        self._http = httpx.Client(timeout=self.options.timeout_s)
        ref = weakref.ref(self)
        atexit.register(_close_at_exit, ref)
        os.register_at_fork(after_in_child=lambda: (c := ref()) and c._forked())

    def meter(self, type: str, subject: str | None = None, data: Mapping[str, Any] | None = None, *,
              id: str | None = None, time: datetime | None = None) -> str:
        """Queue one event; returns its id. Raises ValueError at once for an event Aforo would refuse."""
        event_id, line = self._line(type, subject, data, id, time)
        self._put(line)
        return event_id

    def _put(self, line: bytes) -> None:
        errors: list[DeliveryError] = []
        with self._cond:
            if self._thread is None:
                self._start()
            now = _now()
            if not self._out.put(line, now):
                give_up = now + (self.options.block_timeout_s if self.options.overflow == "block" else 0)
                while not self._out.put(line, _now()):
                    left = give_up - _now()
                    if left <= 0:
                        errors = self._out.overflow(line)
                        break
                    self._cond.wait(left)  # the sender notifies when a batch is done
            # Wake the sender only when it has something new to do: a first event to linger
            # over, or a full batch. (Every put would cost each call a notify.)
            if len(self._out.outbox) == 1 or self._out.outbox.full_batch():
                self._cond.notify_all()
        report(self.options, errors)

    def flush(self, timeout_s: float = 10.0) -> bool:
        """Send everything queued now, ignoring the linger; True when nothing is left waiting."""
        deadline = _now() + timeout_s
        with self._cond:
            if self._thread is None and not self._out.idle():
                self._start()
            self._flushing += 1
            self._cond.notify_all()
            try:
                while not self._out.idle() and _now() < deadline:
                    self._cond.wait(deadline - _now())
                return self._out.idle()
            finally:
                self._flushing -= 1

    def close(self, timeout_s: float = 10.0) -> None:
        """Flush, then stop. Without a spool, whatever is undelivered at the deadline is reported
        to on_error as `dropped`; with one it stays on disk for the next start."""
        with self._cond:
            if self._closed:
                return
            self._closed = True
            if self._thread is None and not self._out.idle():
                self._start()
            self._deadline = _now() + timeout_s
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout_s + 1)
        with self._cond:
            errors = self._out.abandon()
        self._http.close()
        report(self.options, errors)

    def __enter__(self) -> Aforo:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- the sender thread ------------------------------------------------------------------
    def _start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="aforo-sdk-sender", daemon=True)
        self._thread.start()

    def _forked(self) -> None:
        """In a forked child the sender thread is gone (and a spool belongs to the parent)."""
        self._cond = threading.Condition()
        self._thread = None
        self._http = httpx.Client(timeout=self.options.timeout_s)

    def _next(self) -> list[bytes] | None:
        """Under the lock: wait until there is something to send; None when closing is done."""
        while True:
            now = _now()
            closing = self._deadline is not None
            if closing and (now >= self._deadline or self._out.idle()):
                return None
            lines = self._out.next_request(now, force=closing or self._flushing > 0)
            if lines is not None:
                return lines
            wait = self._out.wait_s(now)
            if closing:
                wait = min(wait if wait is not None else 1.0, self._deadline - now)
            self._cond.wait(wait)

    def _run(self) -> None:
        while True:
            with self._cond:
                lines = self._next()
            if lines is None:
                return
            try:
                r = self._http.post(self.options.url, content=body(lines), headers=self._headers)
            except httpx.HTTPError as exc:
                with self._cond:
                    errors = self._out.failed(exc, _now())
            else:
                with self._cond:
                    errors = self._out.answered(r.status_code, r.headers.get("retry-after"), r.text[:500],
                                                _now())
                    self._cond.notify_all()  # flushers and blocked producers
            report(self.options, errors)


def _now() -> float:
    return time.monotonic()


def _close_at_exit(ref: weakref.ref) -> None:
    client = ref()
    if client is not None:
        client.close()
