"""The asyncio client: the same queue, batching, retries and spool as `Aforo`, delivered by a
task on the running event loop with httpx's AsyncClient. meter() stays a plain, non-blocking
call (usable from sync code running on the loop); flush() and aclose() are awaited."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Mapping
from datetime import datetime
from typing import Any

import httpx

from aforo_sdk._client import Base, _now
from aforo_sdk._delivery import body, report


class AsyncAforo(Base):
    """`async with AsyncAforo(endpoint, api_key) as aforo: aforo.meter(...)`. Overflow policy
    is always `drop` here: meter() cannot block the event loop."""

    def __init__(self, endpoint: str | None = None, api_key: str | None = None, **options: Any):
        if options.get("overflow", "drop") != "drop":
            raise ValueError("AsyncAforo cannot block the event loop: overflow must be 'drop'")
        super().__init__(endpoint, api_key, **options)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task | None = None
        self._wake: asyncio.Event | None = None
        self._changed: asyncio.Event | None = None
        self._lock = threading.Lock()  # meter() may be called from other threads too
        self._flushing = 0
        self._deadline: float | None = None
        self._http: httpx.AsyncClient | None = None

    def meter(self, type: str, subject: str | None = None, data: Mapping[str, Any] | None = None, *,
              id: str | None = None, time: datetime | None = None) -> str:
        """Queue one event; returns its id. Call it on the loop's thread, or from any thread
        once the client has been started on a loop (`async with`, or a first meter() there)."""
        event_id, line = self._line(type, subject, data, id, time)
        with self._lock:
            errors = [] if self._out.put(line, _now()) else self._out.overflow(line)
        self._poke()
        report(self.options, errors)
        return event_id

    def _poke(self) -> None:
        if self._task is None:
            self._start()
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is self._loop:
            self._wake.set()
        else:
            self._loop.call_soon_threadsafe(self._wake.set)

    def _start(self) -> None:
        self._loop = asyncio.get_running_loop()  # RuntimeError outside a loop: say where it must run
        self._wake = asyncio.Event()
        self._changed = asyncio.Event()
        self._http = httpx.AsyncClient(timeout=self.options.timeout_s)
        self._task = self._loop.create_task(self._run(), name="aforo-sdk-sender")

    async def __aenter__(self) -> AsyncAforo:
        if self._task is None:
            self._start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def flush(self, timeout_s: float = 10.0) -> bool:
        """Send everything queued now; True when nothing is left waiting."""
        if self._task is None:
            if self._out.idle():
                return True
            self._start()
        deadline = _now() + timeout_s
        self._flushing += 1
        self._wake.set()
        try:
            while not self._out.idle() and _now() < deadline:
                self._changed.clear()
                try:
                    await asyncio.wait_for(self._changed.wait(), deadline - _now())
                except asyncio.TimeoutError:
                    break
            return self._out.idle()
        finally:
            self._flushing -= 1

    async def aclose(self, timeout_s: float = 10.0) -> None:
        if self._closed:
            return
        self._closed = True
        if self._task is None and not self._out.idle():
            self._start()
        if self._task is not None:
            self._deadline = _now() + timeout_s
            self._wake.set()
            try:
                await asyncio.wait_for(asyncio.shield(self._task), timeout_s + 1)
            except asyncio.TimeoutError:
                self._task.cancel()
            await self._http.aclose()
        with self._lock:
            errors = self._out.abandon()
        report(self.options, errors)

    async def _run(self) -> None:
        while True:
            lines = await self._next()
            if lines is None:
                return
            try:
                r = await self._http.post(self.options.url, content=body(lines), headers=self._headers)
            except httpx.HTTPError as exc:
                with self._lock:
                    errors = self._out.failed(exc, _now())
            else:
                with self._lock:
                    errors = self._out.answered(r.status_code, r.headers.get("retry-after"), r.text[:500],
                                                _now())
            self._changed.set()
            report(self.options, errors)

    async def _next(self) -> list[bytes] | None:
        while True:
            now = _now()
            closing = self._deadline is not None
            with self._lock:
                if closing and (now >= self._deadline or self._out.idle()):
                    return None
                lines = self._out.next_request(now, force=closing or self._flushing > 0)
                wait = self._out.wait_s(now)
            if lines is not None:
                return lines
            if closing:
                wait = min(wait if wait is not None else 1.0, self._deadline - now)
            self._wake.clear()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._wake.wait(), wait)
