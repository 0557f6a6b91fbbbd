"""The clients against a real Aforo: delivery, tier, revenue, batching, retries, refusals,
overflow, the spool across a killed process, flush on close, the asyncio client and @metered."""

from __future__ import annotations

import asyncio
import itertools
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from decimal import Decimal

import pytest
from conftest import money

from aforo_sdk import Aforo, AsyncAforo, DeliveryError, SpoolLocked, __version__, context
from aforo_sdk._delivery import backoff_s, retry_after_s
from aforo_sdk._events import encode, new_event


def _closed_port() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}"


def test_meter_lands_in_the_ledger_as_tier_sdk_with_its_revenue(harness, source):
    with Aforo(harness.proxy, harness.ai_key, source=source) as aforo:
        ids = [aforo.meter("api.call", "ai-cust-1", {"route": "/v1/search"}) for _ in range(3)]
        assert aforo.flush()
    requests = harness.requests(source)
    assert len(requests) == 1 and len(requests[0]["events"]) == 3  # one batch
    assert requests[0]["sdk"] == f"python/{__version__}"
    for event_id in ids:
        event = harness.ledger(source, event_id, harness.ai_key)
        assert event["status"] == "accepted"
        [record] = event["records"]
        assert record["tier"] == "sdk"
        # nimbus's plan: api_calls per unit 0.001, cost 0.0002
        assert (money(record["revenue"]), money(record["cost"])) == (Decimal("0.001"), Decimal("0.0002"))


def test_batches_close_on_size_and_on_linger(harness, source):
    aforo = Aforo(harness.proxy, harness.key, source=source, batch_size=10, linger_s=3600)
    for i in range(25):
        aforo.meter("api.call", "cust-1", {"i": i})
    harness.wait_sent(source, 20)
    assert [len(r["events"]) for r in harness.requests(source)] == [10, 10]  # the 5 linger
    aforo.close()
    assert [len(r["events"]) for r in harness.requests(source)] == [10, 10, 5]

    lingering = Aforo(harness.proxy, harness.key, source=source, linger_s=0.2)
    lingering.meter("api.call", "cust-1")
    assert len(harness.wait_sent(source, 26)) == 26  # sent by the linger alone, no flush
    lingering.close()


def test_retries_honour_retry_after_and_a_retry_is_a_duplicate_never_a_second_charge(harness, source):
    harness.faults("503", "429", "drop", "ack_lost", retry_after="1")
    with Aforo(harness.proxy, harness.ai_key, source=source, backoff_base_s=0.01) as aforo:
        event_id = aforo.meter("api.call", "ai-cust-2")
        assert aforo.flush(30)
        assert aforo.stats.retries == 4 and aforo.stats.delivered == 1
    attempts = harness.requests(source)
    assert [a["fault"] for a in attempts] == ["503", "429", "drop", "ack_lost", "pass"]
    assert {e["id"] for a in attempts for e in a["events"]} == {event_id}  # one id, created once
    gaps = [b["t"] - a["t"] for a, b in itertools.pairwise(attempts)]
    assert gaps[0] >= 0.95 and gaps[1] >= 0.95  # Retry-After: 1 after the 503 and the 429
    event = harness.ledger(source, event_id, harness.ai_key, records=2)
    assert event["status"] == "accepted"
    assert [(r["status"], r["tier"]) for r in event["records"]] == [("accepted", "sdk"), ("duplicate", "sdk")]
    assert [money(r["revenue"]) for r in event["records"]] == [Decimal("0.001"), None]


def test_a_refused_event_is_not_retried_and_a_refused_batch_is_split(harness, source):
    errors: list[DeliveryError] = []
    harness.faults("400")
    with Aforo(harness.proxy, harness.key, source=source, on_error=errors.append) as aforo:
        aforo.meter("api.call", "cust-1")
        aforo.flush()
        assert len(harness.requests(source)) == 1  # never retried
        assert [(e.reason, e.status, len(e.lines)) for e in errors] == [("rejected", 400, 1)]
        assert aforo.stats.rejected == 1

        harness.faults("400")  # one bad event must not sink its neighbours: halves are sent again
        ids = [aforo.meter("api.call", "cust-1", {"n": n}) for n in range(4)]
        aforo.flush()
    assert [len(r["events"]) for r in harness.requests(source)[1:]] == [4, 2, 2]
    assert len(errors) == 1
    assert {harness.ledger(source, i)["status"] for i in ids} == {"accepted"}


