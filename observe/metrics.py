"""Every Prometheus metric Aforo exports, in one registry, and the small functions that record them.

The registry is prometheus_client's default one: the process and GC collectors and Bytewax's own
`bytewax_kafka_consumer_lag` live there too, so one scrape of a process shows all of it.

Label cardinality (what a label can take, and so how many series a metric can grow to):

| label | values | bound |
|---|---|---|
| `tenant` | the catalog's tenants; `_other` for any other id (a rejected event's) | tenants + 1 |
| `status`, `reason` | the pipeline's terminal statuses and reasons (README: the gates) | ~20 pairs |
| `currency` | currencies of the catalog's plans | a handful |
| `partition` | partitions of the raw topic | AFORO_RAW_PARTITIONS |
| `route`, `method` | the API's route templates, `unmatched` for 404s | ~15 |
| `status` (HTTP) | response status codes | ~15 |
| `provider` | webhook providers | 6 |
| `cache`, `layer`, `result` | entitlements/dedup x process/redis/postgres x hit/miss | 12 |
| `error` | exception class names of failed ledger writes | a handful |
| `kind` | alert kinds; limiter budgets | 5; 3 |

Customers, subscriptions, event ids and sources are never labels: they are unbounded. Figures
here are for watching, not billing: amounts are floats and a record processed again after a
restart is counted again; the ledger is the record of what happened.
"""

from __future__ import annotations

import time
from collections import Counter as Tally
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from decimal import Decimal

from prometheus_client import REGISTRY, Counter, Gauge, Histogram, disable_created_metrics
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

disable_created_metrics()  # a `_created` series per labelled counter doubles the series for no use

OTHER_TENANT = "_other"
_known_tenants: frozenset[str] = frozenset()

# --- the metering flow ------------------------------------------------------------------------

RECORDS = Counter("aforo_records", "Raw records decided, by terminal status and reason.",
                  ["tenant", "status", "reason"])
REVENUE_ACCRUED = Counter("aforo_revenue_accrued", "Marginal revenue of accepted events (positive "
                          "marginals), in the plan's currency.", ["tenant", "currency"])
REVENUE_CREDITED = Counter("aforo_revenue_credited", "Negative marginal revenue (a `latest` metric "
                           "going down), as a positive amount.", ["tenant", "currency"])
LEDGER_WRITE_SECONDS = Histogram("aforo_ledger_write_seconds", "Time to write one batch to the ledger "
                                 "(one transaction, commit included).",
                                 buckets=(.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30))
LEDGER_BATCH_RECORDS = Histogram("aforo_ledger_batch_records", "Records per ledger write.",
                                 buckets=(1, 10, 50, 100, 250, 500, 1000, 2000, 5000, 10000, 50000))
LEDGER_WRITE_ERRORS = Counter("aforo_ledger_write_errors", "Ledger writes that failed (each failed "
                              "attempt, retried or not), by exception class.", ["error"])
SNAPSHOT_SECONDS = Histogram("aforo_snapshot_seconds", "Time a sink took to make an epoch durable "
                             "at a snapshot (flushing the output topics).", ["sink"],
                             buckets=(.001, .005, .01, .05, .1, .25, .5, 1, 2.5, 5, 10, 30))
CACHE_LOOKUPS = Counter("aforo_cache_lookups", "Lookups per cache layer: a miss falls through to the "
                        "next layer (process, then redis, then postgres).", ["cache", "layer", "result"])
RAW_LAG = Gauge("aforo_raw_lag_records", "Raw records not yet in the ledger: the partition's log end "
                "offset minus the next offset the ledger is waiting for.", ["partition"])
HELD_EVENTS = Gauge("aforo_held_events", "Held events (late, unresolved) awaiting a reconciliation "
                    "decision.", ["tenant", "reason"])

# --- the monitoring flow ------------------------------------------------------------------------

ALERTS_FIRED = Counter("aforo_alerts_fired", "New alerts written (a replayed alert is not new).",
                       ["tenant", "kind"])

# --- the API --------------------------------------------------------------------------------------

HTTP_REQUESTS = Counter("aforo_http_requests", "HTTP requests answered.", ["route", "method", "status"])
HTTP_SECONDS = Histogram("aforo_http_request_duration_seconds", "Time from a request's arrival to the "
                         "start of its response.", ["route", "method"],
                         buckets=(.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60))
