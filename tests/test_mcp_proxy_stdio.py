"""The stdio proxy driven by the official MCP Python SDK client against a FastMCP server."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import sys
import time
from contextlib import asynccontextmanager
from pathlib import Path

import orjson
import pytest
from mcp import ClientSession, StdioServerParameters
from mcp.client.stdio import stdio_client
from mcp.types import Implementation

sys.path.insert(0, str(Path(__file__).parent / "fixtures" / "mcp"))
from proxy_support import ENV, REPO, Collector, call_tools, proxy_argv, server_argv, tool_calls

AGENT = Implementation(name="test-agent", version="9.9")


@asynccontextmanager
async def session_over(argv: list[str]):
    params = StdioServerParameters(command=argv[0], args=argv[1:], env=ENV, cwd=str(REPO))
    async with stdio_client(params) as (read, write), \
            ClientSession(read, write, client_info=AGENT) as session:
        await session.initialize()
        yield session


def test_results_identical_and_every_call_metered(tmp_path: Path):
    collector = Collector()
    try:
        direct = asyncio.run(_run(server_argv("stdio")))
        proxied = asyncio.run(_run(proxy_argv("stdio", tmp_path, endpoint=collector.url,
                                              extra=("--command", sys.executable, "--args",
                                                     f"{server_argv('stdio')[1]},stdio"))))
        assert proxied == direct
        assert len(orjson.loads(direct[3])["content"][0]["text"]) == 5 << 20
        events = collector.wait_for(lambda ev: any(e["type"] == "mcp.session.end" for e in ev.values()))
    finally:
        collector.stop()
    calls = tool_calls(events)
    assert [(c["data"]["tool"], c["data"]["outcome"]) for c in calls] == [
        ("echo", "ok"), ("fail", "tool_error"), ("needs_auth", "protocol_error"), ("big", "ok")]
    session = calls[0]["data"]["session"]
    assert all(c["data"]["session"] == session and c["data"]["agent"] == "test-agent" for c in calls)
    assert all(c["subject"] == "cust-1" and c["tenantid"] == "acme" for c in calls)
    assert calls[2]["data"]["error_code"] == -32042
    assert calls[3]["data"]["response_bytes"] > 5 << 20
    [end] = [e for e in events.values() if e["type"] == "mcp.session.end"]
    assert end["data"]["tool_calls"] == 4 and end["data"]["tool_calls_tool_error"] == 1
    assert f"{session}/start" in events and end["id"] == f"{session}/end"
    # the proxy names itself, so POST /v1/events records its events with tier mcp, not rest
    assert [c.split("/")[0] for c in collector.clients] == ["mcp-proxy"]


async def _run(argv: list[str]) -> list:
    async with session_over(argv) as session:
        return await call_tools(session)


def test_endpoint_outage_mid_session_loses_nothing(tmp_path: Path):
    collector = Collector()
    argv = proxy_argv("stdio", tmp_path, endpoint=collector.url,
                      extra=("--command", sys.executable, "--args", f"{server_argv('stdio')[1]},stdio"))

    async def scenario() -> None:
        async with session_over(argv) as session:
            await session.call_tool("echo", {"text": "before"})
            collector.wait_for(lambda ev: len(tool_calls(ev)) == 1)
            collector.stop()
            for i in range(3):
                await session.call_tool("echo", {"text": f"during {i}"})
            # the proxy fails deliveries and spools; 0.9 s meets its 0.8 s backoff step, so the
            # session ends while the endpoint is still "known down": close() must try it anyway
            await asyncio.sleep(0.9)
            collector.start()
            await session.call_tool("echo", {"text": "after"})

    try:
        asyncio.run(scenario())
        events = collector.wait_for(lambda ev: len(tool_calls(ev)) == 5
                                    and any(e["type"] == "mcp.session.end" for e in ev.values()))
    finally:
        collector.stop()
    assert [c["data"]["outcome"] for c in tool_calls(events)] == ["ok"] * 5
    assert not list((tmp_path / "spool").glob("batch-*"))


def raw_exchange(argv: list[str], lines: list[bytes], answers: int) -> list[bytes]:
    """Writes the lines, reads `answers` lines back, then hangs up (the server would otherwise
    exit on end of input before answering the last requests)."""
    proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=ENV, cwd=REPO)
    assert proc.stdin is not None and proc.stdout is not None
    proc.stdin.write(b"".join(lines))
    proc.stdin.flush()
    got = [proc.stdout.readline() for _ in range(answers)]
    proc.stdin.close()
    assert proc.wait(30) == 0
    return got


def test_bytes_relayed_unchanged_with_odd_spacing_and_large_lines(tmp_path: Path):
    """The proxy forwards frames verbatim: what the client reads equals what the server wrote."""
    lines = [
        b'{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-06-18",'
        b'"capabilities":{},"clientInfo":{"name":"raw","version":"1"}}}\n',
        b'{"jsonrpc":"2.0","method":"notifications/initialized"}\n',
        b'{ "jsonrpc": "2.0", "id": 2, "method": "tools/call",  "params": {"name": "echo",'
        b' "arguments": {"text": "'
        + b"y" * 100_000 + b'"}} }\n',
        b'{"jsonrpc":"2.0","id":3,"method":"tools/call","params":{"name":"nope","arguments":{}}}\n',
    ]
    collector = Collector()
    try:
        direct = raw_exchange(server_argv("stdio"), lines, 3)
        # the server exits on end of input; on a loaded machine that can take longer than the
        # default 2 s grace, after which the proxy would (rightly) SIGTERM it
        proxied = raw_exchange(proxy_argv("stdio", tmp_path, endpoint=collector.url, extra=(
            "--shutdown-grace", "30", "--command", sys.executable, "--args",
            f"{server_argv('stdio')[1]},stdio")), lines, 3)
        events = collector.wait_for(lambda ev: len(tool_calls(ev)) == 2)
    finally:
        collector.stop()
    assert proxied == direct
    assert [c["data"]["outcome"] for c in tool_calls(events)] == ["ok", "tool_error"]
    assert tool_calls(events)[0]["data"]["request_bytes"] == len(lines[2])


@pytest.mark.skipif(shutil.which("npx") is None, reason="node/npx not installed")
def test_reference_server_everything(tmp_path: Path):
    """The reference TypeScript server, fetched by npx (skipped when it cannot be fetched)."""
    fetched = subprocess.run(["npx", "-y", "@modelcontextprotocol/server-everything", "stdio"],
                             input=b"", capture_output=True, timeout=120)
    if b"Error" in fetched.stderr and b"npm" in fetched.stderr:
        pytest.skip(f"cannot fetch @modelcontextprotocol/server-everything: {fetched.stderr[-300:]!r}")
    collector = Collector()
    argv = proxy_argv("stdio", tmp_path, endpoint=collector.url, extra=(
        "--command", "npx", "--args", "-y,@modelcontextprotocol/server-everything,stdio"))

    async def scenario() -> str:
        async with session_over(argv) as session:
            result = await session.call_tool("echo", {"message": "through the proxy"})
            return result.content[0].text

    try:
        assert "through the proxy" in asyncio.run(scenario())
        events = collector.wait_for(lambda ev: any(e["type"] == "mcp.session.end" for e in ev.values()))
    finally:
        collector.stop()
    [call] = tool_calls(events)
    assert call["data"]["tool"] == "echo" and call["data"]["outcome"] == "ok"


STUBBORN = """
import os, signal, sys, time
out = sys.argv[1]
def on_signal(sig, _frame):
    with open(out + ".signals", "a") as f:
        f.write(f"{sig}\\n")
    if sys.argv[2] == "obey":
        sys.exit(0)
