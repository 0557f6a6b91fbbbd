"""What the transports share: a line splitter without a length limit; the guard that feeds
observed copies to a session's meter and the events to delivery without ever letting a metering
failure touch the relay; and, for the two HTTP transports, header forwarding and the server."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import httpx
from starlette.requests import Request

from mcp_proxy.delivery import Delivery
from mcp_proxy.observer import SessionMeter

log = logging.getLogger("aforo.mcp_proxy")

READ_CHUNK = 256 * 1024


async def read_lines(reader: asyncio.StreamReader) -> AsyncIterator[bytes]:
    """Newline-delimited frames, newline included, of any length: StreamReader.readline gives up
    at its 64 KiB limit, and MCP results (file contents, images) are routinely larger."""
    buf = bytearray()
    while chunk := await reader.read(READ_CHUNK):
        start = 0
        while (nl := chunk.find(b"\n", start)) >= 0:
            if buf:
                buf += chunk[start:nl + 1]
                yield bytes(buf)
                buf.clear()
            else:
                yield chunk[start:nl + 1]
            start = nl + 1
        buf += chunk[start:]
    if buf:
        yield bytes(buf)  # a last frame without its newline still reaches the other side


class Metered:
    """One session's meter wired to delivery. Observing is best effort by design: an exception
    here is logged and the message has already been (or will still be) relayed."""

    def __init__(self, meter: SessionMeter, delivery: Delivery,
                 wall: Callable[[], float] = time.time, mono: Callable[[], float] = time.monotonic):
        self.meter = meter
        self._delivery = delivery
        self._wall = wall
        self._mono = mono

    def client(self, frame: bytes) -> None:
        self._guard(self.meter.from_client, frame)

    def server(self, frame: bytes) -> None:
        if self.meter.awaiting_server:  # nothing pending: no need to parse what nobody meters
            self._guard(self.meter.from_server, frame)

    def refused(self, frame: bytes, http_status: int) -> None:
        self._guard(lambda f, w, m: self.meter.refused(f, http_status, w, m), frame)

    def expire(self) -> None:
        self._guard(lambda _f, w, m: self.meter.expire(w, m), b"")

    def close(self) -> None:
        self._guard(lambda _f, w, m: self.meter.close(w, m), b"")

    def _guard(self, observe: Callable[[bytes, float, float], list[bytes]], frame: bytes) -> None:
        try:
            self._delivery.submit(observe(frame, self._wall(), self._mono()))
        except Exception:
            log.exception("metering failed; the message was relayed regardless")


async def expire_periodically(sessions: Callable[[], list[Metered]], every_s: float = 1.0) -> None:
    while True:
        await asyncio.sleep(every_s)
        for session in sessions():
            session.expire()


# --- HTTP transports ---------------------------------------------------------------------
# Hop-by-hop headers belong to each connection; accept-encoding is dropped so the copy we observe
# is plain JSON (MCP messages are small, and MCP servers do not compress event streams anyway).
_REQUEST_DROP = frozenset({"host", "content-length", "connection", "keep-alive", "transfer-encoding",
                           "te", "upgrade", "proxy-connection", "accept-encoding"})
_RESPONSE_DROP = frozenset({"content-length", "connection", "keep-alive", "transfer-encoding", "upgrade"})


def request_headers(request: Request) -> list[tuple[str, str]]:
    """The client's headers for the upstream: Mcp-Session-Id, MCP-Protocol-Version, Accept,
    Authorization, Last-Event-ID... all of them but the hop-by-hop ones."""
    return [(k, v) for k, v in request.headers.items() if k.lower() not in _REQUEST_DROP]


def response_headers(upstream: httpx.Response) -> list[tuple[bytes, bytes]]:
    """Every upstream response header, repeated ones included, but the hop-by-hop ones."""
    return [(k.encode("latin-1"), v.encode("latin-1"))
            for k, v in upstream.headers.multi_items() if k.lower() not in _RESPONSE_DROP]


async def serve(app, host: str, port: int, cleanup: Callable[[], Awaitable[None]]) -> None:
    """Serve an HTTP transport's ASGI app until SIGINT/SIGTERM. `cleanup` (end the open sessions,
    deliver what is queued) runs at the lifespan shutdown, after the connections have closed:
    uvicorn re-raises the signal as soon as it has served, which ends the process right there."""
    import uvicorn

    async def with_lifespan(scope, receive, send) -> None:
        if scope["type"] != "lifespan":
            await app(scope, receive, send)
            return
        while (message := await receive())["type"] != "lifespan.shutdown":
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
        try:
            await cleanup()
        finally:
            await send({"type": "lifespan.shutdown.complete"})

    config = uvicorn.Config(with_lifespan, host=host, port=port, log_level="warning", lifespan="on",
                            timeout_graceful_shutdown=2)  # open event streams would hold shutdown forever
    await uvicorn.Server(config).serve()
