"""The monitoring dataflow, stage by stage:

    enriched topic -> parse -> dedup -> anomaly -----------------> alerts (Postgres `alerts`
                                     `-> quotas -> quota_pacing -'       and <prefix>.alerts)

A second flow rather than more steps of the metering flow: the metering hot path stays as it is,
monitoring runs, fails and recovers on its own, and it can be replayed from the enriched topic at
any time without touching the ledger. Every stateful step is keyed by (tenant, customer): a
customer's events keep the enriched topic's order, which is their raw partition's order, and
every decision depends on that order and the events' data only, never on the wall clock or on
how the input happened to be batched.

Every stage is a call into `operators/`; this file only wires them and supplies the quotas
(one catalog check per batch: they travel with each event to its customer's pacing).
"""

from __future__ import annotations

from functools import partial

import bytewax.operators as op
from bytewax.connectors.kafka import KafkaSource
from bytewax.dataflow import Dataflow

from config import Settings
from flows.execution import execute
from flows.stateful import stateful
from operators.anomaly import Alert, CustomerMonitor, FirstDelivery, Usage, parse_enriched
from operators.quota_pacing import Quota, QuotaPacing
from sinks.alerts import AlertSink, QuotaCatalog, ensure_alerts_topic
from sinks.kafka import ensure_topics, kafka_config, topic_id


def _first(state: FirstDelivery, values: list[Usage]) -> list[Usage]:
    return [u for u in values if state.first(u)]


def _anomalies(state: CustomerMonitor, values: list[Usage]) -> list[Alert]:
    # One event at a time: the outcome must not depend on where the batches happen to split.
    return [a for u in values for a in state.observe(u)]


def _pacing(state: QuotaPacing, values: list[tuple[Usage, dict[str, Quota]]]) -> list[Alert]:
    return [a for u, quotas in values for a in state.observe(u, quotas)]


def _with_quotas(catalog: QuotaCatalog, batch: list[Usage]) -> list[tuple[Usage, dict[str, Quota]]]:
    """One catalog check per batch, not one per customer."""
    quotas = catalog.current()
    return [(u, quotas.get((u.tenant, u.subscription), {})) for u in batch]


def _customer_key(u: Usage) -> str:
    return f"{u.tenant}\x1f{u.customer}"


def build(settings: Settings, *, once: bool) -> Dataflow:
    # The installation's connection properties (TLS, SASL, ...): the admin role's, since Bytewax
    # also builds an admin client (a producer instance) from them.
    client = kafka_config(settings, "admin")
    source = KafkaSource(client.pop("bootstrap.servers").split(","), [settings.topics.enriched],
                         tail=not once, batch_size=settings.batch_size, add_config=client)
    flow = Dataflow("monitoring")
    messages = op.input("enriched", flow, source)
    usage = op.filter_map("parse", messages, lambda msg: parse_enriched(msg.value or b""))
    by_customer = op.key_on("customer", usage, _customer_key)
    firsts = stateful("dedup", by_customer, FirstDelivery, _first)
    anomalies = stateful("anomaly", firsts, CustomerMonitor, _anomalies)
    with_quotas = op.flat_map_batch("quotas", op.key_rm("unkey_dedup", firsts),
                                    partial(_with_quotas, QuotaCatalog(settings.database_url)))
    by_customer_quotas = op.key_on("customer_quotas", with_quotas, lambda x: _customer_key(x[0]))
    pacing = stateful("quota_pacing", by_customer_quotas, QuotaPacing, _pacing)
    alerts = op.key_rm("unkey", op.merge("alerts", anomalies, pacing))
    op.output("alerts_out", alerts, AlertSink(settings))
    return flow


def recovery_name(settings: Settings) -> str:
    """Recovery state belongs to one incarnation of the enriched topic; a new one starts fresh
    (and replays it whole, which the idempotent alert sink absorbs)."""
    return f"monitoring-{topic_id(settings, settings.topics.enriched)}"


def run(settings: Settings, *, once: bool) -> None:
    """Run the flow with recovery: after a crash it resumes from its last snapshot. With once,
    it reads the enriched topic to its end and exits; open windows stay open until later events
    close them (end of input is not event time)."""
    ensure_topics(settings)
    ensure_alerts_topic(settings)
    flow = build(settings, once=once)
    execute(flow, settings, recovery_name(settings))
