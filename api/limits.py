"""Limits every door applies before looking at content: body size, JSON depth, request rate."""

from __future__ import annotations

import math
import time
import zlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

import orjson

from api.errors import ApiError, bad_request, too_large

MIB = 1024 * 1024
MAX_DEPTH = 32  # CloudEvents are shallow; deeper nesting is hostile or a mistake


async def decoded(chunks: AsyncIterator[bytes], encoding: str | None) -> AsyncIterator[bytes]:
    """The body as sent, gunzipped on the fly when Content-Encoding says gzip (Firehose and the
    MuleSoft forwarder compress)."""
    encoding = (encoding or "identity").strip().lower()
    if encoding == "identity":
        async for chunk in chunks:
            yield chunk
        return
    if encoding not in ("gzip", "x-gzip"):
        raise ApiError(415, "unsupported_encoding", f"Content-Encoding {encoding!r} is not supported; "
                       "send identity or gzip")
    inflate = zlib.decompressobj(wbits=31)
    try:
        async for chunk in chunks:
            # bounded output per step, so a small zip bomb cannot allocate gigabytes at once
            data = inflate.decompress(chunk, MIB)
            while data:
                yield data
                data = inflate.decompress(inflate.unconsumed_tail, MIB) if inflate.unconsumed_tail else b""
        tail = inflate.flush()
    except zlib.error as exc:
        raise bad_request(f"body is not valid gzip: {exc}") from None
    if tail:
        yield tail


def gunzip(data: bytes, limit: int) -> bytes:
    """Gunzip a payload embedded in a body (a Firehose record); ValueError past `limit` bytes."""
    inflate = zlib.decompressobj(wbits=31)
    try:
        out = inflate.decompress(data, limit + 1)
    except zlib.error as exc:
        raise ValueError(f"not valid gzip: {exc}") from None
    if len(out) > limit:
        raise ValueError(f"decompresses to more than {limit} bytes")
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
class RateLimiter:
    """One token bucket per source (an API key, a webhook source): requests per second with a burst.
    The set of sources is bounded by configuration, as buckets are only made after authentication."""

    rate: float
    burst: float
    clock: Callable[[], float] = time.monotonic
    _buckets: dict[str, TokenBucket] = field(default_factory=dict)

    def check(self, source: str) -> None:
        now = self.clock()
        bucket = self._buckets.get(source)
        if bucket is None:
            bucket = self._buckets[source] = TokenBucket(self.rate, self.burst, self.burst, now)
        wait = bucket.take(now)
        if wait:
            retry = max(1, math.ceil(wait))
            raise ApiError(429, "rate_limited", f"too many requests for {source}; retry in {retry} s",
                           headers={"Retry-After": str(retry)}, retry_after=retry)
