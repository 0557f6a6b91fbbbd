"""The time an event's id was first received, for providers whose payload carries no time.

Without it each redelivery (GitHub's "Redeliver", Twilio's retries) would carry its own receipt
time, so the same signed bytes would map to a different CloudEvent and the pipeline would call it
a conflict. With it a redelivery is byte for byte the first delivery's event: a duplicate of the
same payload. Receipts older than the 90-day dedup horizon are dropped (an event that old is
rejected as too old anyway).
"""

from __future__ import annotations

import psycopg

HORIZON_MS = 90 * 24 * 3600 * 1000


def first_receipts(conn: psycopg.Connection, source: str, event_ids: list[str],
                   received_ms: int) -> dict[str, int]:
    """event id -> the epoch ms it was first received (now, for an id not seen before)."""
    # DO UPDATE (a no-op change) rather than DO NOTHING, so RETURNING yields the existing rows too
    rows = conn.execute(
        "WITH expired AS (DELETE FROM webhook_receipts WHERE received_ms < %s)"
        " INSERT INTO webhook_receipts (source, event_id, received_ms)"
        " SELECT %s, id, %s FROM unnest(%s::text[]) AS id ORDER BY id"
        " ON CONFLICT (source, event_id) DO UPDATE SET source = excluded.source"
        " RETURNING event_id, received_ms",
        (received_ms - HORIZON_MS, source, received_ms, sorted(set(event_ids)))).fetchall()
    return dict(rows)
