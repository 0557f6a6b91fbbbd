"""`aforo-mcp-proxy`: every option is a flag (Aforo's `config` reads the environment for the
engine; the sidecar takes nothing from it)."""

from __future__ import annotations

import asyncio
import logging
import socket
import sys
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import BinaryIO, TypeVar

import click

from mcp_proxy.delivery import Delivery, HttpSender, KafkaSender, Sender, Spool
from mcp_proxy.events import Identity
from mcp_proxy.observer import SessionMeter
from mcp_proxy.relay import Metered
from schemas.errors import AforoError

T = TypeVar("T")
TRANSPORTS = ("stdio", "streamable-http", "sse")


def _sender(endpoint: str | None, api_key: str | None, kafka: str | None, topic_prefix: str) -> Sender:
    if bool(endpoint) == bool(kafka):
        raise click.UsageError("give exactly one of --endpoint (with --api-key) or --kafka")
    if kafka:
        return KafkaSender(kafka, topic_prefix)
    if not api_key:
        raise click.UsageError("--endpoint needs --api-key")
    return HttpSender(endpoint or "", api_key)


def _agent_customers(pairs: tuple[str, ...]) -> tuple[tuple[str, str], ...]:
    try:
        return tuple((agent, customer) for agent, customer in (p.split("=", 1) for p in pairs))
    except ValueError:
        raise click.UsageError("--agent-customer takes AGENT=CUSTOMER") from None


def _default_spool(tenant: str, product: str) -> Path:
    """Under the home directory: a stdio server's working directory (often /) may not be writable."""
    return Path.home() / ".aforo-mcp-proxy" / "spool" / f"{tenant}-{product}"


def _setup_logging(log_file: Path | None) -> BinaryIO:
    """Our logs and the server's stderr go to --log-file, else to our stderr: never to stdout,
    which on stdio belongs to MCP alone."""
    if log_file:
        log_file.parent.mkdir(parents=True, exist_ok=True)
    stream = open(log_file, "a", buffering=1) if log_file else sys.stderr  # noqa: SIM115 (process-long)
    handler = logging.StreamHandler(stream)  # flushes every record, so raw stderr bytes interleave cleanly
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=logging.INFO, handlers=[handler])
    return stream.buffer


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--transport", type=click.Choice(TRANSPORTS), default="stdio", show_default=True)
@click.option("--command", "command", help="stdio: the MCP server to spawn")
@click.option("--args", "args_csv", default="", help="stdio: its arguments, comma-separated")
@click.option("--upstream", help="http transports: the server's URL, e.g. http://127.0.0.1:3001/mcp or /sse")
@click.option("--listen", default="127.0.0.1:8931", show_default=True, help="http transports: HOST:PORT")
@click.option("--ping-interval", type=float, default=15.0, show_default=True,
              help="sse: seconds of upstream silence before a keep-alive comment")
@click.option("--tenant", required=True, help="Aforo tenant id (tenantid of every event)")
@click.option("--product", required=True, help="product name, part of each event's source")
@click.option("--customer", help="the events' subject (default: --agent-customer, else the agent name)")
@click.option("--agent-customer", multiple=True, metavar="AGENT=CUSTOMER", help="subject per MCP client name")
@click.option("--api-key", help="Aforo API key for --endpoint")
@click.option("--endpoint", help="Aforo REST API base URL (POST /v1/events)")
@click.option("--kafka", help="Kafka bootstrap servers: produce to <prefix>.events.raw directly")
@click.option("--topic-prefix", default="aforo", show_default=True)
@click.option("--instance", default=socket.gethostname(), show_default=True,
              help="names this proxy in each event's source")
@click.option("--spool-dir", type=click.Path(path_type=Path),
              help="undelivered events wait here across restarts "
                   "[default: ~/.aforo-mcp-proxy/spool/TENANT-PRODUCT]")
@click.option("--spool-max-mb", type=int, default=256, show_default=True)
@click.option("--shutdown-grace", type=float, default=2.0, show_default=True,
              help="stdio: seconds the server gets to exit after its stdin closes, then again after SIGTERM")