def test_queue_overflow_drops_the_newest_and_says_so(harness, source):
    errors: list[DeliveryError] = []
    aforo = Aforo(harness.proxy, harness.key, source=source, max_queue=2, linger_s=3600,
                  on_error=errors.append)
    for n in range(3):
        aforo.meter("api.call", "cust-1", {"n": n})
    assert [(e.reason, len(e.lines)) for e in errors] == [("overflow", 1)]
    assert b'"n":2' in errors[0].lines[0] and aforo.stats.dropped == 1
    aforo.close()
    assert [e["data"]["n"] for e in harness.sent(source)] == [0, 1]


def test_blocking_overflow_waits_for_room(harness, source):
    aforo = Aforo(harness.proxy, harness.key, source=source, max_queue=1, batch_size=1, linger_s=0,
                  overflow="block", block_timeout_s=30)
    for n in range(5):
        aforo.meter("api.call", "cust-1", {"n": n})
    aforo.close()
    assert aforo.stats.dropped == 0 and [e["data"]["n"] for e in harness.sent(source)] == [0, 1, 2, 3, 4]


def test_retries_exhausted_without_a_spool_are_reported_as_dropped():
    errors: list[DeliveryError] = []
    aforo = Aforo(_closed_port(), "afk_x_y", max_retries=2, backoff_base_s=0.01, on_error=errors.append)
    aforo.meter("api.call", "cust-1")
    aforo.flush(5)
    aforo.close(1)
    assert [(e.reason, len(e.lines)) for e in errors] == [("dropped", 1)]
    assert aforo.stats.retries == 2 and aforo.stats.requests == 3


