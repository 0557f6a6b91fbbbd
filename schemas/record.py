"""The in-flight record: one raw Kafka record on its way to exactly one terminal status."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from schemas.billing import BillingContext, RevenueLine


class Status(StrEnum):
    ACCEPTED = "accepted"
    DUPLICATE = "duplicate"
    REJECTED = "rejected"
    LATE = "late"
    UNRESOLVED = "unresolved"


class Reason(StrEnum):
    MALFORMED = "malformed"
    TOO_LARGE = "too_large"
    SCHEMA = "schema"
    FUTURE_TIMESTAMP = "future_timestamp"
    TOO_OLD = "too_old"
    LATE_ARRIVAL = "late_arrival"
    SAME_PAYLOAD = "same_payload"
    CONFLICT = "conflict"
    UNKNOWN_TENANT = "unknown_tenant"
    UNKNOWN_CUSTOMER = "unknown_customer"
    NO_SUBSCRIPTION = "no_subscription"
    UNPRICEABLE = "unpriceable"
    UNMETERED = "unmetered"


@dataclass(slots=True)
class Record:
    """A raw record plus what the gates decided about it.

    `status` stays None while the record is still eligible for billing; `late` records keep
    flowing through dedup (a late duplicate is still a duplicate) but are never rated.
    """

    topic: str
    topic_id: str  # the broker's id of this incarnation of the topic: offsets restart with it
    partition: int
    offset: int
    ingested_ms: int  # the raw record's Kafka timestamp: the only clock decisions may use
    raw: bytes
    key: bytes | None = None
    tier: str | None = None  # the ingestion tier that received it (Kafka header aforo-tier)
    # For an approved held event re-injected by `aforo reconcile approve`: the raw record it
    # re-injects, as "topic id/partition/offset" (Kafka header aforo-reinject-of).
    reinject_of: str | None = None
    backfill: str | None = None  # the audited backfill that admitted it (Kafka header aforo-backfill)
    event: dict[str, Any] | None = None
    event_us: int | None = None  # event `time` as microseconds since the Unix epoch
    status: Status | None = None
    reason: Reason | None = None
    detail: str | None = None
    dedup_key: str | None = None
    payload_hash: bytes | None = None
    route: str | None = None
    validation_hash: str | None = None
    billing: BillingContext | None = None
    lines: list[RevenueLine] | None = None

    @property
    def coords(self) -> tuple[str, int, int]:
        return (self.topic_id, self.partition, self.offset)

    @property
    def ref(self) -> str:
        """The raw record as "topic id/partition/offset", as headers and detail texts carry it."""
        return "/".join(map(str, self.coords))

    @property
    def pending(self) -> bool:
        """Still in the running for a dedup claim: not rejected or already deduplicated."""
        return self.status is None or self.status is Status.LATE

    def decide(self, status: Status, reason: Reason | None, detail: str | None = None) -> Record:
        self.status, self.reason, self.detail = status, reason, detail
        return self


@dataclass(slots=True)
class Batch:
    """The unit the metering flow works in: the records of one raw partition read in one poll,
    in offset order. A partition is read, decided and written by one worker, so a customer's
    events (which share a partition) are rated in the order they arrived."""

    topic: str
    topic_id: str
    partition: int
    records: list[Record]
    rated_as: int = 0  # the partition's running-totals batch number, once rated (0: nothing rated)


def parse_ref(ref: str) -> tuple[str, int, int]:
    """The coordinates in a raw reference; topic ids are base64 and may contain "/" themselves."""
    topic_id, partition, offset = ref.rsplit("/", 2)
    return topic_id, int(partition), int(offset)
