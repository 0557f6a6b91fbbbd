"""A short-lived cache in front of Postgres for what every request looks up (keys, webhook sources)."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class TtlCache(Generic[T]):
    """Found values are kept `ttl_s` seconds, so a change (a revoked key, a removed source) takes
    effect within that time. Misses are not cached: guessing names cannot grow the cache."""

    def __init__(self, lookup: Callable[[str], Awaitable[T | None]], ttl_s: float = 5.0,
                 clock: Callable[[], float] = time.monotonic):
        self._lookup, self._ttl, self._clock = lookup, ttl_s, clock
        self._entries: dict[str, tuple[float, T]] = {}

    async def get(self, name: str) -> T | None:
        now = self._clock()
        hit = self._entries.get(name)
        if hit is not None and hit[0] > now:
            return hit[1]
        found = await self._lookup(name)
        if found is None:
            self._entries.pop(name, None)
        else:
            self._entries[name] = (now + self._ttl, found)
        return found
