"""The MCP proxy's metrics: tool calls by outcome, deliveries, and the spool's depth while the
endpoint is down."""

from __future__ import annotations

from pathlib import Path

import httpx
from test_mcp_proxy_events import IDENT, FlakySender, call, initialized, line, wait_for

from mcp_proxy.delivery import Delivery, Spool
from mcp_proxy.observer import SessionMeter
from observe.metrics import REGISTRY
from observe.server import start


def _value(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def test_tool_calls_and_sessions_are_counted_by_outcome():
    ok, error, sessions = (_value("aforo_mcp_tool_calls_total", outcome="ok"),
                           _value("aforo_mcp_tool_calls_total", outcome="tool_error"),
                           _value("aforo_mcp_sessions_total"))
    meter = SessionMeter(IDENT)
    initialized(meter)
    meter.from_client(call(1), 100.2, 1.2)
    meter.from_server(line({"jsonrpc": "2.0", "id": 1, "result": {"content": []}}), 100.3, 1.3)
    meter.from_client(call(2), 100.4, 1.4)
    meter.from_server(line({"jsonrpc": "2.0", "id": 2, "result": {"isError": True}}), 100.5, 1.5)
    assert _value("aforo_mcp_tool_calls_total", outcome="ok") == ok + 1
    assert _value("aforo_mcp_tool_calls_total", outcome="tool_error") == error + 1
    assert _value("aforo_mcp_sessions_total") == sessions + 1


def test_spool_depth_and_deliveries_are_exported(tmp_path: Path):
    sender = FlakySender()
    sender.down.set()
    delivered = _value("aforo_mcp_events_total", result="delivered")
    delivery = Delivery(sender, Spool(tmp_path, 1 << 20), retry_max_s=0.2).start()
    delivery.export_gauges()
    server = start("127.0.0.1", 0, "mcp-proxy")
    url = f"http://127.0.0.1:{server.server_address[1]}/metrics"
    try:
        delivery.submit([b'{"n":1}', b'{"n":2}'])
        wait_for(lambda: Spool(tmp_path, 0).files())
        spooled = httpx.get(url, timeout=5).text
        sender.down.clear()
        wait_for(lambda: len(sender.got) == 2)
        drained = httpx.get(url, timeout=5).text
    finally:
        delivery.close()
        server.shutdown()
    batch_file = b'{"n":1}\n{"n":2}\n'  # one spooled batch, as NDJSON
    assert f"aforo_mcp_spool_bytes {float(len(batch_file))}" in spooled
    assert "aforo_mcp_spool_bytes 0.0" in drained
    assert _value("aforo_mcp_events_total", result="delivered") == delivered + 2
