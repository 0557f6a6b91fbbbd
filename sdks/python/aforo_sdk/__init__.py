"""Aforo's Python SDK: meter usage as CloudEvents, batched, retried and (optionally) spooled.

    from aforo_sdk import Aforo
    aforo = Aforo("http://127.0.0.1:8080", api_key="afk_...")
    aforo.meter("api.call", "cust-1", {"route": "/v2/search"})
    aforo.close()
"""

from __future__ import annotations

from typing import Any

from aforo_sdk._client import Aforo
from aforo_sdk._context import context, set_agent, set_customer, set_route
from aforo_sdk._delivery import DeliveryError, SpoolLocked, Stats
from aforo_sdk._version import __version__
from aforo_sdk.ai import instrument_anthropic, instrument_openai
from aforo_sdk.aio import AsyncAforo
from aforo_sdk.asgi import AforoMiddleware
from aforo_sdk.wsgi import AforoWSGI

__all__ = [
    "Aforo",
    "AforoMiddleware",
    "AforoWSGI",
    "AsyncAforo",
    "DeliveryError",
    "SpoolLocked",
    "Stats",
    "__version__",
    "context",
    "default_client",
    "init",
    "instrument_anthropic",
    "instrument_openai",
    "set_agent",
    "set_customer",
    "set_route",
]

_default: Aforo | None = None


def init(endpoint: str | None = None, api_key: str | None = None, **options: Any) -> Aforo:
    """Create the process's default client (used where no client is passed)."""
    global _default
    if _default is not None:
        _default.close()
    _default = Aforo(endpoint, api_key, **options)
    return _default


def default_client() -> Aforo:
    if _default is None:
        raise RuntimeError("no Aforo client: call aforo_sdk.init(endpoint, api_key) or pass one")
    return _default
