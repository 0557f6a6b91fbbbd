"""The SDK's tests run against a real Aforo (`aforo serve` + the metering flow), a fault proxy in
front of it and an LLM provider stand-in, all started by Aforo's own test suite
(tests/test_sdks.py, run by `make test`), which passes their addresses in AFORO_TEST_*."""

from __future__ import annotations

import os
import time
import uuid
from decimal import Decimal
from urllib.parse import quote

import httpx
import pytest


def _env(name: str) -> str:
    value = os.environ.get(name)
    if not value:
        pytest.fail(f"{name} is not set: run these tests through Aforo's suite "
                    "(`make test`, or `pytest tests/test_sdks.py -k python` from the repository root)")
    return value


class Harness:
    def __init__(self) -> None:
        self.endpoint = _env("AFORO_TEST_ENDPOINT")
        self.key = _env("AFORO_TEST_API_KEY")  # tenant acme
        self.ai_key = _env("AFORO_TEST_AI_API_KEY")  # tenant nimbus: per-unit and per-token prices
        self.proxy = _env("AFORO_TEST_PROXY")
        self.llm = _env("AFORO_TEST_LLM")
        self.http = httpx.Client(timeout=30)

    def faults(self, *faults: str, retry_after: str = "1") -> None:
        self.http.post(self.proxy + "/_faults", json={"faults": list(faults), "retry_after": retry_after})

    def requests(self, source: str | None = None) -> list[dict]:
        """What reached the proxy (every attempt), optionally only requests carrying `source`'s events."""
        log = self.http.get(self.proxy + "/_log").json()
        return [r for r in log if source is None or any(e.get("source") == source for e in r["events"])]

    def sent(self, source: str) -> list[dict]:
        """The events of `source` the proxy saw, first copy of each id, in order."""
        seen: dict[str, dict] = {}
        for r in self.requests(source):
            for e in r["events"]:
                if e.get("source") == source:
                    seen.setdefault(e["id"], e)
        return list(seen.values())

    def wait_sent(self, source: str, n: int, timeout_s: float = 30) -> list[dict]:
        deadline = time.monotonic() + timeout_s
        while len(events := self.sent(source)) < n and time.monotonic() < deadline:
            time.sleep(0.05)
        return events

    def ledger(self, source: str, event_id: str, key: str | None = None, records: int = 1,
               timeout_s: float = 90) -> dict:
        """The event's status and records (at least `records` of them: a retry's duplicate is
        processed after the original) from Aforo's ledger (GET /v1/events/...)."""
        url = f"{self.endpoint}/v1/events/{quote(source, safe='/')}/{quote(event_id, safe='')}"
        deadline = time.monotonic() + timeout_s
        while True:
            r = self.http.get(url, headers={"Authorization": f"Bearer {key or self.key}"})
            if r.status_code == 200 and len(r.json()["records"]) >= records:
                return r.json()
            assert r.status_code in (200, 404), f"{url}: {r.status_code} {r.text}"
            assert time.monotonic() < deadline, f"{url}: not in the ledger yet ({r.text})"
            time.sleep(0.2)


@pytest.fixture(scope="session")
def harness() -> Harness:
    return Harness()


@pytest.fixture
def source() -> str:
    """Each test its own event source, so the proxy log and the ledger tell its events apart."""
    return f"sdk/python-test/{uuid.uuid4().hex[:10]}"


def money(value: str | None) -> Decimal | None:
    return None if value is None else Decimal(value)
