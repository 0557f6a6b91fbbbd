"""Partition order is restored after dedup scatters records over buckets."""

from __future__ import annotations

import random

from operators.order import Reorder, Sequencer
from schemas.record import Record


def records(partition: int, offsets: list[int]) -> list[Record]:
    return [Record("raw", "tid", partition, o, 1, b"{}") for o in offsets]


def test_release_follows_the_chain_whatever_the_arrival_order_and_offset_gaps():
    seq = Sequencer()
    recs = [seq.tag(r) for r in records(0, [3, 4, 7, 8, 20, 21, 22])]  # gaps, as Kafka may have
    shuffled = recs[:]
    random.Random(1).shuffle(shuffled)
    reorder = Reorder()
    released = []
    for i in range(0, len(shuffled), 2):  # arrives in small, scrambled batches
        released += reorder.release(shuffled[i:i + 2])
    assert [r.offset for r in released] == [3, 4, 7, 8, 20, 21, 22]
    assert reorder.waiting == {}


def test_after_a_restart_the_first_untagged_record_restarts_the_chain():
    reorder = Reorder()
    reorder.release([Sequencer().tag(r) for r in records(0, [0, 1])])
    fresh = Sequencer()  # a new process resumes at offset 2 with no memory of offset 1
    batch = [fresh.tag(r) for r in records(0, [2, 3, 4])]
    assert [r.offset for r in reorder.release([batch[2], batch[1], batch[0]])] == [2, 3, 4]


def test_nothing_is_released_before_its_predecessor():
    seq = Sequencer()
    a, b = (seq.tag(r) for r in records(0, [5, 6]))
    reorder = Reorder()
    reorder.last = 4
    assert reorder.release([b]) == []
    assert [r.offset for r in reorder.release([a])] == [5, 6]
