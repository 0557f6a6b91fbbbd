"""`aforo`: run the local stack, send raw events, run the metering flow, read the ledger."""

from __future__ import annotations

import csv
import os
import sys
import threading
import time
from datetime import UTC, datetime
from decimal import Decimal
from functools import partial
from pathlib import Path

import click
import orjson

import config
from cli.alerts_commands import alerts, monitor
from cli.api_commands import keys, serve, upload, webhooks
from cli.backfill_commands import backfill
from cli.bill_commands import bill, credit, invoice
from cli.errors import AforoGroup, writing
from cli.ops_commands import doctor
from config import clock
from observe.logs import configure as configure_logging


def _settings() -> config.Settings:
    return config.load()


def _fail(message: str) -> None:
    raise click.ClickException(message)


@click.group(cls=AforoGroup)
def main() -> None:
    """Aforo: financial-grade usage metering."""
    configure_logging(_settings(), service=False)  # services switch to JSON lines when they start


for _command in (serve, keys, upload, webhooks,  # the HTTP front doors (api/)
                 monitor, alerts,  # the monitoring flow and its alerts
                 backfill,  # the record of backfills (`aforo upload --backfill`)
                 bill, invoice, credit,  # the bill run and its invoices
                 doctor):  # operations
    main.add_command(_command)


# --- the local stack ------------------------------------------------------------------------------

def _print_services(states) -> None:
    for s in states:
        state = "running" if s.running else "stopped"
        click.echo(f"{s.name:<9} {state:<8} {config.redacted_url(s.url) or '-':<45} {s.detail}")


@main.command()
@click.option("--yes", is_flag=True,
              help="As root, make the machine changes Postgres needs without asking (scripts).")
def up(yes: bool) -> None:
    """Start the embedded Kafka, Postgres and Redis (unless external URLs are configured).

    As root, PostgreSQL needs an account of its own and access to its files: what that changes
    is listed first, and done only when confirmed (or with --yes)."""
    from stack.embedded import root_changes
    from stack.embedded import up as stack_up
    s = _settings()
    changes = root_changes(s)
    if changes:
        click.echo("Running as root, starting the embedded postgres will:\n  - " + "\n  - ".join(changes),
                   err=True)
        if not yes:
            if not sys.stdin.isatty():
                _fail("not confirmed: re-run with --yes to allow these changes, "
                      "or run Aforo as an ordinary user")
            click.confirm("Make these changes?", abort=True, err=True)
    _print_services(stack_up(s, allow_root_changes=bool(changes)))


@main.command()
def down() -> None:
    """Stop the embedded stack. The broker is memory-only: its topics are gone after this."""
    from stack.embedded import down as stack_down
    _print_services(stack_down(_settings()))


@main.command()
def status() -> None:
    """Each service's state and connection URL."""
    from stack.embedded import status as stack_status
    _print_services(stack_status(_settings()))


@main.command()
def migrate() -> None:
    """Create or upgrade the Postgres schema and the Kafka topics."""
    from api.webhooks.secrets import seal_stored_secrets
    from sinks.invoice_delivery import invoices_topic
    from sinks.kafka import ensure_topics, require_broker, topic_differences
    from sinks.postgres import migrate as pg_migrate
    s = _settings()
    require_broker(s)  # at once, and before the database changes
    applied = pg_migrate(s.database_url)
    sealed = seal_stored_secrets(s)
    ensure_topics(s, invoices_topic(s))
    differences = topic_differences(s)
    click.echo(f"applied {', '.join(applied)}" if applied else "schema up to date")
    if sealed:
        click.echo(f"encrypted {sealed} webhook secrets stored in plaintext")
    if differences:
        _fail("the topics differ from the configuration (nothing was changed; see README, "
              "Operations: topics):\n  " + "\n  ".join(differences))
    click.echo(f"topics ready: {s.topics.raw} ({s.raw_partitions} partitions), "
               + ", ".join((*s.topics.outputs, invoices_topic(s))))


# --- sending and running --------------------------------------------------------------------------