def test_spooled_events_survive_a_killed_process_and_are_sent_by_the_next(harness, source, tmp_path):
    spool = tmp_path / "spool"
    script = textwrap.dedent(f"""
        import os, signal
        from aforo_sdk import Aforo
        aforo = Aforo({_closed_port()!r}, "afk_x_y", source={source!r}, spool_dir={str(spool)!r},
                      batch_size=2, backoff_base_s=0.01)
        for n in range(5):
            print(aforo.meter("api.call", "cust-1", {{"n": n}}), flush=True)
        os.kill(os.getpid(), signal.SIGKILL)
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert done.returncode == -signal.SIGKILL, done.stderr
    ids = done.stdout.split()
    assert len(ids) == 5 and sum(p.read_bytes().count(b"\n") for p in spool.glob("seg-*")) == 5

    with Aforo(harness.proxy, harness.key, source=source, spool_dir=spool) as aforo:
        with pytest.raises(SpoolLocked):
            Aforo(harness.proxy, harness.key, spool_dir=spool)
        assert aforo.flush()
    assert [e["id"] for e in harness.sent(source)] == ids  # in order
    assert not list(spool.glob("seg-*"))
    assert {harness.ledger(source, i)["status"] for i in ids} == {"accepted"}


def test_close_flushes_what_is_queued(harness, source):
    aforo = Aforo(harness.proxy, harness.key, source=source, linger_s=3600)
    event_id = aforo.meter("api.call", "cust-1")
    aforo.close()
    assert [e["id"] for e in harness.sent(source)] == [event_id]
    with pytest.raises(RuntimeError, match="closed"):
        aforo.meter("api.call", "cust-1")


def test_events_are_checked_when_created(harness):
    with Aforo(harness.proxy, harness.key) as aforo:
        with pytest.raises(ValueError, match="subject"):
            aforo.meter("api.call")
        with pytest.raises(ValueError, match=r"NaN|Out of range"):
            aforo.meter("api.call", "cust-1", {"x": float("nan")})
        with pytest.raises(ValueError, match="mapping"):
            aforo.meter("api.call", "cust-1", [1, 2])
        with pytest.raises(ValueError, match="bytes"):
            aforo.meter("api.call", "cust-1", {"pad": "x" * (1 << 20)})
    event = new_event("usage", "c", {"amount": Decimal("0.1000000000000000055511151231257827")}, source="s")
    assert b'"amount":"0.1000000000000000055511151231257827"' in encode(event)  # exact, as a string


def test_backoff_is_jittered_exponential_and_honours_retry_after():
    assert backoff_s(0, 0.2, 30, None, rnd=lambda: 1.0) == 0.2
    assert backoff_s(3, 0.2, 30, None, rnd=lambda: 0.5) == 0.8
    assert backoff_s(20, 0.2, 30, None, rnd=lambda: 1.0) == 30  # capped
    assert backoff_s(0, 0.2, 30, 7.0, rnd=lambda: 1.0) == 7.0
    assert retry_after_s("3") == 3.0 and retry_after_s("soon") is None
    assert 0 <= retry_after_s("Wed, 21 Oct 2015 07:28:00 GMT") == 0  # a date in the past: now


def test_async_client_delivers(harness, source):
    async def main() -> list[str]:
        async with AsyncAforo(harness.proxy, harness.ai_key, source=source) as aforo:
            ids = [aforo.meter("api.call", "ai-cust-1") for _ in range(3)]
            assert await aforo.flush()
            later = aforo.meter("api.call", "ai-cust-1")
        return [*ids, later]  # aclose() flushed the last one

    ids = asyncio.run(main())
    assert [e["id"] for e in harness.sent(source)] == ids
    records = [harness.ledger(source, i, harness.ai_key)["records"][0] for i in ids]
    assert {(r["status"], r["tier"], r["revenue"]) for r in records} == {("accepted", "sdk", "0.001")}


def test_metered_decorator_and_context_manager(harness, source):
    with Aforo(harness.proxy, harness.key, source=source) as aforo:
        @aforo.metered("report.generate", quantity=len)
        def report(rows: int) -> list[int]:
            return list(range(rows))

        @aforo.metered("report.async", customer=lambda who: who)
        async def async_report(who: str) -> None:
            raise KeyError(who)

        with context(customer="cust-2", agent="nightly"):
            report(3)
        with pytest.raises(KeyError):
            asyncio.run(async_report("cust-3"))
        with aforo.metered("job.run", customer="cust-1", data={"queue": "q1"}) as m:
            m.quantity = Decimal("2.5")
            m.data["rows"] = 7
        report(1)  # no customer anywhere: not metered, counted
        assert aforo.stats.unattributed == 1
        aforo.flush()
    events = {e["type"]: e for e in harness.sent(source)}
    assert set(events) == {"report.generate", "report.async", "job.run"}
    gen, failed, job = events["report.generate"], events["report.async"], events["job.run"]
    assert (gen["subject"], gen["data"]["outcome"], gen["data"]["quantity"]) == ("cust-2", "ok", 3)
    assert gen["data"]["function"].endswith("report") and gen["data"]["duration_ms"] >= 0
    assert (failed["subject"], failed["data"]["outcome"], failed["data"]["error"]) == (
        "cust-3", "error", "KeyError")
    assert job["subject"] == "cust-1" and job["data"] == {"queue": "q1", "rows": 7, "outcome": "ok",
                                                          "duration_ms": job["data"]["duration_ms"],
                                                          "quantity": "2.5"}


def test_a_forked_child_gets_its_own_sender(harness, source):
    aforo = Aforo(harness.proxy, harness.key, source=source, linger_s=0.05)
    aforo.meter("api.call", "cust-1", {"who": "parent"})
    pid = os.fork()
    if pid == 0:  # the child: meter, close, and leave without running the parent's tests
        aforo.meter("api.call", "cust-1", {"who": "child"})
        aforo.close()
        os._exit(0)
    assert os.waitpid(pid, 0)[1] == 0
    aforo.close()
    deadline = time.monotonic() + 10
    while {e["data"]["who"] for e in harness.sent(source)} != {"parent", "child"}:
        assert time.monotonic() < deadline, harness.sent(source)
        time.sleep(0.05)
