"""End to end: the stdio proxy produces straight to Kafka; the metering flow ledgers and prices
the events with tier `mcp` using the README's catalog example."""

from __future__ import annotations

import asyncio
import sys
from decimal import Decimal
from pathlib import Path

import psycopg
import pytest
from mcp import ClientSession, StdioServerParameters
from mcp.client.stdio import stdio_client
from mcp.types import Implementation

from flows.metering import run
from sinks.catalog import apply_catalog, read_catalog_file
from sinks.kafka import ensure_topics

sys.path.insert(0, str(Path(__file__).parent / "fixtures" / "mcp"))
from proxy_support import ENV, REPO, proxy_argv, server_argv

pytestmark = pytest.mark.integration
CATALOG = Path(__file__).parent / "fixtures" / "mcp" / "catalog.yaml"


def test_events_reach_the_ledger_priced_with_tier_mcp(settings, tmp_path: Path):
    with psycopg.connect(settings.database_url) as conn:
        apply_catalog(conn, read_catalog_file(CATALOG))
    ensure_topics(settings)
    argv = proxy_argv("stdio", tmp_path, kafka=settings.kafka_bootstrap, topic_prefix=settings.topic_prefix,
                      customer="cust-mcp",
                      extra=("--command", sys.executable, "--args", f"{server_argv('stdio')[1]},stdio"))

    async def scenario() -> None:
        params = StdioServerParameters(command=argv[0], args=argv[1:], env=ENV, cwd=str(REPO))
        async with stdio_client(params) as (read, write), ClientSession(
                read, write, client_info=Implementation(name="e2e-agent", version="1")) as session:
            await session.initialize()
            await session.call_tool("echo", {"text": "a"})
            await session.call_tool("echo", {"text": "b"})
            await session.call_tool("fail", {"reason": "c"})

    asyncio.run(scenario())
    run(settings, once=True)
    with psycopg.connect(settings.database_url) as conn:
        rows = conn.execute("SELECT tier, status, reason, customer FROM ledger").fetchall()
        lines = conn.execute("SELECT metric, grp, quantity, revenue FROM ledger_lines").fetchall()
    # session start and three calls are priced; no metric reads mcp.session.end: unmetered
    assert sorted(rows, key=str) == sorted([("mcp", "accepted", None, "cust-mcp")] * 4
                                           + [("mcp", "accepted", "unmetered", "cust-mcp")], key=str)
    assert sorted((m, g.get("tool"), q, r) for m, g, q, r in lines) == [
        ("mcp_sessions", None, 1, Decimal("0.01")),
        ("mcp_tool_calls", "echo", 1, Decimal("0.001")), ("mcp_tool_calls", "echo", 1, Decimal("0.001")),
        ("mcp_tool_calls", "fail", 1, Decimal("0.002"))]
