"""Limits every door applies before looking at content: body size, JSON depth, request rate."""

from __future__ import annotations

import logging
import math
import time
import zlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

import orjson
import redis.asyncio as aioredis

from api.errors import ApiError, bad_request, too_large
from observe.metrics import RATE_LIMITED

MIB = 1024 * 1024
MAX_DEPTH = 32  # CloudEvents are shallow; deeper nesting is hostile or a mistake
log = logging.getLogger("aforo.api.limits")


def decoded(chunks: AsyncIterator[bytes], encoding: str | None) -> AsyncIterator[bytes]:
    """The body as sent, gunzipped on the fly when Content-Encoding says gzip (Firehose and the
    MuleSoft forwarder compress); 415 for any other encoding, at once, before the body is read."""
    encoding = (encoding or "identity").strip().lower()
    if encoding == "identity":
        return chunks
    if encoding not in ("gzip", "x-gzip"):
        raise ApiError(415, "unsupported_encoding", f"Content-Encoding {encoding!r} is not supported; "
                       "send identity or gzip")
    return _gunzipped(chunks)


async def _gunzipped(chunks: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    """Every member of the gzip stream in turn (RFC 1952 allows several: `cat a.gz b.gz`); a 400
    when it is not gzip or ends inside a member (truncated), never the part read so far as if it
    were all of it."""
    inflate = zlib.decompressobj(wbits=31)
    try:
        async for chunk in chunks:
            while chunk:
                if inflate.eof:  # the next member starts
                    inflate = zlib.decompressobj(wbits=31)
                # bounded output per step, so a small zip bomb cannot allocate gigabytes at once
                data = inflate.decompress(chunk, MIB)
                chunk = inflate.unused_data if inflate.eof else inflate.unconsumed_tail
                if data:
                    yield data
        tail = inflate.flush()  # output zlib held back once input ran out (a few bytes)
    except zlib.error as exc:
        raise bad_request(f"body is not valid gzip: {exc}") from None
    if tail:
        yield tail
    if not inflate.eof:
        raise bad_request("body is not valid gzip: it ends inside the compressed stream (truncated)")


def gunzip(data: bytes, limit: int) -> bytes:
    """Gunzip a payload embedded in a body (a Firehose record); ValueError past `limit` bytes."""
    inflate = zlib.decompressobj(wbits=31)
    try:
        out = inflate.decompress(data, limit + 1)
    except zlib.error as exc:
        raise ValueError(f"not valid gzip: {exc}") from None
    if len(out) > limit:
        raise ValueError(f"decompresses to more than {limit} bytes")
    if not inflate.eof:
        raise ValueError("not valid gzip: it ends inside the compressed stream (truncated)")
    return out


async def read_body(chunks: AsyncIterator[bytes], limit: int) -> bytes:
    """The whole body, refused with 413 as soon as it passes `limit` bytes (never buffered past it)."""
    parts, size = [], 0
    async for chunk in chunks:
        size += len(chunk)
        if size > limit:
            raise too_large(f"body is larger than {limit} bytes")
        parts.append(chunk)
    return b"".join(parts)


def check_depth(value: object, max_depth: int = MAX_DEPTH) -> None:
    """Raises ValueError when arrays/objects nest deeper than max_depth."""
    if type(value) in _CONTAINERS:
        _descend(value, max_depth - 1, max_depth)


_CONTAINERS = frozenset((dict, list))  # exact types: what orjson.loads builds


def _descend(node: dict | list, remaining: int, limit: int) -> None:
    # recursion is bounded by `limit`; scalars (most of a document) cost one type lookup each
    if remaining < 0:
        raise ValueError(f"JSON nests deeper than {limit} levels")
    for child in node.values() if type(node) is dict else node:
        if type(child) in _CONTAINERS:
            _descend(child, remaining - 1, limit)


def parse_json(raw: bytes, what: str = "body") -> object:
    """orjson, with depth bounded; a 400 naming the problem otherwise."""
    try:
        doc = orjson.loads(raw)
        check_depth(doc)
    except orjson.JSONDecodeError as exc:
        raise bad_request(f"{what} is not valid JSON: {exc}") from None
    except ValueError as exc:
        raise bad_request(f"{what}: {exc}") from None
    return doc


@dataclass
class TokenBucket:
    rate: float  # tokens added per second
    burst: float  # capacity
    tokens: float
    updated: float

    def take(self, now: float) -> float:
        """Take one token; 0 when granted, else the seconds until one is available."""
        self.tokens = min(self.burst, self.tokens + (now - self.updated) * self.rate)
        self.updated = now
        if self.tokens >= 1:
            self.tokens -= 1
            return 0.0
        return (1 - self.tokens) / self.rate


@dataclass
class LocalRateLimiter:
    """One token bucket per source, in this process. The set of sources is bounded by
    configuration, as buckets are only made after authentication."""

    rate: float
    burst: float
    clock: Callable[[], float] = time.monotonic
    _buckets: dict[str, TokenBucket] = field(default_factory=dict)

    def wait_s(self, source: str) -> float:
        """Take a token for `source`: 0 when granted, else the seconds until one is available."""
        now = self.clock()
        bucket = self._buckets.get(source)
        if bucket is None:
            bucket = self._buckets[source] = TokenBucket(self.rate, self.burst, self.burst, now)
        return bucket.take(now)

    def check(self, source: str) -> None:
        refuse_if_waiting(source, self.wait_s(source))


def refuse_if_waiting(source: str, wait: float) -> None:
    if wait:
        retry = max(1, math.ceil(wait))
        RATE_LIMITED.labels(source.split(":", 1)[0]).inc()
        raise ApiError(429, "rate_limited", f"too many requests for {source}; retry in {retry} s",
                       headers={"Retry-After": str(retry)}, retry_after=retry)


# The same token bucket, kept in Redis so every API process draws from one budget per source.
# Redis's clock (TIME) times the refill, so processes on hosts with skewed clocks agree. Numbers
# travel as strings: Redis would truncate a Lua number to an integer.
_TAKE_TOKEN = """
local rate, burst = tonumber(ARGV[1]), tonumber(ARGV[2])
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local state = redis.call('HMGET', KEYS[1], 'tokens', 'updated')
local tokens = tonumber(state[1]) or burst
local updated = tonumber(state[2]) or now
tokens = math.min(burst, tokens + math.max(0, now - updated) * rate)
local wait = 0
if tokens >= 1 then tokens = tokens - 1 else wait = (1 - tokens) / rate end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'updated', tostring(now))
redis.call('PEXPIRE', KEYS[1], math.ceil(burst / rate * 1000) + 1000)
return tostring(wait)
"""


class RateLimiter:
    """Requests per second with a burst, per source (an API key, a webhook source), shared by
    every API process through Redis: one atomic script call per request. While Redis is
    unreachable each process falls back to its own buckets (a per-process limit is still a
    limit) and tries Redis again REDIS_RETRY_S later."""

    REDIS_RETRY_S = 5.0

    def __init__(self, rate: float, burst: float, redis_client: aioredis.Redis | None = None,
                 namespace: str = "aforo", clock: Callable[[], float] = time.monotonic):
        self.local = LocalRateLimiter(rate, burst, clock)
        self._rate, self._burst = rate, burst
        self._redis = redis_client
        self._script = redis_client.register_script(_TAKE_TOKEN) if redis_client is not None else None
        self._namespace = namespace
        self._clock = clock
        self._redis_down_until = 0.0

    async def acquire(self, source: str) -> None:
        """Take a token for `source`, or raise 429 with Retry-After. (Named apart from the local
        limiter's synchronous `check`: a call left without `await` fails loudly.)"""
        refuse_if_waiting(source, await self._wait_s(source))

    async def _wait_s(self, source: str) -> float:
        if self._script is None or self._clock() < self._redis_down_until:
            return self.local.wait_s(source)
        try:
            return float(await self._script(keys=[f"{self._namespace}:ratelimit:{source}"],
                                            args=[repr(self._rate), repr(self._burst)]))
        except (aioredis.RedisError, OSError) as exc:
            log.warning("rate limits fall back to this process's own buckets for %ss: Redis: %s",
                        self.REDIS_RETRY_S, exc)
            self._redis_down_until = self._clock() + self.REDIS_RETRY_S
            return self.local.wait_s(source)

    async def aclose(self) -> None:
        if self._redis is not None:
            await self._redis.aclose()
