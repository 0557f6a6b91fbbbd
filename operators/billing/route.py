"""Stage 9, Route: where the finished invoice goes. Always the `<prefix>.invoices` topic (keyed
by customer), then the tenant's destinations by name: signed webhooks and file directories.

Routing is decided here and recorded with the invoice; the deliveries themselves happen once
Settle has numbered it (they carry its number, the idempotency key), from an outbox written in
the settling transaction, so an invoice is never sent without its number, lost, or sent twice.
"""

from __future__ import annotations

from collections.abc import Sequence

from schemas.billing_run import BillingStageError, Destination, Draft, Route


def route(draft: Draft, destinations: Sequence[Destination]) -> Draft:
    if draft.totals is None:
        raise BillingStageError("the invoice has no totals: Tax has not run")
    routes = [Route(destination="kafka", kind="kafka")]
    routes += [Route(destination=d.name, kind=d.kind, formats=d.formats)
               for d in sorted(destinations, key=lambda d: d.name)]
    return draft.model_copy(update={"routes": tuple(routes)})
