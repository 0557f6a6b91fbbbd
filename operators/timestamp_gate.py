"""Timestamp gate: the event's `time` against the record's ingestion time, never the wall clock."""

from __future__ import annotations

from datetime import UTC, datetime

from schemas.record import Reason, Record, Status

MINUTE_US = 60 * 1_000_000
MAX_SKEW_US = 5 * MINUTE_US          # accepted up to exactly 5 minutes ahead
LATE_AFTER_US = 24 * 60 * MINUTE_US  # older than 24 hours: held for reconciliation
HORIZON_US = 90 * 24 * 60 * MINUTE_US  # older than 90 days: rejected; also the dedup horizon


EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def to_us(t: datetime) -> int:
    """An aware datetime as integer microseconds since the Unix epoch (no float on the way)."""
    d = t - EPOCH
    return (d.days * 86400 + d.seconds) * 1_000_000 + d.microseconds


def timestamp_gate(rec: Record) -> Record:
    # An approved held event was judged on its original ingestion time; approval is the
    # reconciliation the lateness rule asks for.
    if rec.status is not None or rec.reinject_of is not None:
        return rec
    ingested_us = rec.ingested_ms * 1000
    t = rec.event_us
    if t > ingested_us + MAX_SKEW_US:
        return rec.decide(Status.REJECTED, Reason.FUTURE_TIMESTAMP,
                          "event time is more than 5 minutes after its ingestion time")
    if t < ingested_us - HORIZON_US:
        return rec.decide(Status.REJECTED, Reason.TOO_OLD,
                          "event time is more than 90 days before its ingestion time")
    # A backfill is history admitted on purpose (audited at the door): on time by definition.
    if t < ingested_us - LATE_AFTER_US and rec.backfill is None:
        return rec.decide(Status.LATE, Reason.LATE_ARRIVAL,
                          "arrived more than 24 hours after its event time; held for reconciliation")
    return rec
