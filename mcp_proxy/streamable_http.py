"""Streamable HTTP transport (MCP 2025-03-26 and 2025-06-18): one endpoint for POST, GET and
DELETE, relayed to the upstream server request by request. Each client keeps its own upstream
session: the proxy passes `Mcp-Session-Id` through and never pools sessions."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from urllib.parse import urlsplit

import httpx
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from mcp_proxy.relay import Metered, log, request_headers, response_headers
from mcp_proxy.sse import SseParser

SESSION_HEADER = "mcp-session-id"


def upstream_url(upstream: str, path: str, query: str) -> str:
    """Same path on the upstream origin: a client points at http://proxy/mcp for upstream /mcp
    (and OAuth metadata or other paths of the server keep working)."""
    parts = urlsplit(upstream)
    return f"{parts.scheme}://{parts.netloc}{path}" + (f"?{query}" if query else "")


class StreamableHttpProxy:
    def __init__(self, upstream: str, new_session: Callable[[], Metered]):
        self._upstream = upstream
        self._new_session = new_session
        # No read timeout: a GET stream may legitimately stay silent for hours.
        self._client = httpx.AsyncClient(timeout=httpx.Timeout(None, connect=10.0))
        self.sessions: dict[str, Metered] = {}

    async def __call__(self, scope, receive, send) -> None:
        response = await self.handle(Request(scope, receive))
        await response(scope, receive, send)

    async def handle(self, request: Request) -> Response:
        body = await request.body()
        sid = request.headers.get(SESSION_HEADER)
        metered, ephemeral = self._session(sid)
        if request.method == "POST":
            metered.client(body)
        headers = request_headers(request)
        try:
            upstream = await self._client.send(self._client.build_request(
                request.method, upstream_url(self._upstream, request.url.path, request.url.query),
                headers=headers, content=body), stream=True)
        except httpx.HTTPError as exc:
            log.warning("upstream unreachable: %r", exc)
            if request.method == "POST":
                metered.refused(body, 502)
            if ephemeral:
                self.end(metered)
            return Response(b'{"error": "upstream unreachable"}', 502, media_type="application/json")
        new_sid = upstream.headers.get(SESSION_HEADER)
        if ephemeral and new_sid:
            metered.meter.session_id = new_sid
            self.sessions[new_sid] = metered
            ephemeral = False
        ends = ephemeral or (bool(sid) and (
            upstream.status_code == 404 or (request.method == "DELETE" and upstream.is_success)))

        def done() -> None:
            if request.method == "POST" and upstream.status_code >= 400:
                metered.refused(body, upstream.status_code)  # no JSON-RPC answer is coming
            if ends:  # one-off, deleted, or expired on the server (404): the client starts anew
                self.end(metered)

        response = StreamingResponse(self._relay(upstream, metered, done), status_code=upstream.status_code)
        response.raw_headers = response_headers(upstream)
        return response

    def _session(self, sid: str | None) -> tuple[Metered, bool]:
        """A request outside any session (initialize, or a stateless server) gets a meter of its
        own, ended with its response unless the server names a session for it. A session id we
        have not seen (the proxy restarted) is adopted as it is."""
        if sid is None:
            return self._new_session(), True
        if sid not in self.sessions:
            self.sessions[sid] = self._new_session()
            self.sessions[sid].meter.session_id = sid
        return self.sessions[sid], False

    async def _relay(self, upstream: httpx.Response, metered: Metered,
                     done: Callable[[], None]) -> AsyncIterator[bytes]:
        """The upstream body chunk by chunk as it arrives; observed on a copy after each yield."""
        sse = upstream.headers.get("content-type", "").startswith("text/event-stream")
        parser, body = SseParser(), bytearray()
        try:
            async for chunk in upstream.aiter_raw():
                yield chunk
                if sse:
                    for event, data in parser.feed(chunk):
                        if event == "message":
                            metered.server(data)
                elif metered.meter.awaiting_server:
                    body += chunk
            if body:
                metered.server(bytes(body))
        finally:
            await upstream.aclose()
            done()

    def end(self, metered: Metered) -> None:
        self.sessions.pop(metered.meter.session_id, None)
        metered.close()

    async def aclose(self) -> None:
        for metered in list(self.sessions.values()):
            self.end(metered)
        await self._client.aclose()


