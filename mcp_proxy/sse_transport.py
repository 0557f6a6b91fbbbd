"""SSE transport (MCP 2024-11-05): the client opens a GET event stream and is told, by an
`endpoint` event, where to POST its messages. The proxy opens its own stream to the upstream
server per client, answers with an `endpoint` of its own, and relays everything else byte for
byte: upstream events to the client, the client's POSTs to the upstream's POST URL."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from urllib.parse import urljoin

import httpx
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from mcp_proxy.relay import Metered, log, request_headers, response_headers
from mcp_proxy.sse import SseParser

PING = b": ping\n"  # a comment line: ignored by every SSE reader, keeps idle connections open
MESSAGES_PATH = "/messages/"


@dataclass
class _Session:
    post_url: str  # the upstream's POST URL for this stream
    metered: Metered


def split_endpoint(buf: bytes) -> tuple[str, bytes] | None:
    """The upstream's first event must be `endpoint`: its data (the POST URL) and the bytes after
    it, which are relayed as they are. None while the event is incomplete."""
    parser = SseParser()
    consumed = 0
    for line in buf.splitlines(keepends=True):
        if not line.endswith(b"\n"):
            return None
        consumed += len(line)
        for event, data in parser.feed(line):
            if event == "endpoint":
                return data.decode(), buf[consumed:]
    return None


class SseProxy:
    def __init__(self, upstream: str, new_session: Callable[[], Metered], ping_s: float = 15.0):
        self._upstream = upstream
        self._new_session = new_session
        self._ping_s = ping_s
        self._client = httpx.AsyncClient(timeout=httpx.Timeout(None, connect=10.0))
        self.sessions: dict[str, _Session] = {}

    async def __call__(self, scope, receive, send) -> None:
        request = Request(scope, receive)
        handler = self._stream if request.method == "GET" else self._message
        await (await handler(request))(scope, receive, send)

    async def _stream(self, request: Request) -> Response:
        try:
            get = self._client.build_request("GET", self._upstream, headers=request_headers(request))
            upstream = await self._client.send(get, stream=True)
        except httpx.HTTPError as exc:
            log.warning("upstream unreachable: %r", exc)
            return Response(b"upstream unreachable", 502)
        if upstream.status_code != 200:
            body = await upstream.aread()
            await upstream.aclose()
            return Response(body, upstream.status_code, media_type=upstream.headers.get("content-type"))
        sid = uuid.uuid4().hex
        metered = self._new_session()
        metered.meter.session_id = f"mcpx-{sid}"
        return StreamingResponse(self._relay(upstream, sid, metered, request), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    async def _relay(self, upstream: httpx.Response, sid: str, metered: Metered,
                     request: Request) -> AsyncIterator[bytes]:
        # Bounded: a slow client slows the upstream read instead of filling our memory.
        chunks: asyncio.Queue[bytes | None] = asyncio.Queue(maxsize=16)
        pump = asyncio.create_task(_pump(upstream, chunks))
        parser, head = SseParser(), b""
        try:
            while (chunk := await self._next(chunks, parser)) is not None:
                if chunk is PING:
                    yield PING
                    continue
                if sid not in self.sessions:  # still waiting for the upstream's endpoint event
                    head += chunk
                    if (found := split_endpoint(head)) is None:
                        continue
                    post_url, chunk = found
                    self.sessions[sid] = _Session(urljoin(self._upstream, post_url), metered)
                    yield f"event: endpoint\ndata: {request.url.path.rsplit('/', 1)[0]}{MESSAGES_PATH}" \
                          f"?session_id={sid}\n\n".encode()
                if not chunk:
                    continue
                yield chunk
                for event, data in parser.feed(chunk):
                    if event == "message":
                        metered.server(data)
        finally:
            pump.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await pump
            await upstream.aclose()
            self.sessions.pop(sid, None)
            metered.close()

    async def _next(self, chunks: asyncio.Queue[bytes | None], parser: SseParser) -> bytes | None:
        """The next upstream chunk, or a ping after ping_s of silence when it cannot split a line."""
        while True:
            try:
                return await asyncio.wait_for(chunks.get(), self._ping_s)
            except TimeoutError:
                if parser.at_line_start:
                    return PING

    async def _message(self, request: Request) -> Response:
        session = self.sessions.get(request.query_params.get("session_id", ""))
        if session is None or request.method != "POST":
            return Response(b"Could not find session", 404)
        body = await request.body()
        session.metered.client(body)
        try:
            upstream = await self._client.post(session.post_url, headers=request_headers(request),
                                               content=body)
        except httpx.HTTPError as exc:
            log.warning("upstream unreachable: %r", exc)
            return Response(b"upstream unreachable", 502)
        if upstream.status_code >= 400:
            session.metered.refused(body, upstream.status_code)
        response = Response(upstream.content, upstream.status_code)
        response.raw_headers = [*response_headers(upstream)]
        response.raw_headers.append((b"content-length", str(len(upstream.content)).encode()))
        return response

    async def aclose(self) -> None:
        """End every open session (their streams may not have unwound yet)."""
        for sid, session in list(self.sessions.items()):
            self.sessions.pop(sid, None)
            session.metered.close()
        await self._client.aclose()


async def _pump(upstream: httpx.Response, chunks: asyncio.Queue[bytes | None]) -> None:
    """Reads the upstream stream into a queue, so waiting for a chunk can time out (for pings)
    without cancelling a read in the middle."""
    try:
        async for chunk in upstream.aiter_raw():
            await chunks.put(chunk)
    except httpx.HTTPError as exc:
        log.warning("upstream stream ended: %r", exc)
    finally:
        await chunks.put(None)
