"""Idempotency dedup: first claimant wins, reprocessing never marks a record a duplicate of itself,
and claims are exact across workers and processes because they are durable before rating."""

from __future__ import annotations

import threading

import orjson
import pytest

from operators.dedup import InMemoryClaims, decide, payload_hash
from operators.timestamp_gate import HORIZON_US
from schemas.record import Batch, Reason, Record, Status
from sinks.ledger import PostgresState

T0 = 1_780_000_000_000


def rec(offset: int, key: str = "k", data: dict | None = None, ingested_ms: int = T0,
        partition: int = 0, status: Status | None = None, topic_id: str = "tid") -> Record:
    event = {"id": key, "data": data or {"n": 1}}
    r = Record("raw", topic_id, partition, offset, ingested_ms, orjson.dumps(event), event=event,
               dedup_key=key, payload_hash=payload_hash(event))
    r.status = status
    return r


def run(index, *records: Record) -> list[Record]:
    decide(index, Batch("raw", "tid", 0, list(records)))
    return list(records)


def outcome(r: Record):
    return (r.status, r.reason)


def test_first_claim_wins_then_same_payload_and_conflict():
    a, b, c = run(InMemoryClaims(), rec(0), rec(1), rec(2, data={"n": 2}))
    assert outcome(a) == (None, None)
    assert outcome(b) == (Status.DUPLICATE, Reason.SAME_PAYLOAD)
    assert outcome(c) == (Status.DUPLICATE, Reason.CONFLICT)
    assert "offset 0" in b.detail


def test_payload_hash_ignores_key_order():
    assert payload_hash({"a": 1, "b": {"c": 2, "d": 3}}) == payload_hash({"b": {"d": 3, "c": 2}, "a": 1})


def test_reprocessing_the_same_raw_record_is_not_a_duplicate_of_itself():
    claims = InMemoryClaims()
    run(claims, rec(5))
    [again] = run(claims, rec(5))  # the process crashed after claiming; the record comes again
    assert outcome(again) == (None, None)
    [other] = run(claims, rec(6))
    assert outcome(other) == (Status.DUPLICATE, Reason.SAME_PAYLOAD)


def test_same_offset_in_a_new_topic_incarnation_is_a_different_record():
    claims = InMemoryClaims()
    run(claims, rec(5, topic_id="old-topic-id"))
    [r] = run(claims, rec(5))
    assert outcome(r) == (Status.DUPLICATE, Reason.SAME_PAYLOAD)


def test_late_records_claim_keys_and_late_duplicates_are_duplicates():
    late, late_again, on_time = run(InMemoryClaims(), rec(0, status=Status.LATE),
                                    rec(1, status=Status.LATE), rec(2))
    assert late.status is Status.LATE
    assert outcome(late_again) == (Status.DUPLICATE, Reason.SAME_PAYLOAD)
    assert outcome(on_time) == (Status.DUPLICATE, Reason.SAME_PAYLOAD)


def test_rejected_records_neither_claim_nor_get_checked():
    bad, good = run(InMemoryClaims(), rec(0, status=Status.REJECTED), rec(1))
    assert bad.status is Status.REJECTED and good.status is None


def test_claims_expire_after_the_90_day_horizon():
    claims = InMemoryClaims()
    run(claims, rec(0))
    [within] = run(claims, rec(1, ingested_ms=T0 + HORIZON_US // 1000))
    assert within.status is Status.DUPLICATE
    [after] = run(claims, rec(2, ingested_ms=T0 + HORIZON_US // 1000 + 1))
    assert after.status is None  # the old claim is past the horizon: a new claim


def test_a_reinjection_takes_over_the_claim_of_the_record_it_stands_for_and_only_that():
    claims = InMemoryClaims()
    held = rec(0)
    held.topic_id = "ab/c+d/=="  # base64 topic ids may contain "/"
    run(claims, held)
    retry = rec(4)  # a retry of the held event, before the approval: a duplicate of it
    again = rec(5)
    again.reinject_of = held.ref
    other = rec(6)
    other.reinject_of = held.ref  # a second re-injection of the same held record
    run(claims, retry, again, other)
    assert outcome(retry) == (Status.DUPLICATE, Reason.SAME_PAYLOAD)
    assert outcome(again) == (None, None)
    assert outcome(other) == (Status.DUPLICATE, Reason.SAME_PAYLOAD)


def test_one_claim_request_per_key_per_batch():
    asked = []

    class Recording(InMemoryClaims):
        def claim(self, records):
            asked.append([r.offset for r in records])
            return super().claim(records)

    run(Recording(), rec(0, key="a"), rec(1, key="b"), rec(2, key="a"))
    assert asked == [[0, 1]]


# --- the durable index, shared by every worker and process --------------------------------------

@pytest.mark.integration
def test_durable_claims_survive_a_restart_and_recognise_their_own_record(settings):
    first = PostgresState(settings.database_url)
    run(first, rec(5, key="k1"))
    restarted = PostgresState(settings.database_url)  # a new process: nothing in memory
    again, other = run(restarted, rec(5, key="k1"), rec(9, key="k1", partition=3))
    assert outcome(again) == (None, None)
    assert outcome(other) == (Status.DUPLICATE, Reason.SAME_PAYLOAD)


@pytest.mark.integration
def test_two_processes_meeting_one_key_at_once_cannot_both_win(settings):
    """The same keys arrive on two partitions read by two processes at the same moment."""
    keys = [f"race-{i}" for i in range(500)]
    results: dict[int, list[Record]] = {}

    def worker(partition: int) -> None:
        results[partition] = run(PostgresState(settings.database_url),
                                 *(rec(i, key=k, partition=partition) for i, k in enumerate(keys)))

    threads = [threading.Thread(target=worker, args=(p,)) for p in (1, 2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i in range(len(keys)):
        winners = [p for p in (1, 2) if results[p][i].status is None]
        assert len(winners) == 1, keys[i]


@pytest.mark.integration
def test_durable_takeover_by_a_reinjection_happens_once(settings):
    state = PostgresState(settings.database_url)
    held = rec(0, key="held", status=Status.LATE)
    run(state, held)
    again, other = rec(5, key="held"), rec(6, key="held")
    again.reinject_of = other.reinject_of = held.ref
    run(state, again)
    run(PostgresState(settings.database_url), other)
    assert outcome(again) == (None, None)
    assert outcome(other) == (Status.DUPLICATE, Reason.SAME_PAYLOAD)
    replayed = rec(5, key="held")
    replayed.reinject_of = held.ref
    run(PostgresState(settings.database_url), replayed)
    assert outcome(replayed) == (None, None)  # the re-injection, read again, still holds its claim