def send_lines(settings: config.Settings, lines, total: int | None = None) -> int:
    """Produce lines as raw records; returns how many the broker acknowledged."""
    from sinks.kafka import ensure_topics
    from sinks.raw_producer import RawProducer
    ensure_topics(settings)
    producer = RawProducer(settings)
    try:
        if total is not None:
            with click.progressbar(length=total, label="sending", file=sys.stderr, show_pos=True) as bar:
                acks = producer.send(enumerate(lines), "sdk", progress=lambda n: bar.update(n - bar.pos))
        elif sys.stderr.isatty():  # a stream of unknown length: a live counter instead of a bar
            acks = producer.send(enumerate(lines), "sdk",
                                 progress=lambda n: click.echo(f"\rsent {n}", nl=False, err=True))
            click.echo("", err=True)
        else:
            acks = producer.send(enumerate(lines), "sdk")
    finally:
        producer.close()
    if acks.failed:
        click.echo(f"{acks.failed} records not acknowledged, e.g. {next(iter(acks.errors.values()))}",
                   err=True)
    return acks.acked


@main.command()
@click.argument("source", type=click.File("rb"))
def send(source) -> None:
    """Produce each NDJSON line of SOURCE (a file or -) verbatim as one raw record."""
    lines = (line.rstrip(b"\r\n") for line in source if line.strip())
    acked = send_lines(_settings(), lines)
    click.echo(f"{acked} records acknowledged")


def _live_counter(settings: config.Settings, stop: threading.Event) -> None:
    """Ledger rows written so far, on the terminal only (nothing to parse in logs)."""
    from sinks.postgres import connect
    with connect(settings.database_url, autocommit=True) as conn:
        start = conn.execute("SELECT count(*) FROM ledger").fetchone()[0]
        while not stop.wait(1.0):
            n = conn.execute("SELECT count(*) FROM ledger").fetchone()[0] - start
            click.echo(f"\rledger rows written: {n}", nl=False, err=True)
    click.echo("", err=True)


def run_flow(settings: config.Settings, once: bool, workers: int, cluster=None) -> float:
    from flows.metering import run
    stop = threading.Event()
    counter = None
    if sys.stderr.isatty() and cluster is None:
        counter = threading.Thread(target=_live_counter, args=(settings, stop), daemon=True)
        counter.start()
    started = time.perf_counter()
    try:
        run(settings, once=once, workers=workers, cluster=cluster)
    finally:
        stop.set()
        if counter is not None:
            counter.join()
    return time.perf_counter() - started


@main.command("run")
@click.option("--once", is_flag=True, help="Process what is in the raw topic, then exit.")
@click.option("--workers", default=1, show_default=True, type=click.IntRange(min=1),
              help="Bytewax workers (threads) per process. They share one Python interpreter"
                   " lock: for more throughput, run more processes instead.")
@click.option("--processes", type=click.IntRange(min=1),
              help="Run a cluster of this many processes on this machine.")
@click.option("--process-id", type=click.IntRange(min=0), help="This process's index in --addresses.")
@click.option("--addresses",
              help="host:port of every process of the cluster, comma-separated, in process-id order.")
@click.option("--metrics-port", type=click.IntRange(0, 65535), metavar="PORT",
              help="Serve /metrics, /healthz and /readyz on AFORO_METRICS_HOST:PORT (with --processes,"
                   " process I on PORT+I).")
@click.option("--metrics-base-port", type=click.IntRange(0, 65535), hidden=True,
              help="Set by --processes for its children: serve on this port + the process id.")
