"""What the ASGI and WSGI middleware share: which requests are metered and the event each makes
(`api.call` by default, data: route template, method, status, latency_ms)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import Any

from aforo_sdk._context import Scope

# Probes and scrapes are not usage.
DEFAULT_SKIP_PATHS = frozenset({"/health", "/healthz", "/livez", "/readyz", "/ready", "/ping", "/metrics",
                                "/favicon.ico"})


class RequestMeter:
    def __init__(self, client: Any, *, event_type: str = "api.call", customer_header: str = "X-Customer-Id",
                 customer: Callable[[Any], str | None] | None = None,
                 skip_paths: Iterable[str] = DEFAULT_SKIP_PATHS, skip: Callable[[Any], bool] | None = None,
                 meter_unmatched: bool = False):
        self.client = client
        self.event_type = event_type
        self.header = customer_header
        self.customer = customer
        self.skip_paths = frozenset(skip_paths)
        self.skip = skip
        self.meter_unmatched = meter_unmatched

    def skipped(self, path: str, request: Any) -> bool:
        return path in self.skip_paths or (self.skip is not None and bool(self.skip(request)))

    def finish(self, scope: Scope, request: Any, method: str, status: int, started: float) -> None:
        """Customer: the callback's answer, else what the request set (set_customer), else the header."""
        if scope.route is None and not self.meter_unmatched:
            return  # no route matched (a 404 by routing): nobody's usage
        customer = (self.customer(request) if self.customer is not None else None) or scope.customer
        what = f"{method} {scope.route}"
        if not customer:
            self.client._unattributed(what)
            return
        data = {"route": scope.route, "method": method, "status": status,
                "latency_ms": round((time.perf_counter() - started) * 1000, 3)}
        try:
            self.client.meter(self.event_type, customer, data)
        except (ValueError, RuntimeError) as exc:
            self.client._unattributed(f"{what}: {exc}")
