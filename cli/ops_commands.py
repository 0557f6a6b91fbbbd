"""`aforo doctor`: the configured services checked, and what is wrong, on one screen."""

from __future__ import annotations

import logging
import os
import sys

import click

import config
from observe.health import Check


def _describe(s: config.Settings) -> list[tuple[str, str]]:
    """What this installation is configured to use, credentials masked."""
    def url(value: str | None, env: str) -> str:
        return config.redact_url(value) if value else f"embedded stack (no {env})"

    props = " ".join(f"{k}={'***' if config.is_secret_property(k) else v}" for k, v in s.kafka_properties)
    source = f" (AFORO_KAFKA_CONFIG={s.kafka_config_file})" if s.kafka_config_file else ""
    rf = "the broker's default" if s.replication_factor < 0 else str(s.replication_factor)
    return [
        ("kafka", f"{url(s.kafka_bootstrap_env, 'AFORO_KAFKA_BOOTSTRAP')} {props or 'PLAINTEXT'}{source}"),
        ("postgres", url(s.database_url_env, "AFORO_DATABASE_URL")),
        ("redis", url(s.redis_url_env, "AFORO_REDIS_URL")),
        ("topics", f"prefix {s.topic_prefix}: raw {s.raw_partitions} partitions, replication {rf}"),
        ("logs", f"{s.log_format_env or 'json (services) / text (commands)'}, "
                 f"level {s.log_level or 'INFO (services) / WARNING (commands)'}"),
    ]


def _topics(s: config.Settings, kafka_ok: bool) -> Check:
    from sinks.kafka import topic_differences
    if not kafka_ok:
        return Check("topics", False, "not checked: the broker is unreachable")
    differences = topic_differences(s)
    if differences:
        return Check("topics", False, "; ".join(differences))
    return Check("topics", True, "as configured")


def _recovery(s: config.Settings) -> Check:
    path = s.recovery_dir
    existing = next((p for p in (path, *path.parents) if p.exists()), None)
    if existing is None or not os.access(existing, os.W_OK | os.X_OK):
        return Check("recovery", False, f"{path}: {existing or path} is not writable by this user")
    return Check("recovery", True, f"{path} {'exists' if existing == path else 'can be created'}")


def _secret(s: config.Settings) -> Check:
    if s.secret_env:
        return Check("secret", True, "from AFORO_SECRET")
    path = s.home / "secret"
    if path.exists():
        return Check("secret", True, f"generated, in {path}: every process must see the same file "
                                     "(set AFORO_SECRET when processes run on several machines)")
    if s.external:
        return Check("secret", False, "AFORO_SECRET is not set: each machine would generate its own, "
                                      "and validation hashes would differ between processes")
    return Check("secret", True, f"generated on first use in {path}")


def run_checks(s: config.Settings) -> list[Check]:
    from observe.health import check_kafka, check_postgres, check_redis
    kafka = check_kafka(s)
    return [kafka, _topics(s, kafka.ok), *check_postgres(s), check_redis(s), _recovery(s), _secret(s)]


@click.command()
def doctor() -> None:
    """Check the configured Kafka, Postgres and Redis, the schema, the topics and the local state,
    and print what is wrong. Exit 1 if anything is."""
    try:
        s = config.load()
    except ValueError as exc:
        click.echo(f"configuration: {exc}")
        sys.exit(1)
    # the broker check reports its own failure in one line; librdkafka would add dozens
    logging.getLogger("aforo.librdkafka").setLevel(logging.CRITICAL)
    click.echo(f"Aforo at AFORO_HOME={s.home}")
    for name, value in _describe(s):
        click.echo(f"  {name:<10} {value}")
    checks = run_checks(s)
    click.echo("")
    for c in checks:
        click.echo(f"  {'ok' if c.ok else 'FAIL':<5} {c.name:<11} {c.detail}")
    problems = sum(not c.ok for c in checks)
    click.echo(f"\n{problems} problem{'s' if problems != 1 else ''}" if problems else "\nall good")
    sys.exit(1 if problems else 0)