@click.option("--call-timeout", type=float, default=300.0, show_default=True,
              help="seconds before an unanswered tools/call is metered as timeout")
@click.option("--log-file", type=click.Path(path_type=Path))
@click.option("--metrics-port", type=click.IntRange(0, 65535), metavar="PORT",
              help="serve /metrics (calls, deliveries, spool depth) and /healthz on --metrics-host:PORT")
@click.option("--metrics-host", default="127.0.0.1", show_default=True)
@click.argument("extra_args", nargs=-1, type=click.UNPROCESSED)
def main(transport: str, command: str | None, args_csv: str, upstream: str | None, listen: str,
         ping_interval: float,
         tenant: str, product: str, customer: str | None, agent_customer: tuple[str, ...],
         api_key: str | None, endpoint: str | None, kafka: str | None, topic_prefix: str, instance: str,
         spool_dir: Path | None, spool_max_mb: int, shutdown_grace: float, call_timeout: float,
         log_file: Path | None, metrics_port: int | None, metrics_host: str,
         extra_args: tuple[str, ...]) -> None:
    """Relay MCP between a client and a server and meter sessions and tool calls to Aforo.
    Arguments after `--` are passed to the stdio server as they are (for arguments with commas)."""
    if transport == "stdio" and not command:
        raise click.UsageError("--transport stdio needs --command")
    if transport != "stdio" and not upstream:
        raise click.UsageError(f"--transport {transport} needs --upstream")
    ident = Identity(tenant, product, instance, customer, _agent_customers(agent_customer))
    sink = _setup_logging(log_file)
    if metrics_port is not None:
        from observe.server import start as serve_metrics
        try:
            serve_metrics(metrics_host, metrics_port, "mcp-proxy")
        except AforoError as exc:
            raise click.UsageError(str(exc)) from None
    delivery = Delivery(_sender(endpoint, api_key, kafka, topic_prefix),
                        Spool(spool_dir or _default_spool(tenant, product), spool_max_mb << 20)).start()
    delivery.export_gauges()

    def new_session() -> Metered:
        return Metered(SessionMeter(ident, call_timeout_s=call_timeout), delivery)

    code = 0
    try:
        if transport == "stdio":
            argv = [command or "", *(a for a in args_csv.split(",") if a), *extra_args]
            code = _run(_stdio(argv, new_session(), sink, shutdown_grace))
        else:
            host, _, port = listen.rpartition(":")
            _run(_http(transport, upstream or "", host or "127.0.0.1", int(port), new_session,
                       ping_interval, delivery))
    finally:
        delivery.close()
    sys.exit(code)


def _run(main_coro: Coroutine[None, None, T]) -> T:
    """On uvloop where installed (uvicorn[standard] brings it): less latency per relayed message."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(main_coro)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(main_coro)


async def _stdio(argv: list[str], metered: Metered, sink: BinaryIO, grace_s: float) -> int:
    from mcp_proxy.stdio import run_stdio

    try:
        return await run_stdio(argv, metered, sink, grace_s)
    finally:
        metered.close()


async def _http(transport: str, upstream: str, host: str, port: int,
                new_session: Callable[[], Metered], ping_s: float, delivery: Delivery) -> None:
    from mcp_proxy.relay import expire_periodically, serve
    from mcp_proxy.sse_transport import SseProxy
    from mcp_proxy.streamable_http import StreamableHttpProxy

    if transport == "sse":
        sse = SseProxy(upstream, new_session, ping_s)
        app, sessions = sse, lambda: [s.metered for s in sse.sessions.values()]
    else:
        streamable = StreamableHttpProxy(upstream, new_session)
        app, sessions = streamable, lambda: list(streamable.sessions.values())
    expiry = asyncio.create_task(expire_periodically(sessions))

    async def cleanup() -> None:
        expiry.cancel()
        await app.aclose()  # every open session ends: its session.end is queued
        await asyncio.to_thread(delivery.close)  # delivered now, or spooled for the next start

    await serve(app, host, port, cleanup)


if __name__ == "__main__":
    main()
