"""Idempotency dedup: first claimant wins, reprocessing never marks a record a duplicate of itself."""

from __future__ import annotations

import orjson

from operators.dedup import Claim, Dedup, dedup_bucket, payload_hash
from operators.timestamp_gate import HORIZON_US
from schemas.record import Reason, Record, Status

T0 = 1_780_000_000_000


def rec(offset: int, key: str = "k", data: dict | None = None, ingested_ms: int = T0,
        partition: int = 0, status: Status | None = None) -> Record:
    event = {"id": key, "data": data or {"n": 1}}
    r = Record("raw", "tid", partition, offset, ingested_ms, orjson.dumps(event), event=event,
               dedup_key=key)
    r.status = status
    return r


def outcome(r: Record):
    return (r.status, r.reason)


def no_durable_claims(keys):
    return {}


def test_first_claim_wins_then_same_payload_and_conflict():
    d = Dedup(no_durable_claims, 100)
    a, b, c = rec(0), rec(1), rec(2, data={"n": 2})
    d.decide([a, b, c])
    assert outcome(a) == (None, None)
    assert outcome(b) == (Status.DUPLICATE, Reason.SAME_PAYLOAD)
    assert outcome(c) == (Status.DUPLICATE, Reason.CONFLICT)
    assert "offset 0" in b.detail


def test_payload_hash_ignores_key_order():
    assert payload_hash({"a": 1, "b": {"c": 2, "d": 3}}) == payload_hash({"b": {"d": 3, "c": 2}, "a": 1})


def test_reprocessing_the_same_raw_record_is_not_a_duplicate_of_itself():
    # The claim is durable (written with the ledger row) but the process crashed and restarted
    # with an empty cache: the same raw record comes through again.
    first = rec(5)
    durable = {"k": Claim("tid", 0, 5, payload_hash(first.event), T0)}
    d = Dedup(lambda keys: {k: durable[k] for k in keys if k in durable}, 100)
    again = rec(5)
    d.decide([again])
    assert outcome(again) == (None, None)
    other = rec(6)
    d.decide([other])
    assert outcome(other) == (Status.DUPLICATE, Reason.SAME_PAYLOAD)


def test_same_offset_in_a_new_topic_incarnation_is_a_different_record():
    durable = {"k": Claim("old-topic-id", 0, 5, payload_hash(rec(5).event), T0)}
    d = Dedup(lambda keys: {k: durable[k] for k in keys if k in durable}, 100)
    r = rec(5)
    d.decide([r])
    assert outcome(r) == (Status.DUPLICATE, Reason.SAME_PAYLOAD)


def test_late_records_claim_keys_and_late_duplicates_are_duplicates():
    d = Dedup(no_durable_claims, 100)
    late = rec(0, status=Status.LATE)
    late_again = rec(1, status=Status.LATE)
    on_time = rec(2)
    d.decide([late, late_again, on_time])
    assert late.status is Status.LATE
    assert outcome(late_again) == (Status.DUPLICATE, Reason.SAME_PAYLOAD)
    assert outcome(on_time) == (Status.DUPLICATE, Reason.SAME_PAYLOAD)


def test_rejected_records_neither_claim_nor_get_checked():
    d = Dedup(no_durable_claims, 100)
    bad = rec(0, status=Status.REJECTED)
    good = rec(1)
    d.decide([bad, good])
    assert bad.status is Status.REJECTED and good.status is None


def test_claims_expire_after_the_90_day_horizon():
    d = Dedup(no_durable_claims, 100)
    d.decide([rec(0)])
    within = rec(1, ingested_ms=T0 + HORIZON_US // 1000)
    d.decide([within])
    assert within.status is Status.DUPLICATE
    after = rec(2, ingested_ms=T0 + HORIZON_US // 1000 + 1)
    d.decide([after])
    assert after.status is None  # the old claim is past the horizon: a new claim


def test_cache_is_bounded_and_falls_back_to_the_durable_index():
    durable: dict[str, Claim] = {}
    lookups: list[set] = []

    def lookup(keys):
        keys = set(keys)
        lookups.append(keys)
        return {k: durable[k] for k in keys if k in durable}

    d = Dedup(lookup, 10)
    for i in range(50):
        r = rec(i, key=f"k{i}")
        d.decide([r])
        durable[f"k{i}"] = Claim("tid", 0, i, r.payload_hash, T0)  # what the ledger sink writes
    assert len(d) <= 10
    old = rec(100, key="k0")
    d.decide([old])
    assert outcome(old) == (Status.DUPLICATE, Reason.SAME_PAYLOAD)
    assert {"k0"} in lookups


def test_one_lookup_per_batch_for_unknown_keys_only():
    calls = []
    d = Dedup(lambda keys: calls.append(set(keys)) or {}, 100)
    d.decide([rec(0, key="a"), rec(1, key="b"), rec(2, key="a")])
    d.decide([rec(3, key="a"), rec(4, key="c")])
    assert calls == [{"a", "b"}, {"c"}]


def test_same_key_always_lands_in_the_same_bucket():
    a, b = rec(0, key="x", partition=1), rec(1, key="x", partition=7)
    assert dedup_bucket(a, 16) == dedup_bucket(b, 16)
    unkeyed = rec(0, partition=3)
    unkeyed.dedup_key = None
    assert dedup_bucket(unkeyed, 16) == "p3"


def test_a_reinjection_takes_over_the_claim_of_the_record_it_stands_for_and_only_that():
    d = Dedup(no_durable_claims, 100)
    held = rec(0)
    held.topic_id = "ab/c+d/=="  # base64 topic ids may contain "/"
    d.decide([held])
    again = rec(5)
    again.reinject_of = held.ref
    other = rec(6)
    other.reinject_of = held.ref  # a second re-injection of the same held record
    d.decide([again, other])
    assert outcome(again) == (None, None)
    assert outcome(other) == (Status.DUPLICATE, Reason.SAME_PAYLOAD)
