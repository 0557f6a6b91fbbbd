"""The built-in demo stream: normal traffic plus every kind of trouble the gates must catch."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson

TENANTS = {"acme": ["cust-1", "cust-2", "cust-3"], "globex": ["cust-a", "cust-b"]}
TYPES = ["api.call", "api.call", "llm.completion", "storage.write"]
CATALOG = Path(__file__).with_name("demo_catalog.json")


def _data(rnd: random.Random, kind: str) -> dict:
    if kind == "llm.completion":
        return {"tokens": rnd.randint(10, 2000), "model": rnd.choice(["gpt-4o", "gpt-4o-mini"])}
    if kind == "storage.write":
        return {"gb": rnd.randint(1, 120)}
    return {"route": "/v2/search", "status": 200}


def _rfc3339(t: datetime) -> str:
    return t.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def demo_catalog() -> dict:
    return orjson.loads(CATALOG.read_bytes())


def demo_stream(now: datetime, normal: int = 2000, seed: int = 7) -> tuple[list[bytes], dict[str, int]]:
    """Lines to send now, and the count of records expected per `status/reason`."""
    rnd = random.Random(seed)
    lines: list[bytes] = []
    expected: dict[str, int] = {}

    def add(line: bytes, outcome: str) -> None:
        lines.append(line)
        expected[outcome] = expected.get(outcome, 0) + 1

    def event(i: int, when: datetime, **extra) -> dict:
        tenant = rnd.choice(list(TENANTS))
        kind = rnd.choice(TYPES)
        return {"specversion": "1.0", "id": f"evt-{seed}-{i}", "source": "demo/sdk", "type": kind,
                "subject": rnd.choice(TENANTS[tenant]), "time": _rfc3339(when),
                "tenantid": tenant, "data": _data(rnd, kind), **extra}

    accepted = [event(i, now - timedelta(seconds=rnd.randint(0, 3600))) for i in range(normal)]
    for e in accepted:
        add(orjson.dumps(e), "accepted/")
    retried = rnd.sample(accepted, normal // 50 + normal // 200)  # disjoint, so counts are exact
    for e in retried[: normal // 50]:  # retries of the very same payload
        add(orjson.dumps(e), "duplicate/same_payload")
    for e in retried[normal // 50 :]:  # same id, different payload
        add(orjson.dumps({**e, "data": {**e["data"], "note": "resent, altered"}}), "duplicate/conflict")
    n = normal
    for _ in range(normal // 100):
        add(orjson.dumps(event(n, now - timedelta(hours=30))), "late/late_arrival")
        n += 1
    for _ in range(5):
        add(orjson.dumps(event(n, now + timedelta(minutes=10))), "rejected/future_timestamp")
        n += 1
    for _ in range(5):
        add(orjson.dumps(event(n, now - timedelta(days=100))), "rejected/too_old")
        n += 1
    for _ in range(10):  # usage from a customer the catalog does not know yet
        add(orjson.dumps(event(n, now, subject="cust-new")), "unresolved/unknown_customer")
        n += 1
    for _ in range(10):
        add(orjson.dumps(event(n, now, type="page.view")), "accepted/unmetered")
        n += 1
    add(orjson.dumps(event(n, now, tenantid="initech")), "rejected/unknown_tenant")
    n += 1
    for bad in (b"not json at all", b"[1, 2, 3]", b'{"unterminated": ', b"\xff\xfe\x00garbage"):
        add(bad, "rejected/malformed")
    broken = event(n, now)
    for missing in ("id", "subject", "tenantid"):
        add(orjson.dumps({k: v for k, v in broken.items() if k != missing}), "rejected/schema")
    add(orjson.dumps({**broken, "specversion": "0.3"}), "rejected/schema")
    add(orjson.dumps({**broken, "time": "yesterday"}), "rejected/schema")
    add(orjson.dumps({**broken, "data": [1, 2]}), "rejected/schema")
    rnd.shuffle(lines)
    return lines, expected


# --- billing history: a whole past period, so the demo has something to invoice ---------------------

# per (tenant, customer): api calls, llm completions and storage writes in the billed period
HISTORY = {
    ("acme", "cust-1"): (400, 30, 4),
    ("acme", "cust-2"): (560, 5, 0),  # over its quota of 500 (overage `block`): 60 calls not billed
    ("acme", "cust-3"): (120, 8, 1),  # far below its minimum of 25.00: a true-up, 15% off, NY tax
    ("globex", "cust-a"): (1300, 20, 3),  # 1,000 prepaid calls drawn, VAT 21%
    ("globex", "cust-b"): (150, 0, 0),  # a 5.00 coupon on api calls, reverse charge
}
LATENESS = timedelta(hours=24)  # operators/timestamp_gate.py: older events are held as late


def billable_period(now: datetime) -> str:
    """The latest period whose end plus the lateness allowance has passed (on 2026-12-01 that is
    2026-10: November's events may still arrive on time until 2026-12-02)."""
    month = (now - LATENESS).replace(day=1)
    return (month - timedelta(days=1)).strftime("%Y-%m")


def billing_history(period: str) -> list[tuple[bytes, datetime]]:
    """The demo customers' usage of a past period, each line with the ingestion time it is sent
    with: a second after its event time, so the gates see it on time (an event ingested today
    with last month's time would be held as late). The same period always gives the same lines,
    so a second demo sends duplicates, never more usage."""
    rnd = random.Random(f"history-{period}")
    start = datetime.strptime(period, "%Y-%m").replace(tzinfo=UTC)
    seconds = int(((start + timedelta(days=32)).replace(day=1) - start).total_seconds())
    lines = []
    for (tenant, customer), counts in HISTORY.items():
        for kind, n in zip(("api.call", "llm.completion", "storage.write"), counts, strict=True):
            for i in range(n):
                when = start + timedelta(seconds=rnd.randrange(seconds))
                event = {"specversion": "1.0", "id": f"hist-{period}-{customer}-{kind}-{i}",
                         "source": "demo/history", "type": kind, "subject": customer, "time": _rfc3339(when),
                         "tenantid": tenant, "data": _data(rnd, kind)}
                lines.append((when, orjson.dumps(event)))
    lines.sort()
    return [(line, when + timedelta(seconds=1)) for when, line in lines]


def send_timed(settings, lines: list[tuple[bytes, datetime]]) -> int:
    """Produce each line with its own ingestion time (the raw record's Kafka timestamp)."""
    from sinks.kafka import ensure_topics
    from sinks.raw_producer import RawProducer
    ensure_topics(settings)
    producer = RawProducer(settings)
    try:
        acks = producer.send(((i, line) for i, (line, _) in enumerate(lines)), "sdk",
                             timestamp_ms=lambda i: int(lines[i][1].timestamp() * 1000))
    finally:
        producer.close()
    if acks.failed:
        raise RuntimeError(f"{acks.failed} records not acknowledged, e.g. {next(iter(acks.errors.values()))}")
    return acks.acked
