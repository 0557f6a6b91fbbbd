"""Routing: the terminal status decides the output topic; the validation hash seals the decision."""

from __future__ import annotations

import hmac

from config import Topics
from schemas.record import Batch, Record, Status


def route_topic(status: Status, topics: Topics) -> str:
    if status is Status.ACCEPTED:
        return topics.enriched
    if status in (Status.LATE, Status.UNRESOLVED):
        return topics.held
    return topics.rejected  # rejected and duplicate: dead letters with their reason


def decision_bytes(rec: Record) -> bytes:
    """The decision as sealed by the validation hash (documented, so auditors can recompute it)."""
    return "\x1f".join(
        (rec.status, rec.reason or "", rec.dedup_key or "", rec.route)
    ).encode()


def validation_hash(secret: bytes, raw: bytes, decision: bytes) -> str:
    return hmac.digest(secret, raw + b"\x00" + decision, "sha256").hex()


def route(rec: Record, topics: Topics, secret: bytes) -> Record:
    if rec.status is None:
        rec.status = Status.ACCEPTED
    rec.route = route_topic(rec.status, topics)
    rec.validation_hash = validation_hash(secret, rec.raw, decision_bytes(rec))
    return rec


def route_batch(topics: Topics, secret: bytes, batch: Batch) -> Batch:
    for rec in batch.records:
        route(rec, topics, secret)
    return batch
