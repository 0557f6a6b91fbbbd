"""SIGTERM on an HTTP-transport proxy: its open sessions end and everything queued is delivered
before it exits (uvicorn re-raises the signal once it has served, ending the process there)."""

from __future__ import annotations

import signal
import sys
from pathlib import Path

import httpx
import pytest

sys.path.insert(0, str(Path(__file__).parent / "fixtures" / "mcp"))
from proxy_support import Collector, free_port, process, proxy_argv, server_argv, tool_calls

INIT = {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
    "protocolVersion": "2025-06-18", "capabilities": {},
    "clientInfo": {"name": "term-agent", "version": "1"}}}
INITIALIZED = {"jsonrpc": "2.0", "method": "notifications/initialized"}
CALL = {"jsonrpc": "2.0", "id": 2, "method": "tools/call",
        "params": {"name": "echo", "arguments": {"text": "x"}}}
ACCEPT = {"Accept": "application/json, text/event-stream", "MCP-Protocol-Version": "2025-06-18"}


def _open_streamable_session(url: str) -> None:
    first = httpx.post(url, json=INIT, headers=ACCEPT)
    headers = {**ACCEPT, "Mcp-Session-Id": first.headers["mcp-session-id"]}
    httpx.post(url, json=INITIALIZED, headers=headers)
    assert "echo: x" in httpx.post(url, json=CALL, headers=headers).text  # and no DELETE: still open


@pytest.mark.parametrize("transport", ["streamable-http", "sse"])
def test_sigterm_ends_open_sessions_and_delivers_them(transport: str, tmp_path: Path):
    upstream_port, port = free_port(), free_port()
    collector = Collector()
    upstream = f"http://127.0.0.1:{upstream_port}/" + ("mcp" if transport == "streamable-http" else "sse")
    argv = proxy_argv(transport, tmp_path, endpoint=collector.url,
                      extra=("--upstream", upstream, "--listen", f"127.0.0.1:{port}"))
    try:
        with process(server_argv(transport, str(upstream_port)), upstream_port, tmp_path / "server.log"), \
                process(argv, port, tmp_path / "proxy.out") as proxy:
            if transport == "streamable-http":
                _open_streamable_session(f"http://127.0.0.1:{port}/mcp")
                proxy.send_signal(signal.SIGTERM)
                proxy.wait(30)
            else:
                with httpx.Client(timeout=10) as client, \
                        client.stream("GET", f"http://127.0.0.1:{port}/sse") as stream:
                    lines = stream.iter_lines()
                    post = next(f"http://127.0.0.1:{port}{line[6:]}"
                                for line in lines if line.startswith("data: "))
                    for message, answer in ((INIT, '"id":1'), (INITIALIZED, None), (CALL, '"id":2')):
                        assert client.post(post, json=message).status_code == 202
                        if answer:
                            next(line for line in lines if answer in line)
                    proxy.send_signal(signal.SIGTERM)  # the client's stream still open
                    proxy.wait(30)
        events = collector.wait_for(lambda ev: any(e["type"] == "mcp.session.end" for e in ev.values()),
                                    timeout=10)
    finally:
        collector.stop()
    assert [c["data"]["outcome"] for c in tool_calls(events)] == ["ok"]
    [end] = [e for e in events.values() if e["type"] == "mcp.session.end"]
    assert end["data"]["tool_calls"] == 1
    assert not list((tmp_path / "spool").glob("batch-*"))
