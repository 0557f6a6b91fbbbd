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


# one charge of each pricing model (a metric of its own each, priced by the same plan)
MODELS = {
    "flat": {"model": "flat", "amount": "20"},
    "per_unit": {"model": "per_unit", "unit_price": "0.0031"},
    "graduated": {"model": "graduated", "tiers": [{"up_to": 100, "unit_price": "0.5", "flat_fee": "2"},
                                                  {"up_to": 1000, "unit_price": "0.25", "flat_fee": "1"},
                                                  {"up_to": None, "unit_price": "0.1"}]},
    "volume": {"model": "volume", "tiers": [{"up_to": 500, "unit_price": "0.07"},
                                            {"up_to": None, "unit_price": "0.05", "flat_fee": "3"}]},
    "package": {"model": "package", "package_size": "75", "package_price": "2.5", "free_units": "30"},
    "stairstep": {"model": "stairstep", "tiers": [{"up_to": 300, "price": "10"},
                                                  {"up_to": None, "price": "45"}]},
    "percentage": {"model": "percentage", "rate": "2.9", "fixed_fee": "0.3", "min_per_event": "0.5",
                   "max_per_event": "4"},
    "matrix": {"model": "matrix", "dimensions": ["region"],
               "prices": [{"match": {"region": "eu"}, "unit_price": "0.013"},
                          {"match": {"region": "us"}, "unit_price": "0.011"}], "default_unit_price": "0.02"},
}
