"""Stage 10, Settle: the invoice gets its number and becomes immutable.

Numbers are per tenant and year of the period, gapless (`INV-2026-0001`; credit notes
`CN-2026-0001`): sinks/billing.py takes the next one in the same transaction that stores the
invoice, so a crash leaves neither a gap nor a numbered invoice half written. The digest is the
SHA-256 of the invoice's canonical JSON (keys sorted, decimals as exact strings): storing the
document itself means the digest can be recomputed at any time.

A credit note voids an invoice: the same lines with every amount negated, referencing it.
"""

from __future__ import annotations

import hashlib
from decimal import Decimal

import orjson

from schemas.billing_run import ZERO, Draft, Invoice, Totals

_NEGATED_LINE = ("ledger_revenue", "cost", "usage_amount", "amount", "discount", "net", "tax_exact",
                 "net_rounded", "tax", "rounding", "total")


def number(series: str, period: str, sequence: int) -> str:
    return f"{series}-{period[:4]}-{sequence:04d}"


def settle(draft: Draft, invoice_number: str) -> Invoice:
    return Invoice(**dict(draft), number=invoice_number)


def _negated(amount: Decimal) -> Decimal:
    return ZERO - amount  # not -amount: that turns 0 into -0


def credit_note(original: Invoice, note_number: str, reason: str) -> Invoice:
    lines = tuple(x.model_copy(update={k: _negated(getattr(x, k)) for k in _NEGATED_LINE})
                  for x in original.lines)
    t = original.totals
    totals = Totals(**{k: _negated(v) for k, v in dict(t).items()}) if t else None
    return original.model_copy(update={
        "number": note_number, "kind": "credit_note", "credit_note_of": original.number,
        "note": reason, "lines": lines, "totals": totals})


def document(invoice: Invoice) -> bytes:
    return orjson.dumps(invoice.model_dump(mode="json"), option=orjson.OPT_SORT_KEYS)


def digest(invoice: Invoice) -> str:
    return hashlib.sha256(document(invoice)).hexdigest()

