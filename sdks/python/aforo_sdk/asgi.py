"""ASGI middleware: `app.add_middleware(AforoMiddleware, client=aforo)` meters every request
(Starlette, FastAPI, or any ASGI app that records its route in `scope["route"]`)."""

from __future__ import annotations

import time
from typing import Any

from aforo_sdk import _context
from aforo_sdk._requests import RequestMeter


class AforoMiddleware:
    """Options as RequestMeter: event_type, customer_header ("X-Customer-Id"), customer
    (a function of the ASGI scope), skip_paths, skip (a function of the scope), meter_unmatched.
    The customer header is read when the request starts; handlers may name the customer later
    with aforo_sdk.set_customer(), and everything metered inside the request (decorators, AI
    calls) is attributed to it."""

    def __init__(self, app: Any, client: Any, **options: Any):
        self.app = app
        self.meter = RequestMeter(client, **options)
        self._header = self.meter.header.lower().encode("latin-1")

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or self.meter.skipped(scope["path"], scope):
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        root = scope.get("root_path", "")
        header = next((v.decode("latin-1") for k, v in scope.get("headers", ()) if k == self._header), None)
        outer = _context.current()
        request = _context.Scope(customer=header or outer.customer, agent=outer.agent)
        status = 500  # if the app raises before answering, the server answers 500

        async def observe(message: dict) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            with _context.request_scope(request):
                await self.app(scope, receive, observe)
        finally:
            if request.route is None:
                request.route = _template(scope, root)
            self.meter.finish(request, scope, scope["method"], status, started)


def _template(scope: dict, root_path: str) -> str | None:
    """The matched route's path template, with the prefix of any Mount it sits under."""
    route = scope.get("route")
    path = getattr(route, "path", None)
    if path is None:
        return None
    prefix = scope.get("root_path", "")[len(root_path):]
    return prefix + path
