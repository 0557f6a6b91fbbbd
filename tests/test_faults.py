"""Faults heal: Postgres going away pauses the flow, a signal stops it cleanly, a recreated raw
topic is followed, poison quantities never reach the revenue."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from decimal import Decimal

import orjson
import pytest
from integration import env_of, ledger, outcomes, revenue_totals, send

from cli.demo import demo_stream
from config import clock
from flows.metering import run
from sinks.kafka import ensure_topics, topic_id
from sinks.postgres import connect
from stack.embedded import up

pytestmark = pytest.mark.integration
AFORO = [sys.executable, "-c", "from cli.main import main; main()"]


def ledger_count(settings) -> int:
    with connect(settings.database_url) as conn:
        return conn.execute("SELECT count(*) FROM ledger").fetchone()[0]


class Cuttable:
    """A TCP proxy in front of Postgres whose connections the test can cut (and refuse) at will:
    a failover or restart as the flow sees it, without touching the shared test server."""

    def __init__(self, target: tuple[str, int]):
        self._target = target
        self._server = socket.create_server(("127.0.0.1", 0))
        self.port = self._server.getsockname()[1]
        self._open: list[socket.socket] = []
        self._up = threading.Event()
        self._up.set()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            client, _ = self._server.accept()
            if not self._up.is_set():
                client.close()
                continue
            upstream = socket.create_connection(self._target)
            self._open += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(a: socket.socket, b: socket.socket) -> None:
        try:
            while data := a.recv(65536):
                b.sendall(data)
        except OSError:
            pass
        finally:
            for s in (a, b):
                with contextlib.suppress(OSError):
                    s.close()

    def cut(self) -> None:
        self._up.clear()
        for s in self._open:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
        self._open.clear()

    def restore(self) -> None:
        self._up.set()


def through(settings, proxy: Cuttable):
    host_port = settings.database_url.rsplit("@", 1)[1].split("/", 1)[0]
    return dataclasses.replace(settings, database_url_env=settings.database_url.replace(
        host_port, f"127.0.0.1:{proxy.port}"))


def test_losing_postgres_pauses_the_flow_and_it_resumes_with_nothing_lost(settings, tmp_path):
    host, port = settings.database_url.rsplit("@", 1)[1].split("/", 1)[0].rsplit(":", 1)
    proxy = Cuttable((host, int(port)))
    lines, expected = demo_stream(clock.now(), normal=3_000)
    send(settings, lines)
    flow = subprocess.Popen([*AFORO, "run", "--once"], env=env_of(through(settings, proxy)),
                            stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while ledger_count(settings) == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    proxy.cut()  # mid-stream: connections dropped, new ones refused
    time.sleep(3)
    assert flow.poll() is None, "the flow ended instead of waiting for Postgres"
    proxy.restore()
    assert flow.wait(120) == 0, flow.stderr.read()[-3000:]
    assert "Postgres unavailable" in flow.stderr.read()
    assert outcomes(settings) == Counter(expected)  # each record exactly once


def test_sigterm_stops_a_running_flow_cleanly_and_keeps_what_it_read(settings):
    ensure_topics(settings)
    flow = subprocess.Popen([*AFORO, "run"], env=env_of(settings), stderr=subprocess.PIPE, text=True)
    lines, expected = demo_stream(clock.now(), normal=1_000)
    send(settings, lines)
    deadline = time.monotonic() + 60
    while ledger_count(settings) < len(lines) and time.monotonic() < deadline:
        time.sleep(0.1)
    started = time.monotonic()
    flow.send_signal(signal.SIGTERM)
    assert flow.wait(30) == 0, flow.stderr.read()[-2000:]
    assert time.monotonic() - started < 10
    assert outcomes(settings) == Counter(expected)
    # started again, it finds nothing new: the ledger was its progress
    assert subprocess.run([*AFORO, "run", "--once"], env=env_of(settings)).returncode == 0
    assert outcomes(settings) == Counter(expected)


def restart_broker(stack) -> None:
    """Kill the memory-only embedded broker and start it again: every topic is gone, and comes
    back (when recreated) as a new incarnation with a new topic id, its offsets from 0."""
    embedded = dataclasses.replace(stack, kafka_bootstrap_env=None, database_url_env=None, redis_url_env=None)
    pid = orjson.loads(embedded.stack_file.read_bytes())["pids"]["kafka"]
    os.kill(pid, signal.SIGKILL)
    with contextlib.suppress(ChildProcessError):  # the stack fixture's own child: reap it
        os.waitpid(pid, 0)
    [kafka] = [s for s in up(embedded, allow_root_changes=True) if s.name == "kafka"]
    assert kafka.running and kafka.detail == "started", kafka


def test_a_broker_restart_under_the_flow_is_followed_and_totals_continue(settings, stack):
    """Issue 16: after the memory-only broker restarted under a running flow, the flow kept the
    old topic id and offsets and stalled, and running totals went wrong. Now the new incarnation
    is detected and read, its rows never mix with the old ones, and the totals continue."""
    if not (stack.home / "stack.json").exists():
        pytest.skip("needs the embedded broker (the services are external)")
    ensure_topics(settings)
    flow = subprocess.Popen([*AFORO, "run"], env=env_of(settings), stderr=subprocess.PIPE, text=True)
    now = clock.now()

    def calls(first: int, n: int) -> list[bytes]:
        return [orjson.dumps({"specversion": "1.0", "id": f"c{i}", "source": "t", "type": "api.call",
                              "subject": "cust-1", "tenantid": "acme", "time": now.isoformat()})
                for i in range(first, first + n)]

    try:
        send(settings, calls(0, 150))
        deadline = time.monotonic() + 60
        while ledger_count(settings) < 150 and time.monotonic() < deadline:
            time.sleep(0.1)
        old_id = topic_id(settings, settings.topics.raw)
        restart_broker(stack)
        send(settings, calls(150, 100))  # recreates the topics; offsets start again at 0
        deadline = time.monotonic() + 90
        while ledger_count(settings) < 250 and time.monotonic() < deadline:
            assert flow.poll() is None, flow.stderr.read()[-3000:]
            time.sleep(0.2)
    finally:
        flow.send_signal(signal.SIGTERM)
        try:
            flow.wait(30)
            stopped = True
        except subprocess.TimeoutExpired:
            flow.kill()
            stopped = False
        errors = flow.communicate()[1]
    assert stopped, f"the flow did not stop on SIGTERM: {errors[-4000:]}"
    assert "was recreated" in errors
    with connect(settings.database_url) as conn:
        ids = dict(conn.execute("SELECT raw_topic_id, count(*) FROM ledger GROUP BY 1").fetchall())
    assert ids[old_id] == 150 and sum(ids.values()) == 250 and len(ids) == 2
    # graduated api_calls: the first 100 free, then 0.002 each; the 250 calls are one total
    [api_calls] = [r for r in revenue_totals(settings) if r[3] == "api_calls"]
    assert (api_calls[6], api_calls[8]) == (250, Decimal("0.300"))
    assert sum(r[16] or 0 for r in ledger(settings)) == Decimal("0.300")


@pytest.mark.parametrize("quantity, outcome, detail", [
    (b"1180591620717411303424", "unresolved/unpriceable", "above the metric's bound"),  # 2^70
    (b"1e308", "unresolved/unpriceable", "above the metric's bound"),
    (b"1e400", "unresolved/unpriceable", "above the metric's bound"),
    (b"-5", "unresolved/unpriceable", "non-negative"),
    (b"12345678901234.5678901", "accepted/", None),
])
def test_quantities_are_read_from_their_text_and_poison_never_reaches_the_revenue(
        settings, quantity, outcome, detail):
    now = clock.now().isoformat()
    raw = (b'{"specversion": "1.0", "id": "q", "source": "t", "type": "llm.completion", "subject": '
           b'"cust-1", "tenantid": "acme", "time": "' + now.encode() + b'", "data": {"model": '
           b'"gpt-4o", "tokens": ' + quantity + b"}}")
    send(settings, [raw])
    run(settings, once=True)
    assert outcomes(settings) == Counter([outcome])
    with connect(settings.database_url) as conn:
        row = conn.execute("SELECT detail, raw FROM ledger").fetchone()
        lines = conn.execute("SELECT quantity, revenue FROM ledger_lines").fetchall()
    assert bytes(row[1]) == raw  # the raw bytes as sent, not re-encoded
    if detail is None:
        # exact: not the 12345678901234.568 a binary float would have made of it
        assert lines == [(Decimal(quantity.decode()), Decimal(quantity.decode()) * Decimal("0.00001"))]
    else:
        assert detail in row[0] and lines == [] and revenue_totals(settings) == []
