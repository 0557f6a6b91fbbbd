"""Helpers of the bill run's integration tests: events of a fixed past period, sent on time (each
ingested a second after its event time, as RawProducer's timestamp allows), and the pipeline clock
moved past the period's end plus the lateness allowance. Nothing depends on today's date."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import orjson
from click.testing import CliRunner
from integration import env_of

import config
from cli.demo import send_timed
from cli.main import main
from schemas.catalog import Catalog
from sinks.catalog import apply_catalog
from sinks.postgres import connect

PERIOD = "2026-03"
START = datetime(2026, 3, 1, tzinfo=UTC)
END = datetime(2026, 4, 1, tzinfo=UTC)


def event(i: int | str, customer: str, when: datetime, type_: str = "api.call", data: dict | None = None,
          tenant: str = "acme") -> bytes:
    return orjson.dumps({"specversion": "1.0", "id": f"b{i}", "source": "billing-test", "type": type_,
                         "subject": customer, "tenantid": tenant, "data": data or {},
                         "time": when.isoformat().replace("+00:00", "Z")})


def send_at(settings: config.Settings, lines: list[tuple[bytes, datetime]]) -> None:
    """Produce each line with its own ingestion time."""
    assert send_timed(settings, lines) == len(lines)


def on_time(lines: list[tuple[bytes, datetime]]) -> list[tuple[bytes, datetime]]:
    """(line, event time) -> (line, ingested a second later)."""
    return [(line, when + timedelta(seconds=1)) for line, when in lines]


def clock_past(period_end: datetime, tenant: str = "acme",
               customer: str = "cust-3") -> tuple[bytes, datetime]:
    """One on-time event two days after a period's end: the pipeline's clock then says the period
    and its lateness allowance are over."""
    at = period_end + timedelta(days=2)
    return event(f"clock-{at.date()}-{tenant}", customer, at, tenant=tenant), at + timedelta(seconds=1)


def apply(settings: config.Settings, catalog: dict) -> None:
    with connect(settings.database_url) as conn:
        apply_catalog(conn, Catalog.model_validate(catalog))


def cli(settings: config.Settings, *args: str, code: int = 0) -> str:
    result = CliRunner().invoke(main, list(args), env={**env_of(settings), "AFORO_ACTOR": "billing-test"})
    assert result.exit_code == code, result.output + repr(result.exception)
    return result.output


def ledger_revenue(settings: config.Settings, customer: str, period: str = PERIOD) -> dict:
    """metric -> (events, revenue) of the customer's accepted lines billed in the period."""
    with connect(settings.database_url) as conn:
        return {m: (n, r) for m, n, r in conn.execute(
            "SELECT x.metric, count(*), sum(x.revenue) FROM ledger l JOIN ledger_lines x"
            " USING (raw_topic_id, raw_partition, raw_offset) WHERE l.customer = %s AND l.period = %s"
            " AND l.status = 'accepted' GROUP BY 1", (customer, period))}
