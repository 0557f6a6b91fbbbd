"""Partition order: rating must see a customer's events in the order they arrived.

Dedup is keyed by idempotency key, so it scatters a partition's records over buckets (and
workers) and gathers them back in bucket order. To make every marginal revenue deterministic,
each record is tagged on the way in with the offset of the record before it in its partition,
and a per-partition step downstream releases records strictly in that chain. Kafka offsets may
have gaps, so the chain, not offset + 1, says what comes next.
"""

from __future__ import annotations

from schemas.record import Record


class Sequencer:
    """Tags records as they are read. In memory only: after a restart the first record of each
    partition is untagged (None), which the Reorder accepts as a fresh start."""

    def __init__(self) -> None:
        self._last: dict[int, int] = {}

    def tag(self, rec: Record) -> Record:
        rec.prev_offset = self._last.get(rec.partition)
        self._last[rec.partition] = rec.offset
        return rec


class Reorder:
    """One partition's release point; snapshotted with the flow (it is nearly always empty at
    an epoch's end, since every record of an epoch arrives within it)."""

    def __init__(self) -> None:
        self.last: int | None = None
        self.waiting: dict[int, Record] = {}  # keyed by the offset each one waits for

    def release(self, batch: list[Record]) -> list[Record]:
        out: list[Record] = []
        waiting = self.waiting
        for rec in batch:
            if rec.prev_offset is None or rec.prev_offset == self.last:
                out.append(rec)
                self.last = rec.offset
                while self.last in waiting:
                    nxt = waiting.pop(self.last)
                    out.append(nxt)
                    self.last = nxt.offset
            else:
                waiting[rec.prev_offset] = rec
        return out