def run_cmd(once: bool, workers: int, processes: int | None, process_id: int | None,
            addresses: str | None, metrics_port: int | None, metrics_base_port: int | None) -> None:
    """Run the metering flow. It resumes where the ledger ends, whatever stopped it; SIGINT or
    SIGTERM stops it after the batches in flight are committed. Raw partitions are shared out over
    every worker of every process (N processes x W workers should not exceed the partitions)."""
    from flows.execution import Cluster, run_local_cluster
    if processes is not None and (process_id is not None or addresses is not None):
        _fail("--processes starts a whole cluster here; --process-id/--addresses run one process"
              " of a cluster")
    if (process_id is None) != (addresses is None):
        _fail("--process-id and --addresses go together")
    settings = _settings()
    configure_logging(settings, service=True)
    if processes is not None and processes > 1:
        command = [sys.executable, "-c", "from cli.main import main; main()", "run",
                   "--workers", str(workers), *(["--once"] if once else []),
                   *(["--metrics-base-port", str(metrics_port)] if metrics_port is not None else [])]
        started = time.perf_counter()
        code = run_local_cluster(command, processes, env={**os.environ, **settings.to_env()})
        if code:
            sys.exit(code)
        if once:
            click.echo(f"done in {time.perf_counter() - started:.1f}s")
        return
    cluster = None
    if addresses is not None:
        try:
            cluster = Cluster(tuple(a.strip() for a in addresses.split(",")), process_id)
        except ValueError as exc:
            _fail(str(exc))
    if metrics_base_port is not None and process_id is not None:
        metrics_port = metrics_base_port + process_id
    if metrics_port is not None:
        from observe.server import start_for_flow
        # one process of a cluster refreshes the ledger gauges: they describe the whole flow
        start_for_flow(settings, metrics_port, "metering", ledger_gauges=not process_id)
    elapsed = run_flow(settings, once, workers, cluster)
    if once:
        click.echo(f"done in {elapsed:.1f}s")


# --- reading the ledger ---------------------------------------------------------------------------

@main.group()
def events() -> None:
    """Read the ledger."""


def _jsonable(value):
    if isinstance(value, datetime):
        return value.astimezone(UTC).isoformat().replace("+00:00", "Z")
    if isinstance(value, bytes | memoryview):
        return bytes(value).hex()
    if isinstance(value, Decimal):
        return str(value)  # exact, never a float
    return value


@events.command("export")
@click.option("--tenant")
@click.option("--status", type=click.Choice(["accepted", "duplicate", "rejected", "late", "unresolved"]))
@click.option("--format", "fmt", type=click.Choice(["ndjson", "csv"]), default="ndjson", show_default=True)
@click.option("-o", "--output", type=click.File("w"), default="-")
def export(tenant, status, fmt, output) -> None:
    """One line per ledger row."""
    from sinks.postgres import connect
    from sinks.reports import EXPORT_COLUMNS, export_rows
    with connect(_settings().database_url) as conn:
        rows = export_rows(conn, tenant, status)
        if fmt == "csv":
            writer = csv.DictWriter(output, fieldnames=EXPORT_COLUMNS)
            writer.writeheader()
            for row in rows:
                writer.writerow({k: _jsonable(v) for k, v in row.items()})
        else:
            for row in rows:
                output.write(orjson.dumps({k: _jsonable(v) for k, v in row.items()}).decode() + "\n")


@events.command("show")
@click.option("--tenant", required=True)
@click.option("--source", required=True)
@click.option("--id", "event_id", required=True)
def show(tenant, source, event_id) -> None:
    """The full provenance chain of one event: every raw record that carried it."""
    from sinks.postgres import connect
    from sinks.reports import event_chain
    with connect(_settings().database_url) as conn:
        chain = event_chain(conn, tenant, source, event_id)
    if not chain:
        _fail(f"no event {event_id!r} from source {source!r} in tenant {tenant!r}")
    for row in chain:
        raw = bytes(row.pop("raw"))
        row["raw"] = raw.decode("utf-8", "replace")
        click.echo(orjson.dumps({k: _jsonable(v) for k, v in row.items()},
                                option=orjson.OPT_INDENT_2).decode())


# --- the catalog, pricing and revenue ------------------------------------------------------------

@main.group()
def catalog() -> None:
    """Tenants, metrics, plans, customers, subscriptions, quotas and cost rates."""


