"""The API's own observability: request metrics and access lines (one ASGI middleware), and the
operational routes `/metrics`, `/healthz` and `/readyz`, which are left out of the OpenAPI
document (they are for the platform, not for API clients)."""

from __future__ import annotations

import logging
import time

import anyio.to_thread
from fastapi import APIRouter, FastAPI, Response
from fastapi.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.services import Svc
from observe.metrics import HTTP_REQUESTS, HTTP_SECONDS, exposition

access_log = logging.getLogger("aforo.api.access")
router = APIRouter(include_in_schema=False)
UNMATCHED = "unmatched"  # a 404's path is client input: never a label


class RequestMetrics:
    """Counts every response by route template, method and status; times each request until its
    response starts (a live tail's stream would otherwise count as one very slow request); writes
    one access line per request when `log_access`."""

    def __init__(self, app: ASGIApp, log_access: bool = True):
        self.app = app
        self.log_access = log_access

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500  # what the client gets if the app fails before answering

        async def send_timed(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                route = _route(scope)
                HTTP_SECONDS.labels(route, scope["method"]).observe(time.perf_counter() - started)
            await send(message)

        try:
            await self.app(scope, receive, send_timed)
        finally:
            route = _route(scope)
            HTTP_REQUESTS.labels(route, scope["method"], str(status)).inc()
            if self.log_access and route not in ("/metrics", "/healthz", "/readyz"):
                access_log.info("%s %s %d", scope["method"], scope["path"], status, extra={
                    "method": scope["method"], "route": route, "path": scope["path"], "status": status,
                    "duration_ms": round((time.perf_counter() - started) * 1000, 2),
                    "client": scope["client"][0] if scope.get("client") else None})


def _route(scope: Scope) -> str:
    route = scope.get("route")  # set by the router on the shared scope when a route matched
    return getattr(route, "path", None) or UNMATCHED


@router.get("/metrics")
async def metrics() -> Response:
    body, content_type = exposition()
    return Response(body, media_type=content_type)


@router.get("/healthz")
async def healthz() -> JSONResponse:
    """The process is alive and its event loop answers."""
    return JSONResponse({"status": "alive"})


@router.get("/readyz")
async def readyz(svc: Svc) -> JSONResponse:
    """Broker, Postgres (with every migration applied) and Redis answer; 503 naming what does not."""
    ready, body = await anyio.to_thread.run_sync(svc.readiness.report)
    return JSONResponse(body, status_code=200 if ready else 503)


def add_to(app: FastAPI, log_access: bool) -> None:
    app.include_router(router)
    app.add_middleware(RequestMetrics, log_access=log_access)
