"""Operator mistakes get one clear line and an exit code (CLI) or a JSON error (API), never a
traceback: every AforoError is mapped in one place per layer."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

import psycopg
import pytest
import time_machine
from billing_fixtures import END, PERIOD, clock_past, send_at
from click.testing import CliRunner
from fastapi.testclient import TestClient
from integration import env_of

from api.app import create_app
from api.errors import ApiError
from cli.main import main
from config import NotConfigured, Settings
from flows.metering import run
from schemas.errors import Conflict, NotFound
from stack.embedded import free_port

REPO = Path(__file__).resolve().parents[1]
NO_STACK = {"AFORO_KAFKA_BOOTSTRAP": "", "AFORO_DATABASE_URL": "", "AFORO_REDIS_URL": ""}


@pytest.mark.parametrize("args", [
    ["summary"], ["revenue"], ["reconcile", "list"], ["events", "export"], ["keys", "list"],
    ["send", "-"], ["alerts", "list"], ["migrate"], ["run", "--once"],
])
def test_a_command_without_a_stack_prints_one_line_and_exits_2(args, tmp_path):
    result = CliRunner().invoke(main, args, input='{"id": "1"}\n',
                                env={**NO_STACK, "AFORO_HOME": str(tmp_path)})
    assert result.exit_code == 2, result.output
    assert not isinstance(result.exception, NotConfigured)  # handled, not raised through
    [line] = result.output.strip().splitlines()
    assert line.startswith("Error: no ") and "configured" in line and "aforo up" in line, line


def test_a_database_that_does_not_answer_is_one_line_too(tmp_path):
    env = {**NO_STACK, "AFORO_HOME": str(tmp_path), "AFORO_DATABASE_URL": f"postgresql://127.0.0.1:{free_port()}/x"}
    result = CliRunner().invoke(main, ["summary"], env=env)
    assert result.exit_code == 2
    [line] = result.output.strip().splitlines()
    assert line.startswith("Error: cannot reach Postgres: connection failed: ") and "refused" in line


@pytest.mark.integration
def test_a_database_without_the_schema_says_run_migrate(settings):
    empty = settings.database_url.rsplit("/", 1)[0] + f"/e_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(settings.database_url.rsplit("/", 1)[0] + "/postgres", autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {empty.rsplit('/', 1)[1]}")
    env = {**settings.to_env(), "AFORO_DATABASE_URL": empty}
    result = CliRunner().invoke(main, ["reconcile", "list"], env=env)
    assert result.exit_code == 2
    [line] = result.output.strip().splitlines()
    assert "run `aforo migrate`" in line


@pytest.mark.integration
def test_migrate_with_an_unreachable_broker_says_so_at_once_and_changes_nothing(settings):
    empty = f"m_{uuid.uuid4().hex[:12]}"
    admin = settings.database_url.rsplit("/", 1)[0]
    with psycopg.connect(f"{admin}/postgres", autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {empty}")
    closed = f"127.0.0.1:{free_port()}"
    env = {**os.environ, **settings.to_env(), "AFORO_KAFKA_BOOTSTRAP": closed,
           "AFORO_DATABASE_URL": f"{admin}/{empty}"}
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-c", "from cli.main import main; main()", "migrate"],
                          env=env, cwd=REPO, capture_output=True, text=True, timeout=120)
    print(f"\nmigrate against a closed port failed in {time.monotonic() - started:.2f} s")
    assert done.returncode == 2, done.stderr
    assert done.stdout == ""
    # librdkafka wrote ~195 lines here before, over its 10 s timeout
    assert done.stderr.strip().splitlines() == [
        f"Error: cannot reach the Kafka broker ({closed}: Connection refused); "
        "check AFORO_KAFKA_BOOTSTRAP or `aforo status`"]
    with psycopg.connect(f"{admin}/{empty}") as conn:  # the database was left alone
        assert conn.execute("SELECT to_regclass('schema_migrations')").fetchone() == (None,)


def test_the_api_answers_every_aforo_error_from_its_class(tmp_path):
    settings = Settings(home=tmp_path, kafka_bootstrap_env="127.0.0.1:1",
                        database_url_env="postgresql://127.0.0.1:1/x", redis_url_env="redis://127.0.0.1:1")
    app = create_app(settings)
    raising = {"not-configured": NotConfigured("no postgres configured"),
               "conflict": Conflict("acme 2026-10 is closed"), "missing": NotFound("no such backfill"),
               "api": ApiError(429, "rate_limited", "slow down", headers={"Retry-After": "2"}, source="k")}
    def raiser(error: Exception):
        def route():
            raise error
        return route
    for name, error in raising.items():
        app.add_api_route(f"/raise/{name}", raiser(error))
    client = TestClient(app)  # no lifespan: the routes need no services
    answers = {name: client.get(f"/raise/{name}") for name in raising}
    assert {n: (r.status_code, r.json()) for n, r in answers.items()} == {
        "not-configured": (503, {"error": "not_configured", "message": "no postgres configured"}),
        "conflict": (409, {"error": "conflict", "message": "acme 2026-10 is closed"}),
        "missing": (404, {"error": "not_found", "message": "no such backfill"}),
        "api": (429, {"error": "rate_limited", "message": "slow down", "source": "k"}),
    }
    assert answers["not-configured"].headers["retry-after"] == "5"
    assert answers["api"].headers["retry-after"] == "2"


@pytest.mark.skipif(os.geteuid() != 0, reason="only root makes machine changes for Postgres")
def test_up_as_root_says_what_it_would_change_and_asks_first(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o700)
    env = {**NO_STACK, "AFORO_HOME": str(locked / "home"),
           **{f"AFORO_EMBEDDED_{s}_PORT": str(free_port()) for s in ("KAFKA", "POSTGRES", "REDIS")}}
    refused = CliRunner().invoke(main, ["up"], env=env)  # no terminal to ask on, no --yes
    assert refused.exit_code == 1
    assert f"let every user pass through (o+x: enter, not list) {locked}\n" in refused.output
    assert "re-run with --yes" in refused.output
    assert locked.stat().st_mode & 0o777 == 0o700  # nothing changed
    assert not (locked / "home" / "stack.json").exists()  # nothing started

    try:
        allowed = CliRunner().invoke(main, ["up", "--yes"], env=env)
        assert allowed.exit_code == 0, allowed.output
        assert f"pass through (o+x: enter, not list) {locked}\n" in allowed.output  # said, not asked
        assert locked.stat().st_mode & 0o777 == 0o701
        assert "postgres  running" in allowed.output
    finally:
        CliRunner().invoke(main, ["down"], env=env)


def one_error_line(result) -> str:
    """The last line of a refused command, checked to be an error and not a traceback."""
    assert result.exit_code in (1, 2), result.output
    assert isinstance(result.exception, SystemExit), repr(result.exception)  # handled, not raised
    return result.output.strip().splitlines()[-1]


def billing_state(settings) -> dict[str, int]:
    with psycopg.connect(settings.database_url) as conn:
        return {t: conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0]
                for t in ("bill_runs", "invoices", "closed_periods")}


@pytest.mark.integration
def test_a_misspelt_period_bills_closes_and_exports_nothing(settings, tmp_path):
    # "2026-3" used to be taken as March beside "2026-03": closed, invoiced (the demo catalog's
    # minimums), a second time over for the same month
    send_at(settings, [clock_past(END)])  # the pipeline's clock is past March and its lateness
    run(settings, once=True)
    out = tmp_path / "march.ndjson"
    for args in (["bill", "run", "--tenant", "acme", "--period", "2026-3"],
                 ["period", "close", "--tenant", "acme", "--period", "2026-3"],
                 ["period", "close", "--tenant", "acme", "--period", "2026-13"],
                 ["audit", "export", "--tenant", "acme", "--period", "2026-3", "-o", str(out)]):
        line = one_error_line(CliRunner().invoke(main, args, env=env_of(settings)))
        assert line.startswith("Error: ") and f"'{args[args.index('--period') + 1]}'" in line, line
        assert "YYYY-MM" in line, line
    assert billing_state(settings) == {"bill_runs": 0, "invoices": 0, "closed_periods": 0}
    assert not out.exists()


@pytest.mark.integration
def test_closing_a_period_that_has_not_begun_or_of_an_unknown_tenant_is_refused(settings):
    def close(tenant: str, period: str):
        return CliRunner().invoke(main, ["period", "close", "--tenant", tenant, "--period", period],
                                  env=env_of(settings))

    with time_machine.travel(datetime(2026, 4, 30, 23, 59, tzinfo=UTC), tick=False):
        assert one_error_line(close("acme", "2026-05")) == (
            "Error: acme 2026-05 has not started yet (today is 2026-04-30): nothing to close")
        assert one_error_line(close("acme-typo", "2026-03")) == "Error: no tenant 'acme-typo'"
        assert billing_state(settings)["closed_periods"] == 0
        assert close("acme", "2026-04").exit_code == 0  # begun, even if not over: the operator's call
    with psycopg.connect(settings.database_url) as conn:
        assert conn.execute("SELECT tenant, period FROM closed_periods").fetchall() == [("acme", "2026-04")]


@pytest.mark.integration
def test_an_output_path_that_cannot_be_written_is_one_line_and_writes_nothing(settings, tmp_path):
    send_at(settings, [clock_past(END)])
    run(settings, once=True)
    assert CliRunner().invoke(main, ["bill", "run", "--tenant", "acme", "--period", PERIOD, "--quiet"],
                              env=env_of(settings)).exit_code == 0
    with psycopg.connect(settings.database_url) as conn:
        number = conn.execute("SELECT min(number) FROM invoices WHERE tenant = 'acme'").fetchone()[0]
    missing = tmp_path / "no-such-dir" / "out"
    for args in (["invoice", "export", number, "--tenant", "acme", "--format", "pdf", "-o", f"{missing}.pdf"],
                 ["invoice", "trace", number, "--tenant", "acme", "-o", f"{missing}.ndjson"],
                 ["audit", "export", "--tenant", "acme", "-o", f"{missing}.ndjson"]):
        line = one_error_line(CliRunner().invoke(main, args, env=env_of(settings)))
        assert line == f"Error: cannot write {args[-1]}: No such file or directory", line
    assert not missing.parent.exists()


def test_a_file_that_is_not_an_audit_export_is_broken_not_a_traceback(tmp_path):
    for name, content, why in (("log.txt", b"bill run 1: acme 2026-03\n", "unexpected character"),
                               ("other.ndjson", b'{"id": "evt-1"}\n', "a row has no 'raw_partition'")):
        path = tmp_path / name
        path.write_bytes(content)
        result = CliRunner().invoke(main, ["audit", "verify", str(path)],
                                    env={**NO_STACK, "AFORO_HOME": str(tmp_path)})
        line = one_error_line(result)
        assert line.startswith(f"BROKEN: {path} is not an audit export") and why in line, line


def test_a_catalog_that_is_not_yaml_is_one_line(tmp_path):
    path = tmp_path / "catalog.yaml"
    path.write_text("tenants:\n  - {id: acme, currency: USD\n")
    result = CliRunner().invoke(main, ["catalog", "apply", str(path)],
                                env={**NO_STACK, "AFORO_HOME": str(tmp_path)})
    assert one_error_line(result) == (f"Error: {path}: not valid YAML: expected ',' or '}}', but got "
                                      "'<stream end>' at line 3, column 1")