signal.signal(signal.SIGTERM, on_signal)
sys.stderr.buffer.write(b"e" * (1 << 20))  # blocks forever unless the proxy drains stderr
sys.stderr.flush()
with open(out + ".pid", "w") as f:
    f.write(str(os.getpid()))
while True:
    time.sleep(0.1)
"""


def start_stubborn(tmp_path: Path, mode: str) -> tuple[subprocess.Popen, Path]:
    script = tmp_path / "child.py"
    script.write_text(STUBBORN)
    marker = tmp_path / "child"
    argv = proxy_argv("stdio", tmp_path, endpoint="http://127.0.0.1:9", extra=(
        "--command", sys.executable, "--", str(script), str(marker), mode))
    proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=ENV, cwd=REPO)
    deadline = time.monotonic() + 30
    while not Path(f"{marker}.pid").exists():
        assert time.monotonic() < deadline and proc.poll() is None, "child never started"
        time.sleep(0.05)
    return proc, marker


def test_signals_are_forwarded_and_stderr_drained(tmp_path: Path):
    proc, marker = start_stubborn(tmp_path, "obey")
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(30) == 0
    assert Path(f"{marker}.signals").read_text().split() == [str(int(signal.SIGTERM))]
    assert (tmp_path / "proxy.log").stat().st_size >= 1 << 20


def test_shutdown_escalates_to_sigkill_for_a_stubborn_server(tmp_path: Path):
    proc, marker = start_stubborn(tmp_path, "ignore")
    assert proc.stdin is not None
    proc.stdin.close()  # the client hangs up: close stdin, SIGTERM (ignored), SIGKILL
    assert proc.wait(30) == 128 + signal.SIGKILL
    assert Path(f"{marker}.signals").read_text().split() == [str(int(signal.SIGTERM))]
    with pytest.raises(ProcessLookupError):
        os.kill(int(Path(f"{marker}.pid").read_text()), 0)
