"""Overhead benchmark: latency per tool call through the proxy vs direct, per transport.

    python -m mcp_proxy.bench [--calls 1000] [--transports stdio,streamable-http,sse]

Starts its own FastMCP echo server (this module with --serve) and a stand-in Aforo endpoint
that answers 202, drives both with the official MCP client, and prints p50/p99 per call and
the difference the proxy adds. Sequential calls: it measures latency, not throughput."""

from __future__ import annotations

import asyncio
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import asynccontextmanager, contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import click

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(REPO)}


def _serve(transport: str, port: int) -> None:
    from mcp.server.fastmcp import FastMCP

    mcp = FastMCP("bench", host="127.0.0.1", port=port, log_level="WARNING")

    @mcp.tool()
    def echo(text: str) -> str:
        return text

    mcp.run(transport=transport)


class _Accept(BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        self.rfile.read(int(self.headers["Content-Length"]))
        self.send_response(202)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *_args) -> None:
        pass


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def _listening(argv: list[str], port: int):
    proc = subprocess.Popen(argv, env=ENV, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                time.sleep(0.05)
        yield
    finally:
        proc.terminate()
        proc.wait()


def _server_argv(transport: str, port: int = 0) -> list[str]:
    return [sys.executable, "-m", "mcp_proxy.bench", "--serve", transport, "--port", str(port)]


def _proxy_argv(transport: str, endpoint: str, spool: str) -> list[str]:
    return [sys.executable, "-m", "mcp_proxy.cli", "--transport", transport, "--tenant", "bench",
            "--product", "bench", "--customer", "bench", "--endpoint", endpoint, "--api-key", "k",
            "--spool-dir", spool, "--log-file", os.path.join(spool, "proxy.log")]


@asynccontextmanager
async def _session(transport: str, target: str | list[str]):
    from mcp import ClientSession, StdioServerParameters
    from mcp.client.sse import sse_client
    from mcp.client.stdio import stdio_client
    from mcp.client.streamable_http import streamable_http_client

    if transport == "stdio":
        assert isinstance(target, list)
        ctx = stdio_client(StdioServerParameters(command=target[0], args=target[1:], env=ENV, cwd=str(REPO)))
    elif transport == "sse":
        ctx = sse_client(str(target))
    else:
        ctx = streamable_http_client(str(target))
    async with ctx as streams, ClientSession(streams[0], streams[1]) as session:
        await session.initialize()
        yield session


async def _latencies(transport: str, target: str | list[str], calls: int) -> list[float]:
    async with _session(transport, target) as session:
        for _ in range(min(100, calls)):  # warm up
            await session.call_tool("echo", {"text": "warm"})
        out = []
        for _ in range(calls):
            t0 = time.perf_counter()
            await session.call_tool("echo", {"text": "hello"})
            out.append((time.perf_counter() - t0) * 1000)
        return out


def _pct(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1] if len(values) > 1 else values[0]


def _measure(transport: str, calls: int, endpoint: str, spool: str) -> tuple[list[float], list[float]]:
    if transport == "stdio":
        direct_target: str | list[str] = _server_argv("stdio")
        proxy_target: str | list[str] = [*_proxy_argv("stdio", endpoint, spool), "--command", sys.executable,
                                         "--args", ",".join(_server_argv("stdio")[1:])]
        return (asyncio.run(_latencies(transport, direct_target, calls)),
                asyncio.run(_latencies(transport, proxy_target, calls)))
    path = "/sse" if transport == "sse" else "/mcp"
    server_port, proxy_port = _free_port(), _free_port()
    with _listening(_server_argv(transport, server_port), server_port), _listening(
            [*_proxy_argv(transport, endpoint, spool), "--upstream", f"http://127.0.0.1:{server_port}{path}",
             "--listen", f"127.0.0.1:{proxy_port}"], proxy_port):
        return (asyncio.run(_latencies(transport, f"http://127.0.0.1:{server_port}{path}", calls)),
                asyncio.run(_latencies(transport, f"http://127.0.0.1:{proxy_port}{path}", calls)))


def _observer_cost_us(calls: int) -> float:
    """CPU the metering itself adds per tool call: parse both copies, build the event."""
    import orjson

    from mcp_proxy.events import Identity
    from mcp_proxy.observer import SessionMeter

    meter = SessionMeter(Identity("bench", "bench", "bench", "bench"))
    params = {"name": "echo", "arguments": {"text": "hello"}}
    requests = [orjson.dumps({"jsonrpc": "2.0", "id": i, "method": "tools/call", "params": params})
                for i in range(calls)]
    responses = [orjson.dumps({"jsonrpc": "2.0", "id": i, "result": {
        "content": [{"type": "text", "text": "hello"}], "isError": False}}) for i in range(calls)]
    t0 = time.perf_counter()
    for req, resp in zip(requests, responses, strict=True):
        meter.from_client(req, time.time(), time.monotonic())
        meter.from_server(resp, time.time(), time.monotonic())
    return (time.perf_counter() - t0) / calls * 1e6


@click.command()
@click.option("--calls", type=int, default=1000, show_default=True)
@click.option("--transports", default="stdio,streamable-http,sse", show_default=True)
@click.option("--serve", type=click.Choice(["stdio", "streamable-http", "sse"]), hidden=True)
@click.option("--port", type=int, default=0, hidden=True)
def main(calls: int, transports: str, serve: str | None, port: int) -> None:
    if serve:
        _serve(serve, port)
        return
    endpoint = ThreadingHTTPServer(("127.0.0.1", 0), _Accept)
    threading.Thread(target=endpoint.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{endpoint.server_address[1]}"
    click.echo(f"{'transport':<16} {'direct p50':>10} {'p99':>8} {'proxied p50':>12} {'p99':>8} "
               f"{'added p50':>10} {'p99':>8}  (ms per tool call, {calls} sequential calls)")
    for transport in transports.split(","):
        with tempfile.TemporaryDirectory() as spool:
            direct, proxied = _measure(transport, calls, url, spool)
        d50, d99, p50, p99 = _pct(direct, 50), _pct(direct, 99), _pct(proxied, 50), _pct(proxied, 99)
        click.echo(f"{transport:<16} {d50:>10.3f} {d99:>8.3f} {p50:>12.3f} {p99:>8.3f} "
                   f"{p50 - d50:>10.3f} {p99 - d99:>8.3f}")
    endpoint.shutdown()
    click.echo(f"metering CPU per tool call (observe both messages, build the event): "
               f"{_observer_cost_us(max(calls, 10_000)):.1f} µs")


if __name__ == "__main__":
    main()
