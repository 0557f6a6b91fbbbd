"""The SSE (2024-11-05) proxy driven by the official MCP Python SDK client against FastMCP."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import httpx
import pytest
from mcp import ClientSession
from mcp.client.sse import sse_client
from mcp.types import Implementation

from mcp_proxy.sse import SseParser
from mcp_proxy.sse_transport import split_endpoint

sys.path.insert(0, str(Path(__file__).parent / "fixtures" / "mcp"))
from proxy_support import Collector, call_tools, free_port, process, proxy_argv, server_argv, tool_calls

AGENT = Implementation(name="sse-agent", version="3.0")


def test_parser_handles_split_lines_crlf_comments_and_events():
    parser = SseParser()
    stream = b": ping\nevent: endpoint\r\ndata: /messages/?session_id=1\r\n\r\ndata: {\"a\":\ndata: 1}\n\n"
    got = [ev for i in range(len(stream)) for ev in parser.feed(stream[i:i + 1])]
    assert got == [("endpoint", b"/messages/?session_id=1"), ("message", b'{"a":\n1}')]
    assert parser.at_line_start
    parser.feed(b"data: partial")
    assert not parser.at_line_start


def test_split_endpoint_waits_for_the_whole_event():
    assert split_endpoint(b"event: endpoint\ndata: /m?s=1\n") is None
    assert split_endpoint(b"event: endpoint\ndata: /m?s=1\n\nevent: message\ndata: {}") == (
        "/m?s=1", b"event: message\ndata: {}")


@pytest.fixture(scope="module")
def upstream(tmp_path_factory) -> str:
    port = free_port()
    log = tmp_path_factory.mktemp("upstream") / "server.log"
    with process(server_argv("sse", str(port)), port, log):
        yield f"http://127.0.0.1:{port}/sse"


@pytest.fixture
def proxied(upstream: str, tmp_path: Path):
    collector = Collector()
    port = free_port()
    argv = proxy_argv("sse", tmp_path, endpoint=collector.url, extra=(
        "--upstream", upstream, "--listen", f"127.0.0.1:{port}", "--ping-interval", "0.3"))
    try:
        with process(argv, port, tmp_path / "proxy.out"):
            yield f"http://127.0.0.1:{port}/sse", collector
    finally:
        collector.stop()


async def exercise(url: str) -> list[str]:
    async with sse_client(url) as (read, write), ClientSession(read, write, client_info=AGENT) as session:
        await session.initialize()
        return await call_tools(session, pause_s=0.7)  # idle long enough for keep-alive pings


def test_results_identical_and_every_call_metered(upstream: str, proxied):
    url, collector = proxied
    direct = asyncio.run(exercise(upstream))
    assert asyncio.run(exercise(url)) == direct
    # closing the event stream ends the session
    events = collector.wait_for(lambda ev: any(e["type"] == "mcp.session.end" for e in ev.values()))
    calls = tool_calls(events)
    assert [(c["data"]["tool"], c["data"]["outcome"]) for c in calls] == [
        ("echo", "ok"), ("fail", "tool_error"), ("needs_auth", "protocol_error"), ("big", "ok")]
    assert len({c["data"]["session"] for c in calls}) == 1
    assert all(c["data"]["agent"] == "sse-agent" for c in calls)


def test_endpoint_event_is_the_proxys_and_pings_keep_the_stream_alive(proxied):
    url, _ = proxied
    with httpx.stream("GET", url, timeout=5) as stream:
        lines = stream.iter_lines()
        assert next(lines) == "event: endpoint"
        assert next(lines).startswith("data: /messages/?session_id=")
        assert next(lines) == ""
        assert next(lines) == ": ping"
    unknown = httpx.post(url.replace("/sse", "/messages/?session_id=nope"), json={})
    assert unknown.status_code == 404