def apply_catalog_file(settings: config.Settings, path: Path) -> dict[str, int]:
    from pydantic import ValidationError

    from sinks.catalog import CatalogError, apply_catalog, read_catalog_file
    from sinks.postgres import connect
    try:
        parsed = read_catalog_file(path)
        with connect(settings.database_url) as conn:
            return apply_catalog(conn, parsed)
    except ValidationError as exc:
        _fail(f"{path}: invalid catalog\n{exc}")
    except (CatalogError, ValueError) as exc:
        _fail(f"{path}: {exc}")


@catalog.command("apply")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
def catalog_apply(file: Path) -> None:
    """Declare the catalog in FILE (JSON or YAML). Applying the same file twice changes nothing.
    Unresolved events the new catalog can resolve are released for re-processing."""
    s = _settings()
    changed = apply_catalog_file(s, file)
    if not any(changed.values()):
        click.echo("catalog unchanged")
        return
    click.echo("changed: " + ", ".join(f"{n} {kind}" for kind, n in changed.items() if n))
    from sinks.postgres import connect
    from sinks.reconcile import resolvable
    with connect(s.database_url) as conn:
        ids = resolvable(conn)
    if ids:
        _approve(s, ids, actor="catalog", note="resolvable after a catalog change")


@catalog.command("show")
def catalog_show() -> None:
    """Print the stored catalog, in the file's own shape."""
    from sinks.catalog import show_catalog
    from sinks.postgres import connect
    with connect(_settings().database_url) as conn:
        stored = show_catalog(conn)
    click.echo(orjson.dumps(stored, default=_jsonable, option=orjson.OPT_INDENT_2).decode())


@main.command()
@click.option("--plan", "plan_file", required=True, type=click.File("rb"),
              help="One charge object as in a catalog plan (JSON or YAML).")
@click.option("--quantities", help="Comma-separated event quantities, priced in order.")
@click.option("--events", "events_file", type=click.File("rb"),
              help='NDJSON of {"quantity": ..., "group": {...}} events, priced in order.')
def price(plan_file, quantities, events_file) -> None:
    """Price events in order with the flow's own pricing code; print the total and each marginal."""
    import yaml

    from operators.pricing import PricingError, Unpriceable, parse_charge, price_sequence
    if (quantities is None) == (events_file is None):
        _fail("give exactly one of --quantities or --events")
    try:
        charge = parse_charge(yaml.safe_load(plan_file.read()))
        if quantities is not None:
            events = [(Decimal(q.strip()), None) for q in quantities.split(",") if q.strip()]
        else:
            events = [(Decimal(str(e["quantity"])), e.get("group"))
                      for e in map(orjson.loads, filter(bytes.strip, events_file))]
        total, marginals = price_sequence(charge, events)
    except (PricingError, Unpriceable, TypeError, ArithmeticError, KeyError, ValueError) as exc:
        _fail(str(exc))
    click.echo(orjson.dumps({"total": str(total), "marginals": [str(m) for m in marginals]}).decode())


@main.command()
@click.option("--tenant")
@click.option("--period", help="YYYY-MM (UTC); defaults to the current month.")
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table", show_default=True)
def revenue(tenant, period, fmt) -> None:
    """Today, period to date, projected end of period, and revenue, cost and margin by customer.

    Amounts are shown with the currency's minor units (--format json keeps them exact)."""
    from operators.money import display, percent
    from operators.revenue import period_bounds
    from sinks.postgres import connect
    from sinks.reports import revenue_report
    now = clock.now()
    period = period or now.strftime("%Y-%m")
    try:
        period_bounds(period)
    except ValueError:
        _fail(f"--period must be YYYY-MM, got {period!r}")
    with connect(_settings().database_url) as conn:
        report = revenue_report(conn, tenant, period, now)
    customers = report["customers"]
    if fmt == "json":
        click.echo(orjson.dumps({
            "period": period,
            **{k: {cur: str(v) for cur, v in report[k].items()}
               for k in ("today", "period_to_date", "projected_end_of_period")},
            "customers": [{**c, "events": int(c["events"]),
                           **{k: str(c[k]) for k in ("revenue", "cost", "margin")}} for c in customers],
        }, option=orjson.OPT_INDENT_2).decode())
        return
    click.echo(f"period {period}")
    for label, key in (("today", "today"), ("period to date", "period_to_date"),
                       ("projected end of period", "projected_end_of_period")):
        values = ", ".join(display(v, cur) for cur, v in report[key].items()) or "0"
        click.echo(f"  {label:<26} {values}")
    click.echo("  (projected at the current pace of usage, priced on each plan: fixed and stairstep\n"
               "   fees counted once, tiered charges at the tier the projected usage reaches)")
    click.echo(f"\n{'tenant':<10} {'customer':<12} {'events':>8} {'revenue':>18} {'cost':>16} "
               f"{'margin':>18} {'margin %':>9}")
    for c in customers:
        pct = percent(c["margin"], c["revenue"])
        flag = "  << negative margin" if c["margin"] < 0 else ""
        click.echo(f"{c['tenant']:<10} {c['customer']:<12} {c['events']:>8} "
                   f"{display(c['revenue'], c['currency']):>18} {display(c['cost'], c['currency']):>16} "
                   f"{display(c['margin'], c['currency']):>18} {'-' if pct is None else pct:>9}{flag}")


# --- auditability ------------------------------------------------------------------------------

@main.command()
@click.option("--tenant", required=True)
@click.option("--period", required=True, help="YYYY-MM (UTC)")
@click.option("--source", type=click.Choice(["archive", "topic"]), default="archive", show_default=True,
              help="The raw payloads archived in the ledger, or the raw topic (scanned to its end).")
@click.option("--apply", "apply_", is_flag=True, help="Replace the live ledger rows of the period.")
def replay(tenant, period, source, apply_) -> None:
    """Re-derive a period from its raw events into a shadow ledger and compare it with the live one.

    Exit code 0 when they are identical, 1 when they differ (also with --apply, which then makes
    them identical)."""
    from flows.replay import in_scope, rederive
    from operators.revenue import period_bounds
    from operators.timestamp_gate import to_us
    from sinks.entitlements import CatalogCache
    from sinks.postgres import connect
    from sinks.replay import (
        Ledger,
        Scope,
        apply_shadow,
        archived_records,
        digest,
        figures,
        finish_replay,
        status_changes,
        topic_records,
        write_shadow,
    )
    s = _settings()
    try:
        start, end = period_bounds(period)
    except ValueError:
        _fail(f"--period must be YYYY-MM, got {period!r}")
    scope = Scope(tenant, start, end)
    catalog = CatalogCache(s.database_url, s.redis_url)
    with connect(s.database_url) as conn:
        if source == "archive":
            records = archived_records(conn, scope)
        else:
            records = list(topic_records(s, partial(in_scope, tenant, to_us(start), to_us(end))))
        shadow = rederive(records, catalog, catalog.key_paths(), s.topics, s.secret, tenant, period)
        replay_id = write_shadow(conn, scope, period, source, shadow)
        live, replayed = Ledger.live(scope), Ledger.shadow(replay_id)
        live_digest, shadow_digest = digest(conn, live), digest(conn, replayed)
        finish_replay(conn, replay_id, shadow_digest, live_digest)
        live_figures, shadow_figures = figures(conn, live), figures(conn, replayed)
        changes = status_changes(conn, scope, replay_id)
        identical = live_digest == shadow_digest
        click.echo(f"replay {replay_id}: {tenant} {period} from {source}, {len(shadow)} raw events")
        click.echo(f"  live ledger digest     {live_digest}")
        click.echo(f"  replayed ledger digest {shadow_digest}")
        click.echo(f"\n{'customer':<14} {'metric':<14} {'events live/replay':>20} "
                   f"{'quantity live/replay':>28} {'revenue live/replay':>32}")
        for key in sorted(live_figures.keys() | shadow_figures.keys(), key=str):
            a, b = live_figures.get(key, (0, 0, 0)), shadow_figures.get(key, (0, 0, 0))
            mark = "" if a == b else "  <> differs"
            click.echo(f"{key[0] or '-':<14} {key[1]:<14} {f'{a[0]}/{b[0]}':>20} {f'{a[1]}/{b[1]}':>28}"
                       f" {f'{a[2]}/{b[2]}':>32}{mark}")
        if changes:
            click.echo(f"\n{len(changes)} events differ (source id partition/offset: live -> replayed):")
            for src, eid, p, o, st, rs, rev, st2, rs2, rev2 in changes[:50]:
                click.echo(f"  {src} {eid} {p}/{o}: {st}/{rs or '-'} {rev} -> {st2}/{rs2 or '-'} {rev2}")
        click.echo("\nidentical" if identical else "\nDIFFERENT")
        if apply_ and not identical:
            apply_shadow(conn, scope, period, replay_id)
            click.echo(f"applied: the live ledger of {tenant} {period} is now replay {replay_id}")
    sys.exit(0 if identical else 1)


@main.group()
def reconcile() -> None:
    """Held events (late, unresolved): list, approve (re-inject), reject."""


@reconcile.command("list")
@click.option("--tenant")
@click.option("--reason", type=click.Choice(["late", "unresolved"]))
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table", show_default=True)
def reconcile_list(tenant, reason, fmt) -> None:
    """Held events awaiting a decision."""
    from sinks.postgres import connect
    from sinks.reconcile import undecided
    with connect(_settings().database_url) as conn:
        held = undecided(conn, tenant, reason)
    if fmt == "json":
        click.echo(orjson.dumps([{**h.__dict__, "ref": h.ref} for h in held], default=_jsonable,
                                option=orjson.OPT_INDENT_2).decode())
        return
    click.echo(f"{'id':>8} {'status':<11} {'reason':<17} {'tenant':<8} {'customer':<10} {'event':<28} time")
    for h in held:
        event = f"{h.source or '-'} {h.event_id or '-'}"
        click.echo(f"{h.id:>8} {h.status:<11} {h.reason or '-':<17} {h.tenant or '-':<8} "
                   f"{h.subject or '-':<10} {event:<28} {_jsonable(h.event_time)}")
    click.echo(f"{len(held)} held")


def _ids(settings: config.Settings, ids: tuple[int, ...], all_: bool, tenant, reason) -> list[int]:
    from sinks.postgres import connect
    from sinks.reconcile import undecided
    if bool(ids) == all_:
        _fail("give ids, or --all (with --tenant/--reason to narrow it)")
    if ids:
        return list(ids)
    with connect(settings.database_url) as conn:
        return [h.id for h in undecided(conn, tenant, reason)]


def _refuse_unknown(conn, ids: list[int]) -> None:
    """A mistyped id decides nothing at all, rather than the rest and a line that is easy to miss.
    (Ids already decided are fine: deciding again is a no-op, so a retry succeeds.)"""
    from sinks.reconcile import not_held
    if unknown := not_held(conn, ids):
        _fail(f"no held event with id {', '.join(map(str, unknown))} (see `aforo reconcile list`):"
              " nothing decided")


def _approve(settings: config.Settings, ids: list[int], actor: str, note: str | None) -> None:
    from sinks.postgres import connect
    from sinks.reconcile import awaiting_reinjection, decide, reinject
    with connect(settings.database_url) as conn:
        _refuse_unknown(conn, ids)
        approved, skipped = decide(conn, ids, "approve", actor, note)
        # also retries any approval whose re-injection did not reach the pipeline before
        pending = awaiting_reinjection(conn, ids)
    reinject(settings, pending)
    click.echo(f"approved {len(approved)}, re-injected {len(pending)}"
               + (f"; already decided: {', '.join(map(str, skipped))}" if skipped else ""))


@reconcile.command("approve")
@click.argument("ids", nargs=-1, type=int)
@click.option("--all", "all_", is_flag=True,
              help="Every undecided held event (narrow with --tenant/--reason).")
@click.option("--tenant")
@click.option("--reason", type=click.Choice(["late", "unresolved"]))
@click.option("--note")
def reconcile_approve(ids, all_, tenant, reason, note) -> None:
    """Re-inject held events with their original provenance; they are rated exactly once, however
    often this is called. Run the flow to process them."""
    s = _settings()
    _approve(s, _ids(s, ids, all_, tenant, reason), s.actor, note)


@reconcile.command("reject")
@click.argument("ids", nargs=-1, type=int, required=True)
@click.option("--note", required=True, help="Why: kept with the event's history.")
def reconcile_reject(ids, note) -> None:
    """Reject held events for good, recording who, when and why."""
    from sinks.postgres import connect
    from sinks.reconcile import decide
    s = _settings()
    with connect(s.database_url) as conn:
        _refuse_unknown(conn, list(ids))
        rejected, skipped = decide(conn, list(ids), "reject", s.actor, note)
    click.echo(f"rejected {len(rejected)}"
               + (f"; already decided: {', '.join(map(str, skipped))}" if skipped else ""))


@main.group()
def period() -> None:
    """Billing watermarks: closed periods."""


@period.command("close")
@click.option("--tenant", required=True)
@click.option("--period", "period_", required=True, help="YYYY-MM")
def period_close(tenant, period_) -> None:
    """Freeze a period: its totals and ledger digest are recorded; later changes become adjustments
    in the next open period."""
    from operators.revenue import period_bounds
    from sinks.periods import PeriodError, close_period
    from sinks.postgres import connect
    s = _settings()
    # Closing cannot be undone: a period that has not begun (a mistyped year) would send every
    # one of its events to a later period as an adjustment.
    if period_bounds(period_)[0] > (today := clock.now()):
        _fail(f"{tenant} {period_} has not started yet (today is {today:%Y-%m-%d}): nothing to close")
    try:
        with connect(s.database_url) as conn:
            d, totals = close_period(conn, tenant, period_, s.actor)
    except (PeriodError, ValueError) as exc:
        _fail(str(exc))
    click.echo(f"closed {tenant} {period_}: digest {d}, {len(totals)} customer/metric totals")


@period.command("show")
@click.option("--tenant", required=True)
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table", show_default=True)
def period_show(tenant, fmt) -> None:
    """Closed periods: totals, digests (as closed and now), adjustments billed later."""
    from sinks.periods import show_periods
    from sinks.postgres import connect
    with connect(_settings().database_url) as conn:
        periods = show_periods(conn, tenant)
    if fmt == "json":
        click.echo(orjson.dumps(periods, default=_jsonable, option=orjson.OPT_INDENT_2).decode())
        return
    for p in periods:
        if p["status"] == "closing":
            click.echo(f"{p['period']} closing since {_jsonable(p['closed_at'])} by {p['closed_by']}: its "
                       f"digest and totals are being computed (ledger rows up to id {p['closed_through']})")
        else:
            intact = "unchanged" if p["digest_now"] == p["digest"] else "CHANGED since closing"
            click.echo(f"{p['period']} closed {_jsonable(p['closed_at'])} by {p['closed_by']}; digest "
                       f"{p['digest'][:16]}… {intact}")
        for key, t in (p["totals"] or {}).items():
            click.echo(f"  {key:<28} events {t['events']:>8}  quantity {t['quantity']:>14}  "
                       f"revenue {t['revenue']}")
        for a in p["adjustments"]:
            click.echo(f"  adjustments billed in {a['billed_in']}: {a['events']} events, "
                       f"revenue {a['revenue']}")


@main.group()
def audit() -> None:
    """The tamper-evident audit trail."""


@audit.command("export")
@click.option("--tenant", required=True)
@click.option("--customer")
@click.option("--period", help="YYYY-MM")
@click.option("--format", "fmt", type=click.Choice(["ndjson", "csv"]), default="ndjson", show_default=True)
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), required=True)
def audit_export(tenant, customer, period, fmt, output: Path) -> None:
    """Every ledger row behind the selection with its provenance and audit entry, plus a manifest
    (OUTPUT.manifest.json): row count, totals per metric, the file's SHA-256, the chains' heads."""
    from operators.revenue import period_bounds
    from sinks.audit import export_file
    from sinks.postgres import connect
    if period is not None:
        period_bounds(period)  # a misspelt period would export nothing and look complete
    with connect(_settings().database_url) as conn, writing(output):
        rows, manifest_path = export_file(conn, output, fmt, tenant, customer=customer, period=period)
    click.echo(f"{rows} rows -> {output}; manifest {manifest_path}")


@audit.command("verify")
@click.argument("file", required=False, type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--tenant", help="Verify the live ledger of this tenant instead of an export.")
def audit_verify(file: Path | None, tenant) -> None:
    """Recompute every row hash and chain link (of a tenant in Postgres, or of an NDJSON export and
    its manifest); print OK, or the first broken row and why; exit 1 on failure."""
    from sinks.audit import verify_file, verify_tenant
    from sinks.postgres import connect
    if (file is None) == (tenant is None):
        _fail("give an exported FILE or --tenant")
    if file is not None:
        checked, problem = verify_file(file)
        if problem:
            click.echo(f"BROKEN: {problem}")
            sys.exit(1)
        click.echo(f"OK: {file}: {checked} rows match their hashes and chain links")
        return
    with connect(_settings().database_url) as conn:
        entries, problems = verify_tenant(conn, tenant)
    if not problems:
        click.echo(f"OK: {tenant}: {entries} chain entries, every row matches its entry")
        return
    for p in problems[:20]:
        click.echo(f"BROKEN: {p.where}: {p.why}")
    if len(problems) > 20:
        click.echo(f"... and {len(problems) - 20} more")
    sys.exit(1)


# --- the demo -------------------------------------------------------------------------------------

def print_summary(settings: config.Settings, since: datetime | None = None) -> None:
    from sinks.postgres import connect
    from sinks.reports import status_counts
    with connect(settings.database_url) as conn:
        counts = status_counts(conn, settings.topics.raw, since)
    total = sum(n for *_, n in counts)
    click.echo(f"\n{'status':<12} {'reason':<18} {'records':>8}")
    click.echo("-" * 40)
    for status_, reason, n in counts:
        click.echo(f"{status_:<12} {reason or '-':<18} {n:>8}")
    click.echo("-" * 40)
    dupes = sum(n for s, _, n in counts if s == "duplicate")
    click.echo(f"{'total':<31} {total:>8}\nduplicates caught: {dupes}")


@main.command()
@click.option("--events", "normal", default=2000, show_default=True, help="Normal events in the stream.")
def demo(normal: int) -> None:
    """Apply the demo catalog, send the demo stream (and the last ended period's usage), run both
    flows once, print the summary, the alerts and revenue, then bill that period."""
    from cli.alerts_commands import demo_monitoring_lines, print_demo_alerts, run_monitoring
    from cli.bill_commands import demo_billing
    from cli.demo import CATALOG, billable_period, billing_history, demo_stream, send_timed
    s = _settings()
    apply_catalog_file(s, CATALOG)
    started = clock.now()
    # a fresh seed per run: a second demo is new traffic, not a replay of the first
    lines, expected = demo_stream(started, normal, seed=int(started.timestamp()))
    # the monitoring scenarios go first: the detectors read each customer's events in event-time order
    lines = demo_monitoring_lines(started, seed=int(started.timestamp())) + lines
    acked = send_lines(s, lines, total=len(lines))
    click.echo(f"sent {acked} raw records "
               f"({sum(v for k, v in expected.items() if not k.startswith('accepted'))} of them "
               "duplicates, conflicts, late, future, too old, malformed or schema-broken)")
    click.echo(f"sent {send_timed(s, billing_history(billable_period(started)))} records of "
               f"{billable_period(started)}'s usage, each with its own (past) ingestion time")
    elapsed = run_flow(s, once=True, workers=1)
    click.echo(f"metering flow processed the raw topic in {elapsed:.1f}s")
    click.echo(f"monitoring flow processed the enriched topic in {run_monitoring(s):.1f}s")
    print_summary(s, since=started)
    print_demo_alerts(s, started)
    click.echo("")
    ctx = click.get_current_context()
    ctx.invoke(revenue, tenant=None, period=None, fmt="table")
    demo_billing(s, started)


@main.command()
def summary() -> None:
    """Ledger rows per status and reason."""
    print_summary(_settings())
