"""Invoices out: the delivery outbox (invoice_deliveries, written pending when an invoice is
settled) worked off to the `<prefix>.invoices` topic, signed webhooks and file directories.

Each delivery is tried a few times, then left `failed` with its error: `aforo bill run` again
retries it. A delivery is marked delivered only once acknowledged, so a crash in between sends it
again, always under the invoice number as idempotency key (Kafka header `aforo-invoice`, HTTP
`Idempotency-Key`): receivers drop repeats, so an invoice is never lost and never taken twice.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import httpx
import psycopg
from confluent_kafka import Producer

from api.webhooks.signatures import sign_generic
from config import Settings, clock
from schemas.billing_run import Invoice
from schemas.errors import NotFound
from sinks import billing as db
from sinks.invoice_files import export_files, to_json
from sinks.kafka import ensure_topics, kafka_config, produce

RETRY_DELAYS_S = (0.5, 1.0)  # between the attempts of one run: three in all
INVOICE_HEADER = "aforo-invoice"


def invoices_topic(settings: Settings) -> str:
    return f"{settings.topic_prefix}.invoices"


class _Kafka:
    def __init__(self, settings: Settings):
        ensure_topics(settings, invoices_topic(settings))
        self._topic = invoices_topic(settings)
        self._producer = Producer(kafka_config(settings, "producer"))

    def send(self, invoice: Invoice) -> None:
        errors: list[str] = []
        produce(self._producer, self._topic, to_json(invoice), key=invoice.header.customer.encode(),
                headers=[(INVOICE_HEADER, invoice.number.encode()),
                         ("aforo-tenant", invoice.header.tenant.encode())],
                on_delivery=lambda err, _msg: errors.append(str(err)) if err else None)
        if self._producer.flush(30) or errors:
            raise RuntimeError(f"not acknowledged by the broker: {errors[:1] or 'timed out'}")


def send_webhook(url: str, secret: str, invoice: Invoice) -> None:
    body = to_json(invoice)
    headers = {**sign_generic(secret, body, int(clock.now().timestamp())), "Content-Type": "application/json",
               "Idempotency-Key": invoice.number}
    try:
        reply = httpx.post(url, content=body, headers=headers, timeout=10)
    except httpx.HTTPError as exc:
        raise RuntimeError(f"{url}: {exc}") from None
    if not reply.is_success:
        raise RuntimeError(f"{url} answered {reply.status_code}: {reply.text[:200]}")


def _attempts(send: Callable[[], None]) -> tuple[int, str | None]:
    """Try, and retry after each delay: (attempts made, the last error or None once it went through)."""
    for tries, delay in enumerate((*RETRY_DELAYS_S, None), start=1):
        try:
            send()
            return tries, None
        except (RuntimeError, OSError, NotFound) as exc:
            if delay is None:
                return tries, str(exc)
            time.sleep(delay)
    raise AssertionError("unreachable")


def deliver_pending(settings: Settings, conn: psycopg.Connection, tenant: str,
                    period: str | None = None) -> list[tuple[str, str, str | None]]:
    """Deliver what the outbox holds for the tenant (the period's invoices, if given):
    [(invoice number, destination, error or None)]."""
    kafka: _Kafka | None = None
    done = []
    for invoice_id, destination in db.pending_deliveries(conn, tenant, period):
        invoice, _ = db.load_invoice(conn, invoice_id)
        if destination == "kafka":
            kafka = kafka or _Kafka(settings)
            send = partial(kafka.send, invoice)
        else:
            send = _sender(conn, tenant, destination, invoice)
        tries, error = _attempts(send)
        db.delivery_done(conn, invoice_id, destination, tries, error)
        done.append((invoice.number, destination, error))
    return done


def _sender(conn: psycopg.Connection, tenant: str, name: str, invoice: Invoice) -> Callable[[], None]:
    try:
        d = db.destination_config(conn, tenant, name)
    except NotFound as exc:
        gone = str(exc)

        def missing() -> None:
            raise NotFound(gone)
        return missing
    if d["kind"] == "webhook":
        return partial(send_webhook, d["url"], d["secret"], invoice)

    def to_directory() -> None:
        export_files(invoice, Path(d["directory"]), tuple(d["formats"]))
    return to_directory
