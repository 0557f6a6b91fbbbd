"""POST /v1/backfills, GET /v1/backfills/{id}: historical events admitted by an operator key
(tier `backfill`, api/backfill.py)."""

from __future__ import annotations

import io
from typing import Annotated, Literal

import anyio.to_thread
import orjson
from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse

from api.auth import RestCaller
from api.backfill import BackfillRecord, BackfillReport, check, require_reason, run_backfill
from api.errors import ErrorBody, bad_request, documented
from api.limits import decoded
from api.routes.uploads import UPLOAD_BODY, BodyReader
from api.services import Svc
from api.uploads import CHUNK, UploadError, format_of, parse_csv_mapping, rows_of
from config import clock
from schemas.errors import Forbidden, NotFound
from sinks.backfills import find_backfill

router = APIRouter(tags=["backfills"])


def _operator(caller) -> None:
    if not caller.operator:
        raise Forbidden("backfilling needs an operator key (`aforo keys create --tenant T --operator`)")


_NOT_OPERATOR = {403: {"model": ErrorBody, "description": "The key is not an operator key"}}


@router.post("/v1/backfills", response_model=BackfillReport, status_code=202, openapi_extra=UPLOAD_BODY,
             responses={**documented(400, 401, 415, 429, 503), **_NOT_OPERATOR,
                        409: {"model": ErrorBody,
                              "description": "A period of the backfill is closed; nothing was produced"}},
             summary="Backfill historical events of open periods (operator key), in event-time order")
async def backfill(request: Request, caller: RestCaller, svc: Svc,
                   reason: Annotated[str, Query(description="Why this history is admitted late: "
                                                "kept with the backfill's record")],
                   format: Annotated[Literal["csv", "json", "ndjson"] | None, Query(
                       description="csv, json (an array) or ndjson; default: from Content-Type")] = None,
                   mapping: Annotated[str | None, Query(
                       description="CSV column mapping, JSON (see README)")] = None) -> BackfillReport:
    """The whole batch is checked first: one bad row, or a closed period, refuses it and nothing
    is produced. Then it is recorded (who: the key, why: `reason`) and produced in event-time
    order per customer; the answer comes once the broker has acknowledged every event."""
    _operator(caller)
    why = require_reason(reason)
    try:
        fmt = format_of(format, request.headers.get("content-type"))
        csv_mapping = parse_csv_mapping(orjson.loads(mapping)) if mapping is not None else None
    except orjson.JSONDecodeError as exc:
        raise bad_request(f"mapping is not valid JSON: {exc}") from None
    except UploadError as exc:
        raise bad_request(str(exc)) from None
    reader = io.BufferedReader(BodyReader(decoded(request.stream(), request.headers.get("content-encoding"))),
                               CHUNK)

    def work() -> BackfillReport:
        now = clock.now()
        batch = check(rows_of(reader, fmt, csv_mapping), caller.tenant, now)
        return run_backfill(batch, f"key:{caller.key_id}", why, now, lambda: svc.pool.connection(timeout=10),
                            svc.producer)

    try:
        report = await anyio.to_thread.run_sync(work)
    except UploadError as exc:
        raise bad_request(str(exc)) from None
    if report.not_acknowledged:
        return JSONResponse(report.model_dump(mode="json"), status_code=503)
    return report


@router.get("/v1/backfills/{backfill_id}", response_model=BackfillRecord,
            responses={**documented(401, 404, 429, 503), **_NOT_OPERATOR},
            summary="A backfill's record: who, why, when, its events, customers and periods")
async def get_backfill(backfill_id: str, caller: RestCaller, svc: Svc) -> BackfillRecord:
    _operator(caller)
    found = await svc.db(find_backfill, backfill_id)
    if found is None or found.tenant != caller.tenant:
        raise NotFound(f"no backfill {backfill_id!r} of tenant {caller.tenant!r}")
    return BackfillRecord(**found.__dict__)
