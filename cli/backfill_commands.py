"""`aforo backfill`: the record of every backfill (who admitted which history, when and why), and
the backfill side of `aforo upload --backfill` (api/backfill.py does the work)."""

from __future__ import annotations

from collections.abc import Iterator

import click
import orjson

import config
from config import clock


def backfill_rows(settings: config.Settings, rows: Iterator, tenant: str, reason: str, producer):
    """Check, record and produce the rows of `aforo upload --backfill` as one backfill, recorded
    as the operator running the command (AFORO_ACTOR, else USER)."""
    from api.backfill import check, run_backfill
    from sinks.postgres import connect
    now = clock.now()
    batch = check(rows, tenant, now)
    return run_backfill(batch, settings.actor, reason, now, lambda: connect(settings.database_url), producer)


@click.group()
def backfill() -> None:
    """Backfills: history admitted past the lateness gate (`aforo upload --backfill`)."""


def _record(b) -> dict:
    from cli.main import _jsonable
    return {k: _jsonable(v) for k, v in b.__dict__.items()}


@backfill.command("list")
@click.option("--tenant")
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table", show_default=True)
def backfill_list(tenant: str | None, fmt: str) -> None:
    """Every backfill, oldest first: who, when, why, how many events, which periods."""
    from sinks.backfills import list_backfills
    from sinks.postgres import connect
    with connect(config.load().database_url) as conn:
        found = list_backfills(conn, tenant)
    if fmt == "json":
        click.echo(orjson.dumps([_record(b) for b in found], option=orjson.OPT_INDENT_2).decode())
        return
    click.echo(f"{'id':<20} {'tenant':<8} {'created':<21} {'actor':<14} {'events':>8} {'produced':>8}  "
               "periods  reason")
    for b in found:
        click.echo(f"{b.id:<20} {b.tenant:<8} {b.created_at:%Y-%m-%dT%H:%M:%SZ}  {b.actor:<14} {b.events:>8} "
                   f"{'-' if b.produced is None else b.produced:>8}  {','.join(b.periods)}  {b.reason}")


@backfill.command("show")
@click.argument("backfill_id")
def backfill_show(backfill_id: str) -> None:
    """One backfill's record."""
    from schemas.errors import NotFound
    from sinks.backfills import find_backfill
    from sinks.postgres import connect
    with connect(config.load().database_url) as conn:
        found = find_backfill(conn, backfill_id)
    if found is None:
        raise NotFound(f"no backfill {backfill_id!r}")
    click.echo(orjson.dumps(_record(found), option=orjson.OPT_INDENT_2).decode())
