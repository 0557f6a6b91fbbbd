"""stdio transport: the MCP server runs as our child; newline-delimited JSON-RPC is relayed
both ways byte for byte. Our stdout carries nothing but the server's MCP messages."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
from typing import BinaryIO

from mcp_proxy.relay import READ_CHUNK, Metered, expire_periodically, log, read_lines

FORWARDED_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


async def _std_streams() -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """Our stdin and stdout as asyncio streams, so a slow client applies backpressure to the
    server instead of blocking the loop (and with it the other direction)."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=READ_CHUNK)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin.buffer)
    transport, protocol = await loop.connect_write_pipe(asyncio.streams.FlowControlMixin, sys.stdout.buffer)
    return reader, asyncio.StreamWriter(transport, protocol, None, loop)


async def _client_to_server(stdin: asyncio.StreamReader, child: asyncio.subprocess.Process,
                            metered: Metered) -> None:
    assert child.stdin is not None
    try:
        async for frame in read_lines(stdin):
            child.stdin.write(frame)
            metered.client(frame)  # before yielding: the response cannot overtake the request's record
            await child.stdin.drain()
    except (BrokenPipeError, ConnectionResetError):
        pass  # the server went away; its exit ends the session


async def _server_to_client(child: asyncio.subprocess.Process, stdout: asyncio.StreamWriter,
                            metered: Metered) -> None:
    assert child.stdout is not None
    async for frame in read_lines(child.stdout):
        stdout.write(frame)
        metered.server(frame)
        await stdout.drain()


async def _drain_stderr(child: asyncio.subprocess.Process, sink: BinaryIO) -> None:
    """Always read the server's stderr: a full pipe would block the server mid-write."""
    assert child.stderr is not None
    while chunk := await child.stderr.read(READ_CHUNK):
        sink.write(chunk)
        sink.flush()


async def stop_child(child: asyncio.subprocess.Process, grace_s: float) -> None:
    """The MCP stdio shutdown: close its stdin, then SIGTERM, then SIGKILL, each after a grace."""
    if child.stdin is not None and not child.stdin.is_closing():
        child.stdin.close()
    for escalate in (child.terminate, child.kill):
        try:
            await asyncio.wait_for(child.wait(), grace_s)
            return
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                escalate()
    await child.wait()


async def run_stdio(argv: list[str], metered: Metered, stderr_sink: BinaryIO, grace_s: float = 2.0) -> int:
    """Relay until the server exits or the client closes our stdin; the server's exit status."""
    loop = asyncio.get_running_loop()
    child = await asyncio.create_subprocess_exec(
        *argv, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE, limit=READ_CHUNK)
    for sig in FORWARDED_SIGNALS:
        loop.add_signal_handler(sig, _forward, child, sig)
    stdin, stdout = await _std_streams()
    upstream = asyncio.create_task(_client_to_server(stdin, child, metered))
    downstream = asyncio.create_task(_server_to_client(child, stdout, metered))
    drain = asyncio.create_task(_drain_stderr(child, stderr_sink))
    expiry = asyncio.create_task(expire_periodically(lambda: [metered]))
    try:
        await asyncio.wait({upstream, downstream}, return_when=asyncio.FIRST_COMPLETED)
        if upstream.done():  # client hung up: shut the server down, relay what it still says
            await stop_child(child, grace_s)
        await downstream
        await drain
        code = await child.wait()
    finally:
        for task in (upstream, expiry):
            task.cancel()
        for sig in FORWARDED_SIGNALS:
            loop.remove_signal_handler(sig)
        if child.returncode is None:
            await stop_child(child, grace_s)
        with contextlib.suppress(ConnectionError):
            await stdout.drain()
    log.info("server exited with %s", code)
    return code if code >= 0 else 128 - code


def _forward(child: asyncio.subprocess.Process, sig: signal.Signals) -> None:
    log.info("forwarding %s to the server", sig.name)
    with contextlib.suppress(ProcessLookupError):
        child.send_signal(sig)
