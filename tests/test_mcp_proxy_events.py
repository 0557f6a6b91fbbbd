"""The MCP proxy's pure parts: the session observer, event building, delivery with the spool."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import orjson
import pytest

from mcp_proxy.delivery import Delivery, DeliveryError, Rejected, Spool
from mcp_proxy.events import Identity
from mcp_proxy.observer import SessionMeter, parse_messages

IDENT = Identity(tenant="acme", product="mcp-fs", instance="host-1", customer="cust-1")


def line(obj) -> bytes:
    return orjson.dumps(obj)


def initialized(meter: SessionMeter) -> list[dict]:
    out = meter.from_client(line({"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {
        "protocolVersion": "2025-06-18", "clientInfo": {"name": "claude-code", "version": "1.2"}}}),
        100.0, 1.0)
    out += meter.from_server(line({"jsonrpc": "2.0", "id": 0, "result": {
        "protocolVersion": "2025-06-18", "serverInfo": {"name": "fs", "version": "0.1"}}}), 100.1, 1.1)
    return [orjson.loads(e) for e in out]


def call(rpc_id, tool: str = "read_file") -> bytes:
    return line({"jsonrpc": "2.0", "id": rpc_id, "method": "tools/call",
                 "params": {"name": tool, "arguments": {}}})


def test_session_start_carries_agent_and_deterministic_id():
    meter = SessionMeter(IDENT, session_id="s-1")
    [start] = initialized(meter)
    assert start["type"] == "mcp.session.start" and start["id"] == "s-1/start"
    assert start["specversion"] == "1.0" and start["tenantid"] == "acme" and start["subject"] == "cust-1"
    assert start["source"] == "mcp-proxy/mcp-fs/host-1" and start["time"] == "1970-01-01T00:01:40.000Z"
    assert start["data"]["agent"] == "claude-code" and start["data"]["server"] == "fs"


def test_outcomes_are_distinguished():
    meter = SessionMeter(IDENT, session_id="s-1")
    initialized(meter)
    responses = {
        1: {"result": {"content": [], "isError": False}},
        2: {"result": {"content": [{"type": "text", "text": "no"}], "isError": True}},
        3: {"error": {"code": -32602, "message": "bad params"}},
    }
    events = []
    for rpc_id, body in responses.items():
        meter.from_client(call(rpc_id), 101.0, 2.0)
        events += meter.from_server(line({"jsonrpc": "2.0", "id": rpc_id, **body}), 101.5, 2.25)
    meter.from_client(call("x"), 102.0, 3.0)
    events += meter.from_client(line({"jsonrpc": "2.0", "method": "notifications/cancelled",
                                      "params": {"requestId": "x"}}), 102.0, 3.5)
    events += meter.from_server(line({"jsonrpc": "2.0", "id": "x", "result": {}}), 102.0, 3.6)  # too late
    got = [orjson.loads(e) for e in events]
    assert [e["data"]["outcome"] for e in got] == ["ok", "tool_error", "protocol_error", "cancelled"]
    assert [e["id"] for e in got] == ["s-1/1", "s-1/2", "s-1/3", 's-1/"x"']
    assert got[0]["data"]["latency_ms"] == 250.0 and got[0]["data"]["agent"] == "claude-code"
    assert got[2]["data"]["error_code"] == -32602
    assert all(e["type"] == "mcp.tool.call" and e["data"]["tool"] == "read_file" for e in got)


def test_batches_are_metered_per_element_and_timeouts_close_calls():
    meter = SessionMeter(IDENT, session_id="s-2", call_timeout_s=10)
    initialized(meter)
    batch = line([orjson.loads(call(1, "a")), orjson.loads(call(2, "b"))])
    assert [size for _, size in parse_messages(batch)] == [len(call(1, "a")), len(call(2, "b"))]
    meter.from_client(batch, 100.0, 5.0)
    [done] = meter.from_server(line([{"jsonrpc": "2.0", "id": 1, "result": {}}]), 100.0, 6.0)
    assert orjson.loads(done)["data"]["tool"] == "a"
    assert meter.expire(100.0, 14.0) == []
    [late] = meter.expire(100.0, 15.0)
    assert orjson.loads(late)["data"]["outcome"] == "timeout" and orjson.loads(late)["data"]["tool"] == "b"
    [end] = [orjson.loads(e) for e in meter.close(110.0, 21.0)]
    assert end["type"] == "mcp.session.end" and end["id"] == "s-2/end"
    assert end["data"]["duration_ms"] == 20000.0 and end["data"]["tool_calls"] == 2
    assert end["data"]["tool_calls_ok"] == 1 and end["data"]["tool_calls_timeout"] == 1
    assert meter.close(111.0, 22.0) == []


def test_each_call_is_metered_once_under_its_id_as_sent():
    """orjson read 2**64 and 2**64 + 1 as one float (the second call took the first's place, and
    its event id was `1.8446744073709552e+19`), 1.0000000000000001 as 1.0, and refused 1e400 (the
    call was never metered). Ids that are objects, arrays or batched keep their text too."""
    meter = SessionMeter(IDENT, session_id="s")
    ids = [b"18446744073709551616", b"18446744073709551617", b"1e400", b"1.0000000000000001", b"1.0",
           b'{"a": 1}', b"[1]"]
    frames = [b'{"jsonrpc": "2.0", "id": %s, "method": "tools/call", "params": {"name": "t"}}' % i
              for i in ids]
    for frame in [*frames[:-2], b"[" + b",".join(frames[-2:]) + b"]"]:
        assert meter.from_client(frame, 1.0, 1.0) == []
    events = []
    for rpc_id in reversed(ids):
        events += meter.from_server(b'{"jsonrpc": "2.0", "id": %s, "result": {}}' % rpc_id, 1.0, 1.5)
    events += meter.from_client(b'{"jsonrpc": "2.0", "id": 1e-400, "method": "tools/call"}', 1.0, 2.0)
    events += meter.from_client(b'{"jsonrpc": "2.0", "method": "notifications/cancelled",'
                                b' "params": {"requestId": 1e-400}}', 1.0, 2.5)
    got = [orjson.loads(e) for e in events]
    assert [(e["id"], e["data"]["outcome"]) for e in got] == [
        *[(f"s/{i.decode()}".replace(" ", ""), "ok") for i in reversed(ids)], ("s/1e-400", "cancelled")]


def test_subject_from_agent_mapping_and_meta():
    ident = Identity("acme", "p", "i", agent_customers=(("cursor", "cust-2"),))
    meter = SessionMeter(ident, session_id="s")
    meter.from_client(line({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {
        "name": "t", "_meta": {"clientInfo": {"name": "cursor"}}}}), 1.0, 1.0)
    [ev] = meter.from_server(line({"jsonrpc": "2.0", "id": 1, "result": {}}), 1.0, 1.0)
    assert orjson.loads(ev)["subject"] == "cust-2"
    assert Identity("acme", "p", "i").subject(None) == "unknown-agent"


def test_garbage_and_server_notifications_are_relayed_not_metered():
    meter = SessionMeter(IDENT)
    assert meter.from_client(b"not json", 1.0, 1.0) == []
    assert meter.from_server(line({"jsonrpc": "2.0", "method": "notifications/progress"}), 1.0, 1.0) == []
    assert not meter.awaiting_server
    assert meter.close(2.0, 2.0) == []  # never initialized: no session to end


class FlakySender:
    """Fails while `down` is set; records what it took."""

    def __init__(self):
        self.down = threading.Event()
        self.got: list[bytes] = []
        self.reject_next = False

    def send(self, events: list[bytes]) -> None:
        if self.down.is_set():
            raise DeliveryError("down")
        if self.reject_next:
            self.reject_next = False
            raise Rejected("400")
        self.got += events

    def close(self) -> None:
        pass


def wait_for(pred, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def test_delivery_spools_while_down_and_loses_nothing(tmp_path: Path):
    sender = FlakySender()
    delivery = Delivery(sender, Spool(tmp_path, 1 << 20), batch_size=3, retry_max_s=0.2).start()
    delivery.submit([b'{"n":1}'])
    wait_for(lambda: len(sender.got) == 1)
    sender.down.set()
    delivery.submit([b'{"n":%d}' % i for i in range(2, 9)])
    wait_for(lambda: len(Spool(tmp_path, 0).files()) >= 1)
    delivery.submit([b'{"n":9}'])
    sender.down.clear()
    wait_for(lambda: len(sender.got) == 9)
    delivery.close()
    assert sorted(orjson.loads(e)["n"] for e in sender.got) == list(range(1, 10))
    assert Spool(tmp_path, 0).files() == []


def test_spool_survives_a_restart_and_rejected_batches_are_kept_aside(tmp_path: Path):
    sender = FlakySender()
    sender.down.set()
    first = Delivery(sender, Spool(tmp_path, 1 << 20), retry_max_s=0.2).start()
    first.submit([b'{"n":1}', b'{"n":2}'])
    wait_for(lambda: bool(Spool(tmp_path, 0).files()))
    first.close()
    assert sender.got == []
    sender.down.clear()
    sender.reject_next = True
    second = Delivery(sender, Spool(tmp_path, 1 << 20)).start()
    second.submit([b'{"n":3}'])
    wait_for(lambda: len(sender.got) == 1)
    second.close()
    assert list(tmp_path.glob("rejected-*.ndjson")) and Spool(tmp_path, 0).files() == []


def test_close_makes_a_last_attempt_even_while_backing_off(tmp_path: Path):
    """The endpoint failed a moment ago and is back when the session ends (an outage that meets
    the backoff): close() tries it rather than leaving everything in the spool."""
    frozen = 0.0  # the backoff never runs out
    sender = FlakySender()
    sender.down.set()
    delivery = Delivery(sender, Spool(tmp_path, 1 << 20), linger_s=0.0, clock=lambda: frozen).start()
    delivery.submit([b'{"n":1}'])
    wait_for(lambda: bool(Spool(tmp_path, 0).files()))  # failed, spooled, retry "later"
    sender.down.clear()
    delivery.submit([b'{"n":2}'])
    delivery.close()
    delivery.close()  # again: nothing (the CLI and an HTTP transport's shutdown both close)
    assert sorted(orjson.loads(e)["n"] for e in sender.got) == [1, 2]
    assert Spool(tmp_path, 0).files() == []


def test_full_spool_keeps_memory_bounded_and_counts_drops(tmp_path: Path):
    sender = FlakySender()
    sender.down.set()
    delivery = Delivery(sender, Spool(tmp_path, 10), max_memory=2, retry_max_s=0.1).start()
    delivery.submit([b'{"n":%d}' % i for i in range(5)])
    wait_for(lambda: delivery.dropped == 3)
    delivery.close(timeout_s=2)


@pytest.mark.parametrize("endpoint", ["http://h:1", "http://h:1/v1/events"])
def test_http_sender_url(endpoint: str):
    from mcp_proxy.delivery import HttpSender
    assert HttpSender(endpoint, "k")._url == "http://h:1/v1/events"