WEBHOOK_VERIFICATION_FAILURES = Counter("aforo_webhook_verification_failures", "Webhook requests "
                                        "whose signature was refused.", ["provider"])
RATE_LIMITED = Counter("aforo_rate_limited", "Requests refused with 429, by budget.", ["kind"])

# --- the MCP proxy ------------------------------------------------------------------------------

MCP_SESSIONS = Counter("aforo_mcp_sessions", "MCP sessions metered (session.start events).")
MCP_TOOL_CALLS = Counter("aforo_mcp_tool_calls", "MCP tool calls metered, by outcome.", ["outcome"])
MCP_EVENTS = Counter("aforo_mcp_events", "Metered events the proxy handed on: delivered, rejected by "
                     "the endpoint (kept aside in the spool), or dropped (spool and memory full).",
                     ["result"])
MCP_SPOOL_BYTES = Gauge("aforo_mcp_spool_bytes", "Bytes of undelivered events waiting in the spool.")
MCP_QUEUED_EVENTS = Gauge("aforo_mcp_queued_events", "Events waiting in memory for the next delivery.")

# --- any process -----------------------------------------------------------------------------------

READY = Gauge("aforo_ready", "1 when the check passed at the last readiness evaluation, else 0.",
              ["check"])


# --- what the flows call ------------------------------------------------------------------------

def known_tenants(tenants: Iterable[str]) -> None:
    """The catalog's tenants: the only values the `tenant` label takes (the rest are `_other`).
    Called when the catalog is (re)loaded."""
    global _known_tenants
    _known_tenants = frozenset(tenants)


def tenant_label(tenant: str | None) -> str:
    return tenant if tenant in _known_tenants else OTHER_TENANT


def records_decided(decisions: Iterable[tuple[str | None, str, str | None]]) -> None:
    """(tenant, status, reason) of each record of a batch, once the batch is decided."""
    for (tenant, status, reason), n in Tally(decisions).items():
        RECORDS.labels(tenant_label(tenant), status, reason or "").inc(n)


def revenue_accrued(amounts: Iterable[tuple[str, str, Decimal]]) -> None:
    """(tenant, currency, marginal revenue) of each rated event of a batch, once it is durable:
    summed per batch first, so a batch costs a few counter updates, not one per event."""
    accrued: dict[tuple[str, str], Decimal] = {}
    credited: dict[tuple[str, str], Decimal] = {}
    for tenant, currency, amount in amounts:
        if amount:
            into = accrued if amount > 0 else credited
            into[tenant, currency] = into.get((tenant, currency), 0) + abs(amount)
    for counter, sums in ((REVENUE_ACCRUED, accrued), (REVENUE_CREDITED, credited)):
        for (tenant, currency), total in sums.items():
            counter.labels(tenant_label(tenant), currency).inc(float(total))


def cache_lookups(cache: str, layer: str, hits: int, misses: int) -> None:
    if hits:
        CACHE_LOOKUPS.labels(cache, layer, "hit").inc(hits)
    if misses:
        CACHE_LOOKUPS.labels(cache, layer, "miss").inc(misses)


@contextmanager
def ledger_write(records: int) -> Iterator[None]:
    """Around one ledger write attempt: its latency and size, or its failure."""
    started = time.perf_counter()
    try:
        yield
    except BaseException as exc:
        LEDGER_WRITE_ERRORS.labels(type(exc).__name__).inc()
        raise
    LEDGER_WRITE_SECONDS.observe(time.perf_counter() - started)
    LEDGER_BATCH_RECORDS.observe(records)


@contextmanager
def snapshot(sink: str) -> Iterator[None]:
    """Around a sink's snapshot (the epoch barrier)."""
    started = time.perf_counter()
    yield
    SNAPSHOT_SECONDS.labels(sink).observe(time.perf_counter() - started)


def alert_fired(tenant: str, kind: str) -> None:
    """A new alert, once committed. Its tenant is a catalog tenant (alerts come from accepted
    events only), so it is used as the label as is."""
    ALERTS_FIRED.labels(tenant, kind).inc()


def exposition() -> tuple[bytes, str]:
    """The scrape body and its content type."""
    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST
