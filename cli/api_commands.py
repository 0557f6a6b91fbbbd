"""`aforo serve`, `aforo keys`, `aforo upload`, `aforo webhooks`: the HTTP front doors' commands."""

from __future__ import annotations

import io
import sys
from pathlib import Path

import click
import orjson

import config
from api.webhooks.signatures import PROVIDERS

_FORMATS = {".csv": "csv", ".json": "json", ".ndjson": "ndjson", ".jsonl": "ndjson"}


def _settings() -> config.Settings:
    return config.load()


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8080, show_default=True, type=int)
@click.option("--rate", default=100.0, show_default=True,
              help="Requests per second per API key or webhook source.")
@click.option("--burst", default=200.0, show_default=True, help="Requests a source may send at once.")
def serve(host: str, port: int, rate: float, burst: float) -> None:
    """Run the HTTP API (OpenAPI document at /openapi.json)."""
    from api.server import serve as run_server
    from api.services import ApiOptions
    run_server(host, port, ApiOptions(rate=rate, burst=burst))


# --- API keys ------------------------------------------------------------------------------------

@click.group()
def keys() -> None:
    """API keys of a tenant, a customer or an operator (stored hashed; a key is shown once)."""


@keys.command("create")
@click.option("--tenant", help="The tenant whose events the key sends and whose data it reads.")
@click.option("--customer", help="With --tenant: a read-only key of this one customer (the portal).")
@click.option("--operator", is_flag=True, help="A read-only key of every tenant (the console).")
def keys_create(tenant: str | None, customer: str | None, operator: bool) -> None:
    """Create a key and print it once: a tenant key (--tenant), a customer key (--tenant and
    --customer) or an operator key (--operator)."""
    import psycopg

    from api.keys import create_key
    from sinks.postgres import connect
    if operator == bool(tenant) or (operator and customer):
        raise click.UsageError("give --tenant (and optionally --customer), or --operator alone")
    scope = "operator" if operator else "customer" if customer else "tenant"
    try:
        with connect(_settings().database_url) as conn:
            key_id, key = create_key(conn, tenant, scope, customer)
    except psycopg.errors.ForeignKeyViolation:
        what = f"customer {customer!r} of tenant {tenant!r}" if customer else f"tenant {tenant!r}"
        raise click.ClickException(f"{what} is not in the catalog") from None
    click.echo(f"key id: {key_id}\nscope:  {scope}\nkey:    {key}")
    click.echo("Store the key now: it is not shown again (only its SHA-256 is kept).", err=True)


@keys.command("revoke")
@click.argument("key_id")
def keys_revoke(key_id: str) -> None:
    """Revoke a key by its id (effective within 5 s on running servers)."""
    from api.keys import revoke_key
    from sinks.postgres import connect
    with connect(_settings().database_url) as conn:
        if not revoke_key(conn, key_id):
            raise click.ClickException(f"no live key {key_id!r}")
    click.echo(f"revoked {key_id}")


@keys.command("list")
@click.option("--tenant")
def keys_list(tenant: str | None) -> None:
    """Every key's id, scope, tenant, customer, creation and revocation time (never the key)."""
    from api.keys import list_keys
    from sinks.postgres import connect
    with connect(_settings().database_url) as conn:
        stored = list_keys(conn, tenant)
    click.echo(f"{'id':<18} {'scope':<9} {'tenant':<12} {'customer':<12} {'created':<26} revoked")
    for k in stored:
        revoked = k.revoked_at.isoformat(timespec="seconds") if k.revoked_at else "-"
        click.echo(f"{k.id:<18} {k.scope:<9} {k.tenant or '*':<12} {k.customer or '-':<12} "
                   f"{k.created_at.isoformat(timespec='seconds'):<26} {revoked}")


# --- uploads -------------------------------------------------------------------------------------

class _Progress(io.RawIOBase):
    """A file that advances a progress bar by the bytes read from it."""

    def __init__(self, raw, bar):
        self._raw, self._bar = raw, bar

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        n = self._raw.readinto(buffer)
        self._bar.update(n or 0)
        return n


@click.command()
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--format", "fmt", type=click.Choice(["csv", "json", "ndjson"]),
              help="Default: from the file's extension (.csv, .json, .ndjson, .jsonl).")
@click.option("--mapping", "mapping_file", type=click.File("rb"),
              help="CSV column mapping (JSON, see README).")
@click.option("--tenant", help="Fill a missing tenantid with T and refuse rows of other tenants.")
@click.option("--backfill", is_flag=True,
              help="Admit FILE as history of open periods, past the 24-hour lateness gate: checked "
                   "whole first, recorded with --reason, produced in event-time order per customer.")
@click.option("--reason", help="Why this history is backfilled (required with --backfill).")
def upload(file: Path, fmt: str | None, mapping_file, tenant: str | None, backfill: bool,
           reason: str | None) -> None:
    """Produce every row of FILE as one event (tier upload), streamed; report bad rows by line.
    With --backfill, FILE is one audited backfill instead: all of it, or none of it."""
    from api.backfill import require_reason
    from api.uploads import UploadError, parse_csv_mapping, rows_of, run_upload
    from cli.backfill_commands import backfill_rows
    from sinks.kafka import ensure_topics
    from sinks.raw_producer import RawProducer
    fmt = fmt or _FORMATS.get(file.suffix.lower())
    if fmt is None:
        raise click.ClickException(f"cannot tell the format of {file.name}: give --format")
    if backfill:
        if tenant is None:
            raise click.UsageError("--backfill needs --tenant: a backfill belongs to one tenant")
        reason = require_reason(reason)
    elif reason is not None:
        raise click.UsageError("--reason goes with --backfill")
    settings = _settings()
    try:
        mapping = parse_csv_mapping(orjson.loads(mapping_file.read())) if mapping_file else None
    except (orjson.JSONDecodeError, UploadError) as exc:
        raise click.ClickException(f"--mapping: {exc}") from None
    ensure_topics(settings)
    producer = RawProducer(settings)
    try:
        with file.open("rb", buffering=0) as raw, click.progressbar(
                length=file.stat().st_size, label="uploading", file=sys.stderr) as bar:
            stream = io.BufferedReader(_Progress(raw, bar), 256 * 1024)
            rows = rows_of(stream, fmt, mapping)
            if backfill:
                report = backfill_rows(settings, rows, tenant, reason, producer)
            else:
                report = run_upload(rows, fmt, tenant, producer)
    except UploadError as exc:
        raise click.ClickException(str(exc)) from None
    finally:
        producer.close()
    click.echo(orjson.dumps(report.model_dump(mode="json"), option=orjson.OPT_INDENT_2).decode())
    if backfill and report.not_acknowledged:
        raise click.ClickException(f"backfill {report.id}: {report.produced} of {report.events} events "
                                   "acknowledged; backfill the file again (what arrived ends as duplicates)")
    if not backfill and (report.not_acknowledged or report.stopped):
        raise click.ClickException(f"{report.produced} of {report.rows} rows produced; see the report")


# --- webhook sources -----------------------------------------------------------------------------

@click.group()
def webhooks() -> None:
    """Webhook sources: provider, signing secret, tenant and payload mapping."""


@webhooks.command("add")
@click.argument("name")
@click.option("--provider", required=True,
              type=click.Choice(PROVIDERS))
@click.option("--tenant", required=True,
              help="The tenant of its events (one source per tenant: no provider signs a tenant header).")
@click.option("--secret", prompt=True, hide_input=True,
              help="Signing secret (SendGrid: the verification public key). Prompted when not given.")
@click.option("--mapping", "mapping_file", type=click.File("rb"),
              help="JSONPath mapping (JSON); default: the provider's template (`aforo webhooks template`).")
def webhooks_add(name: str, provider: str, tenant: str, secret: str, mapping_file) -> None:
    """Add webhook source NAME, received at POST /v1/webhooks/<provider>/NAME; its secret is
    stored encrypted (key: AFORO_WEBHOOK_KEY, else $AFORO_HOME/webhook.key)."""
    from api.webhooks.mapping import MappingError
    from api.webhooks.secrets import SecretBox
    from api.webhooks.store import add_source
    from sinks.postgres import connect
    settings = _settings()
    try:
        mapping = orjson.loads(mapping_file.read()) if mapping_file else None
        with connect(settings.database_url) as conn:
            source = add_source(conn, name, provider, secret, tenant, mapping, SecretBox(settings))
    except (orjson.JSONDecodeError, MappingError, ValueError) as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"POST /v1/webhooks/{source.provider}/{source.name} -> tenant {source.tenant}")


@webhooks.command("list")
def webhooks_list() -> None:
    """Every source with its provider, tenant and mapping (never its secret)."""
    from api.webhooks.store import list_sources
    from sinks.postgres import connect
    with connect(_settings().database_url) as conn:
        sources = list_sources(conn)
    for s in sources:
        click.echo(f"{s.name:<20} {s.provider:<9} {s.tenant or '(none: add again)':<12} "
                   f"{orjson.dumps(s.mapping.to_json()).decode()}")


@webhooks.command("remove")
@click.argument("name")
def webhooks_remove(name: str) -> None:
    """Remove webhook source NAME."""
    from api.webhooks.store import remove_source
    from sinks.postgres import connect
    with connect(_settings().database_url) as conn:
        if not remove_source(conn, name):
            raise click.ClickException(f"no webhook source {name!r}")
    click.echo(f"removed {name}")


@webhooks.command("template")
@click.argument("provider", type=click.Choice(PROVIDERS))
def webhooks_template(provider: str) -> None:
    """Print PROVIDER's ready mapping, to edit and pass to `webhooks add --mapping`."""
    from api.webhooks.templates import TEMPLATES
    click.echo(orjson.dumps(TEMPLATES[provider], option=orjson.OPT_INDENT_2).decode())
