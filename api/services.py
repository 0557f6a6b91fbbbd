"""What the routes share for the life of the process: producer, Postgres pool, caches, limits."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, TypeVar

import anyio.to_thread
import redis.asyncio as aioredis
from fastapi import Depends, Request
from psycopg_pool import ConnectionPool

from api.cache import TtlCache
from api.keys import StoredKey, find_key
from api.limits import RateLimiter
from api.sessions import session_key
from api.stream import LiveTail
from api.webhooks.secrets import SecretBox
from api.webhooks.store import WebhookSource, find_source
from config import Settings
from observe.health import Readiness
from sinks.raw_producer import RawProducer

T = TypeVar("T")


@dataclass(frozen=True)
class ApiOptions:
    rate: float = 100.0  # requests per second per source (API key or webhook source)
    burst: float = 200.0
    delivery_timeout_s: float = 30.0  # longest wait for the broker's acknowledgement
    access_log: bool = True  # one structured line per request (aforo.api.access)


class Services:
    def __init__(self, settings: Settings, options: ApiOptions):
        self.settings = settings
        self.producer = RawProducer(settings, options.delivery_timeout_s)
        # Opened without waiting: the API starts (and answers 503) while Postgres is away.
        self.pool = ConnectionPool(settings.database_url, min_size=1, max_size=8, open=False,
                                   kwargs={"autocommit": True})
        self.pool.open(wait=False)
        # short timeouts: a request waits at most this long before the limiter falls back
        redis_client = aioredis.Redis.from_url(settings.redis_url, socket_timeout=0.5,
                                               socket_connect_timeout=0.5)
        self.limiter = RateLimiter(options.rate, options.burst, redis_client, settings.topic_prefix)
        self.readiness = Readiness(settings)
        self.keys: TtlCache[StoredKey] = TtlCache(lambda key_id: self.db(find_key, key_id))
        self.sources: TtlCache[WebhookSource] = TtlCache(lambda name: self.db(find_source, name))
        self.secrets = SecretBox(settings)
        self.sessions: TtlCache[str] = TtlCache(lambda token: self.db(session_key, token))  # -> key id
        self.live = LiveTail(settings)  # one output-topic consumer for every SSE client

    async def db(self, query: Callable[..., T], *args: object) -> T:
        """Run a plain `(conn, ...)` query function (the same ones the CLI calls) off the event loop."""
        def run() -> T:
            with self.pool.connection(timeout=10) as conn:
                return query(conn, *args)
        return await anyio.to_thread.run_sync(run)

    async def aclose(self) -> None:
        await self.limiter.aclose()
        self.live.close()
        self.producer.close()
        self.pool.close()


def services(request: Request) -> Services:
    return request.app.state.services


Svc = Annotated[Services, Depends(services)]
