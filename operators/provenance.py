"""Which gate decided a record: the trail a ledger row's status and reason imply, for the
console's provenance view. The stages are the pipeline's, in its order (README, Architecture)."""

from __future__ import annotations

from schemas.record import Reason, Status

GATES = ("parse", "schema", "timestamp", "lateness", "idempotency", "enrichment", "rating", "route")
_DECIDED_BY = {
    Reason.MALFORMED: "parse", Reason.TOO_LARGE: "parse",
    Reason.SCHEMA: "schema", Reason.UNKNOWN_TENANT: "schema",
    Reason.FUTURE_TIMESTAMP: "timestamp", Reason.TOO_OLD: "timestamp",
    Reason.LATE_ARRIVAL: "lateness",
    Reason.SAME_PAYLOAD: "idempotency", Reason.CONFLICT: "idempotency",
    Reason.UNKNOWN_CUSTOMER: "enrichment", Reason.NO_SUBSCRIPTION: "enrichment",
    Reason.UNMETERED: "enrichment",
    Reason.UNPRICEABLE: "rating",
}


def gate_trail(status: str, reason: str | None) -> list[dict[str, str]]:
    """Each stage with its outcome: `passed`, `decided` (set the terminal status) or `not
    reached`. A late record is held at the lateness gate but still claims its idempotency key
    (a late duplicate is still a duplicate), and is never enriched or rated; every record is
    routed."""
    decided_by = _DECIDED_BY.get(reason)  # str enums hash as their values
    if status == Status.ACCEPTED and decided_by is None:
        decided_by = "rating"  # accepted and rated: every gate passed
    trail, done = [], False
    for gate in GATES:
        if gate == "route":
            outcome = "passed"
        elif done:
            outcome = "passed" if decided_by == "lateness" and gate == "idempotency" else "not reached"
        elif gate == decided_by:
            outcome, done = ("passed" if status == Status.ACCEPTED else "decided"), True
        else:
            outcome = "passed"
        trail.append({"gate": gate, "outcome": outcome})
    return trail
