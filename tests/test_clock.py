"""One clock: the raw records Aforo produces carry config.clock's time as their Kafka timestamp
(the pipeline's ingestion time), so moving the clock moves ingestion with it."""

from __future__ import annotations

from datetime import UTC, datetime

import orjson
import pytest
import time_machine
from integration import messages, send

from config import clock
from flows.metering import run
from sinks.postgres import connect
from sinks.reconcile import awaiting_reinjection, decide, reinject

pytestmark = pytest.mark.integration

AT = datetime(2027, 1, 1, 0, 30, tzinfo=UTC)


def raw_timestamps(settings) -> list[int]:
    return [m.timestamp()[1] for m in messages(settings, (settings.topics.raw,))]


def test_sent_and_reinjected_records_carry_the_clocks_time(settings):
    at_ms = int(AT.timestamp() * 1000)
    with time_machine.travel(AT, tick=False):
        assert clock.now() == AT and clock.now_ms() == at_ms
        # 30 hours before the clock: late by the ingestion time the clock stamped, not by today's
        send(settings, [orjson.dumps({"specversion": "1.0", "id": "c1", "source": "clock", "type": "api.call",
                                      "subject": "cust-1", "tenantid": "acme",
                                      "time": "2026-12-30T18:30:00Z"})])
        run(settings, once=True)
        with connect(settings.database_url) as conn:
            [(held_id, status, ingested)] = conn.execute(
                "SELECT id, status, ingested_at FROM ledger").fetchall()
            assert (status, ingested) == ("late", AT)
            decide(conn, [held_id], "approve", "test", None)
            conn.commit()
            reinject(settings, awaiting_reinjection(conn))
    assert raw_timestamps(settings) == [at_ms, at_ms]
