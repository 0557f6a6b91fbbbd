"""Sustained accepted events/s through POST /v1/events, and request latency: `python -m api.bench`.

A real uvicorn server (its own process, as `aforo serve` runs it) on loopback, producing to a real
broker: the configured services when AFORO_KAFKA_BOOTSTRAP, AFORO_DATABASE_URL and
AFORO_REDIS_URL are all set, else an embedded stack started for the run in a temporary home.
Each case posts batches of one size from concurrent clients for a fixed time after a warm-up and
counts only 202 answers (the broker acknowledged every event of the batch). The client runs on the
same machine, so the figures are a floor for the server alone.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import orjson
import psycopg

import config
from api.keys import create_key
from sinks.kafka import ensure_topics
from sinks.postgres import connect, migrate

POOL = 64  # distinct request bodies per case, cycled (the API's cost does not depend on ids)


@contextmanager
def _stack() -> Iterator[config.Settings]:
    """The configured services, or an embedded stack for the duration of the run."""
    base = config.load()
    if base.external:
        yield base
        return
    from stack.embedded import temporary
    with tempfile.TemporaryDirectory(prefix="aforo-bench-") as home, temporary(base, Path(home)) as settings:
        yield settings


@contextmanager
def _installation(stack: config.Settings) -> Iterator[tuple[config.Settings, str]]:
    """A fresh database (schema and demo catalog) and topics of its own, and a key of tenant acme."""
    from cli.demo import demo_catalog
    from schemas.catalog import Catalog
    from sinks.catalog import apply_catalog
    name = f"aforo_bench_{uuid.uuid4().hex[:8]}"
    admin = stack.database_url.rsplit("/", 1)[0] + "/postgres"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    settings = dataclasses.replace(stack, database_url_env=stack.database_url.rsplit("/", 1)[0] + "/" + name,
                                   topic_prefix=f"bench{uuid.uuid4().hex[:8]}")
    try:
        migrate(settings.database_url)
        with connect(settings.database_url) as conn:
            apply_catalog(conn, Catalog.model_validate(demo_catalog()))
            _, key = create_key(conn, "acme")
        ensure_topics(settings)
        yield settings, key
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@contextmanager
def _server(settings: config.Settings) -> Iterator[str]:
    """`aforo serve` in its own process (rate limits and access log out of the way), until the run ends."""
    from stack.embedded import free_port
    port = free_port()
    env = {**os.environ, **settings.to_env()}
    code = ("from api.server import serve; from api.services import ApiOptions; "
            f"serve('127.0.0.1', {port}, ApiOptions(rate=1e9, burst=1e9, access_log=False))")
    proc = subprocess.Popen([sys.executable, "-c", code], env=env, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while True:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the API server did not start")
            time.sleep(0.1)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(30)


def _bodies(batch: int) -> list[bytes]:
    now = datetime.now(UTC).isoformat()
    return [orjson.dumps([{"specversion": "1.0", "id": f"b{batch}-{n}-{i}", "source": "bench",
                           "type": "api.call", "subject": f"cust-{i % 3 + 1}", "time": now,
                           "data": {"route": "/v1/search"}} for i in range(batch)]) for n in range(POOL)]


@dataclass
class Result:
    batch: int
    seconds: float
    events_per_s: float
    requests_per_s: float
    p50_ms: float
    p99_ms: float
    errors: int

    def line(self) -> str:
        return (f"batch {self.batch:>5}: {self.events_per_s:>9,.0f} events/s  "
                f"{self.requests_per_s:>7,.1f} req/s  p50 {self.p50_ms:6.1f} ms  p99 {self.p99_ms:6.1f} ms  "
                f"errors {self.errors}")


async def _case(base: str, key: str, batch: int, seconds: float, warmup: float, clients: int) -> Result:
    import httpx
    bodies = _bodies(batch)
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/cloudevents-batch+json"}
    latencies: list[float] = []
    accepted = errors = 0
    start = time.monotonic()
    measure_from, stop = start + warmup, start + warmup + seconds

    async def client(n: int) -> None:
        nonlocal accepted, errors
        async with httpx.AsyncClient(base_url=base, timeout=60) as http:
            i = n
            while (sent := time.monotonic()) < stop:
                r = await http.post("/v1/events", content=bodies[i % POOL], headers=headers)
                i += clients
                if sent < measure_from:
                    continue
                latencies.append(time.monotonic() - sent)
                if r.status_code == 202:
                    accepted += batch
                else:
                    errors += 1

    await asyncio.gather(*(client(n) for n in range(clients)))
    elapsed = time.monotonic() - measure_from
    cuts = statistics.quantiles(latencies, n=100)
    return Result(batch, round(elapsed, 1), accepted / elapsed, len(latencies) / elapsed,
                  cuts[49] * 1000, cuts[98] * 1000, errors)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=20.0, help="measured time per case")
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument("--clients", type=int, default=8, help="concurrent client connections")
    parser.add_argument("--batches", default="100,1000")
    args = parser.parse_args()
    with _stack() as stack, _installation(stack) as (settings, key), _server(settings) as base:
        for batch in (int(b) for b in args.batches.split(",")):
            result = asyncio.run(_case(base, key, batch, args.seconds, args.warmup, args.clients))
            print(result.line(), flush=True)


if __name__ == "__main__":
    main()
