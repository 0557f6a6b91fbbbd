"""The streamable HTTP proxy driven by the official MCP Python SDK client against FastMCP."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import httpx
import pytest
from mcp import ClientSession
from mcp.client.streamable_http import streamable_http_client
from mcp.types import Implementation

sys.path.insert(0, str(Path(__file__).parent / "fixtures" / "mcp"))
from proxy_support import Collector, call_tools, free_port, process, proxy_argv, server_argv, tool_calls

AGENT = Implementation(name="http-agent", version="2.0")


@pytest.fixture(scope="module", params=["sse", "json"])
def upstream(request, tmp_path_factory) -> str:
    """The server answering POSTs with an SSE stream (FastMCP's default), or with plain JSON."""
    port = free_port()
    log = tmp_path_factory.mktemp("upstream") / "server.log"
    with process(server_argv("streamable-http", str(port), request.param), port, log):
        yield f"http://127.0.0.1:{port}/mcp"


@pytest.fixture
def proxied(upstream: str, tmp_path: Path):
    collector = Collector()
    port = free_port()
    argv = proxy_argv("streamable-http", tmp_path, endpoint=collector.url,
                      extra=("--upstream", upstream, "--listen", f"127.0.0.1:{port}"))
    try:
        with process(argv, port, tmp_path / "proxy.out"):
            yield f"http://127.0.0.1:{port}/mcp", collector
    finally:
        collector.stop()


async def exercise(url: str) -> list[str]:
    async with streamable_http_client(url) as (read, write, _sid), \
            ClientSession(read, write, client_info=AGENT) as session:
        await session.initialize()
        return await call_tools(session)


def test_results_identical_and_every_call_metered(upstream: str, proxied):
    url, collector = proxied
    direct = asyncio.run(exercise(upstream))
    assert asyncio.run(exercise(url)) == direct
    # the client's DELETE on close ends the session
    events = collector.wait_for(lambda ev: any(e["type"] == "mcp.session.end" for e in ev.values()))
    calls = tool_calls(events)
    assert [(c["data"]["tool"], c["data"]["outcome"]) for c in calls] == [
        ("echo", "ok"), ("fail", "tool_error"), ("needs_auth", "protocol_error"), ("big", "ok")]
    [start] = [e for e in events.values() if e["type"] == "mcp.session.start"]
    session = start["data"]["session"]
    assert not session.startswith("mcpx-")  # the server's Mcp-Session-Id
    assert all(c["data"]["session"] == session and c["data"]["agent"] == "http-agent" for c in calls)
    assert calls[3]["data"]["response_bytes"] > 5 << 20


def test_two_clients_keep_their_own_sessions(proxied):
    url, collector = proxied

    async def both() -> None:
        await asyncio.gather(exercise(url), exercise(url))

    asyncio.run(both())
    events = collector.wait_for(lambda ev: sum(e["type"] == "mcp.session.end" for e in ev.values()) == 2)
    sessions = {c["data"]["session"] for c in tool_calls(events)}
    assert len(sessions) == 2 and len(tool_calls(events)) == 8


def test_expired_session_and_unsupported_method_pass_through(upstream: str, proxied):
    url, collector = proxied
    call = {"jsonrpc": "2.0", "id": 7, "method": "tools/call", "params": {"name": "echo"}}
    headers = {"Accept": "application/json, text/event-stream", "Mcp-Session-Id": "expired",
               "MCP-Protocol-Version": "2025-06-18"}
    got = []
    for target in (upstream, url):
        expired = httpx.post(target, json=call, headers=headers)
        unsupported = httpx.put(target, content=b"", headers={"Accept": headers["Accept"]})
        got.append((expired.status_code, expired.content, unsupported.status_code,
                    unsupported.headers.get("allow")))
    assert got[0] == got[1] and got[0][0] == 404 and got[0][2] == 405, got
    # the refused call is metered as a protocol error, with the HTTP status
    events = collector.wait_for(lambda ev: len(tool_calls(ev)) == 1)
    [refused] = tool_calls(events)
    assert refused["data"]["outcome"] == "protocol_error" and refused["data"]["http_status"] == 404
