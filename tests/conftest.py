"""Integration fixtures: one real stack (Kafka-protocol broker, Postgres, Redis) per test session.

By default the embedded stack is started on free ports under a temporary AFORO_HOME. Set
AFORO_KAFKA_BOOTSTRAP, AFORO_DATABASE_URL and AFORO_REDIS_URL to run against external services.
Each test gets its own topics (a unique prefix), its own database (with the demo catalog
applied) and its own AFORO_HOME.

A test marked `time_sensitive` reads the clock (it builds events from "now"), so it runs three
times: at the real time, and with the clock at 00:30 UTC on the 1st of a month and on 1 January,
where "the last hour" and "30 hours ago" fall in another period, or year. The clock is moved with
time-machine, in this process only: Aforo stamps raw records from config.clock, so ingestion
moves with it (libfaketime would hang librdkafka's timed waits).
"""

from __future__ import annotations

import dataclasses
import shutil
import tempfile
import uuid
from pathlib import Path

import psycopg
import pytest
import time_machine

import config
from cli.demo import demo_catalog
from schemas.catalog import Catalog
from sinks.catalog import apply_catalog
from sinks.postgres import migrate

TEMPLATE_DB = "aforo_test_template"
# After a 28-day February, and the new year: fixed, so a failure can be reproduced.
CLOCKS = {"now": None, "month-start": "2027-03-01T00:30:00Z", "new-year": "2027-01-01T00:30:00Z"}


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if metafunc.definition.get_closest_marker("time_sensitive"):
        metafunc.parametrize("test_clock", list(CLOCKS.values()), ids=list(CLOCKS), indirect=True)


@pytest.fixture(autouse=True)
def test_clock(request: pytest.FixtureRequest):
    """The clock of a time-sensitive test's run (see the module's docstring); ticking, so
    durations and timeouts still pass."""
    at = getattr(request, "param", None)
    if at is None:
        yield
        return
    with time_machine.travel(at, tick=True):
        yield


def _with_db(url: str, db: str) -> str:
    return url.rsplit("/", 1)[0] + "/" + db


@pytest.fixture(scope="session")
def stack() -> config.Settings:
    base = config.load()
    if base.external:
        yield base
        return
    from stack.embedded import temporary
    # Not under pytest's basetemp: every pytest session resets that tree to mode 0700, which
    # would lock the Postgres system account out of a stack another session is running.
    home = Path(tempfile.mkdtemp(prefix="aforo-test-stack-"))
    try:
        with temporary(base, home) as settings:
            yield settings
    finally:
        shutil.rmtree(home, ignore_errors=True)


@pytest.fixture(scope="session")
def template_db(stack) -> str:
    admin = _with_db(stack.database_url, "postgres")
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {TEMPLATE_DB}")
        conn.execute(f"CREATE DATABASE {TEMPLATE_DB}")
    url = _with_db(stack.database_url, TEMPLATE_DB)
    migrate(url)
    with psycopg.connect(url) as conn:
        apply_catalog(conn, Catalog.model_validate(demo_catalog()))
    return TEMPLATE_DB


def new_database(stack: config.Settings, template: str) -> str:
    name = f"t_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(_with_db(stack.database_url, "postgres"), autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name} TEMPLATE {template}")
    url = _with_db(stack.database_url, name)
    with psycopg.connect(url) as conn:  # its own cache namespace in the shared Redis
        conn.execute("UPDATE catalog_state SET catalog_id = md5(random()::text)")
    return url


@pytest.fixture
def settings(stack, template_db, tmp_path: Path) -> config.Settings:
    """Settings of one isolated Aforo installation on the shared stack."""
    return dataclasses.replace(
        stack, home=tmp_path, topic_prefix=f"t{uuid.uuid4().hex[:10]}",
        database_url_env=new_database(stack, template_db), secret_env="test-secret",
        epoch_interval_s=0.5)
