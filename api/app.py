"""The FastAPI application: routes, the JSON error shape, and the shared services' lifetime."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import psycopg
from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse
from fastapi.staticfiles import StaticFiles
from psycopg_pool import PoolTimeout
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect

from api import observe
from api.console import pages
from api.errors import bad_request
from api.routes import backfills, events, gateways, guide, invoices, portal, revenue, uploads, usage, webhooks
from api.routes.gateways import firehose_reply
from api.services import ApiOptions, Services
from config import Settings
from schemas.errors import AforoError

DESCRIPTION = """Aforo's front doors. Every door produces CloudEvents to the raw topic, stamped with
the time of receipt, for the metering pipeline; semantic validation happens there, and every event
that reached the raw topic ends in the ledger with a status and a reason.

The read side (tags console and portal) is the web console's data: revenue, margins, events and
their provenance, unit health, alerts, quotas, the integration guide and the customer portal,
each narrowed to the key's tenant (an operator key may read every tenant; a customer key only its
own customer)."""


def _answer(request: Request, body: dict[str, object], status: int,
            headers: dict[str, str] | None) -> JSONResponse:
    """Every error answer; a Firehose delivery's also carries what Firehose requires of it."""
    return JSONResponse({**body, **firehose_reply(request.headers, str(body["message"]))},
                        status_code=status, headers=headers)


def _error(request: Request, status: int, code: str, message: str, headers: dict[str, str] | None = None,
           **extra: object) -> JSONResponse:
    return _answer(request, {"error": code, "message": message, **extra}, status, headers)


async def _aforo_error(request: Request, exc: AforoError) -> JSONResponse:
    """Every AforoError (ApiError included): its status, code and message (schemas/errors.py)."""
    return _answer(request, exc.body(), exc.http_status, exc.headers)


async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
    problems = [f"{'.'.join(str(p) for p in e.get('loc', ()))}: {e.get('msg', '')}" for e in exc.errors()]
    return _error(request, 400, "bad_request", "; ".join(problems) or "invalid request")


async def _http(request: Request, exc: HTTPException) -> JSONResponse:
    code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
    return _error(request, exc.status_code, code, str(exc.detail), headers=getattr(exc, "headers", None))


async def _unavailable(request: Request, exc: Exception) -> JSONResponse:
    return _error(request, 503, "unavailable", f"the database is unavailable: {type(exc).__name__}",
                  headers={"Retry-After": "5"})


async def _disconnected(request: Request, _exc: ClientDisconnect) -> JSONResponse:
    return _error(request, 400, "client_disconnected",
                  "the client closed the connection before the body was read")


async def _no_nul(request: Request) -> None:
    """Postgres text cannot hold a NUL: a parameter with one is refused here, not by the query
    (a 500)."""
    for name, value in [*request.path_params.items(), *request.query_params.multi_items()]:
        if "\x00" in str(value):
            raise bad_request(f"{name} contains a NUL character")


def create_app(settings: Settings, options: ApiOptions | None = None) -> FastAPI:
    options = options or ApiOptions()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.services = Services(settings, options)
        try:
            yield
        finally:
            await app.state.services.aclose()

    # /docs is the console's own page on the vendored Swagger UI (works offline); no ReDoc.
    app = FastAPI(title="Aforo", version="1", description=DESCRIPTION, lifespan=lifespan,
                  docs_url=None, redoc_url=None)
    app.add_exception_handler(AforoError, _aforo_error)
    app.add_exception_handler(RequestValidationError, _invalid)
    app.add_exception_handler(HTTPException, _http)
    app.add_exception_handler(psycopg.OperationalError, _unavailable)
    app.add_exception_handler(PoolTimeout, _unavailable)
    app.add_exception_handler(ClientDisconnect, _disconnected)
    for module in (uploads, webhooks, gateways, backfills):
        app.include_router(module.router)
    for module in (events, revenue, usage, guide, portal, invoices):  # the reads (and POST /v1/events)
        app.include_router(module.router, dependencies=[Depends(_no_nul)])
    app.include_router(pages.router, dependencies=[Depends(_no_nul)])  # the web console and the portal, at /
    app.mount("/static", StaticFiles(directory=pages.STATIC), name="static")
    observe.add_to(app, log_access=options.access_log)
    app.openapi = lambda: _without_422(app)
    return app


def _without_422(app: FastAPI) -> dict:
    """FastAPI documents 422 for every route with parameters; this API answers 400 instead."""
    if app.openapi_schema is None:
        schema = get_openapi(title=app.title, version=app.version, description=app.description,
                             routes=app.routes)
        for operations in schema["paths"].values():
            for operation in operations.values():
                operation["responses"].pop("422", None)
        app.openapi_schema = schema
    return app.openapi_schema
