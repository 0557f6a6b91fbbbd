"""The one raw producer, against a broker of its own that the test restarts."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
import time
from pathlib import Path

import orjson
import pytest
from integration import env_of, raw_values

from sinks.kafka import ensure_topics
from stack import embedded

AFORO = str(Path(sys.executable).parent / "aforo")


def _lines(start: int, n: int) -> bytes:
    return b"".join(orjson.dumps({"specversion": "1.0", "id": f"e-{i}", "source": "restart",
                                  "type": "api.call", "subject": f"cust-{i % 3}",
                                  "time": "2026-12-01T00:00:00Z", "tenantid": "acme"}) + b"\n"
                    for i in range(start, start + n))


def _wait_for(condition, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


@pytest.fixture
def own_broker(settings, tmp_path):
    """A broker of this test's own: Postgres and Redis stay the shared ones (external URLs), so
    `up` starts only Kafka, and `down`/`up` restart it (memory-only: it forgets everything)."""
    s = dataclasses.replace(settings, home=tmp_path / "home", kafka_bootstrap_env=None,
                            embedded_kafka_port=embedded.free_port())
    embedded.up(s)
    try:
        yield s
    finally:
        embedded.down(s)


@pytest.mark.integration
def test_send_keeps_going_through_a_broker_restart(own_broker):
    """`aforo send -` on a stream: the broker restarts under it (and forgets the producer's id).
    It must neither crash nor hang: what was sent after the restart reaches the new broker, and
    the acknowledged count is printed."""
    s = own_broker
    ensure_topics(s)
    send = subprocess.Popen([AFORO, "send", "-"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=env_of(s))
    try:
        send.stdin.write(_lines(0, 50))
        send.stdin.flush()
        _wait_for(lambda: len(raw_values(s)) == 50)
        time.sleep(0.5)  # its delivery reports polled: the producer has a producer id of this broker
        embedded.down(s)
        embedded.up(s)
        ensure_topics(s)  # what `aforo migrate` does after a memory-only broker restarted
        out, err = send.communicate(_lines(50, 50), timeout=90)
    finally:
        if send.poll() is None:
            send.kill()
            send.wait()
    assert send.returncode == 0, err.decode()[-2000:]
    assert out.decode().strip() == "100 records acknowledged"
    # the new incarnation holds every record sent after the restart
    ids = sorted(orjson.loads(value)["id"] for value in raw_values(s))
    assert ids == sorted(f"e-{i}" for i in range(50, 100))
