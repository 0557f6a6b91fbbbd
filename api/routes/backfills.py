"""POST /v1/backfills, GET /v1/backfills/{id}: historical events admitted by an operator key
(tier `backfill`, api/backfill.py)."""

from __future__ import annotations

from typing import Annotated, Literal

import anyio.to_thread
from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse

from api.backfill import BackfillRecord, BackfillReport, check, require_reason, run_backfill
from api.errors import ErrorBody, bad_request, documented
from api.routes.uploads import UPLOAD_BODY, streamed_rows
from api.services import Svc
from api.uploads import BodyError, UploadError
from api.viewer import AnyViewer, Viewer
from config import clock
from schemas.errors import Forbidden, NotFound
from sinks.backfills import find_backfill

router = APIRouter(tags=["backfills"])


def _operator(who: Viewer, tenant: str | None) -> str:
    """The tenant an operator key backfills (it must name it); nobody else backfills."""
    if not who.operator:
        raise Forbidden("backfilling needs an operator key (`aforo keys create --operator`)")
    return who.one_tenant(tenant)


_NOT_OPERATOR = {403: {"model": ErrorBody, "description": "The key is not an operator key"}}


@router.post("/v1/backfills", response_model=BackfillReport, status_code=202, openapi_extra=UPLOAD_BODY,
             responses={**documented(400, 401, 415, 429, 503), **_NOT_OPERATOR,
                        409: {"model": ErrorBody,
                              "description": "A period of the backfill is closed; nothing was produced"}},
             summary="Backfill historical events of open periods (operator key), in event-time order")
async def backfill(request: Request, who: AnyViewer, svc: Svc,
                   tenant: Annotated[str, Query(description="The tenant whose history this is")],
                   reason: Annotated[str, Query(description="Why this history is admitted late: "
                                                "kept with the backfill's record")],
                   format: Annotated[Literal["csv", "json", "ndjson"] | None, Query(
                       description="csv, json (an array) or ndjson; default: from Content-Type")] = None,
                   mapping: Annotated[str | None, Query(
                       description="CSV column mapping, JSON (see README)")] = None) -> BackfillReport:
    """The whole batch is checked first: one bad row, or a closed period, refuses it and nothing
    is produced. Then it is recorded (who: the key, why: `reason`) and produced in event-time
    order per customer; the answer comes once the broker has acknowledged every event."""
    tenant = _operator(who, tenant)
    why = require_reason(reason)
    _, rows = streamed_rows(request, format, mapping)

    def work() -> BackfillReport:
        now = clock.now()
        batch = check(rows, tenant, now)
        return run_backfill(batch, f"key:{who.key_id}", why, now, lambda: svc.pool.connection(timeout=10),
                            svc.producer)

    try:
        report = await anyio.to_thread.run_sync(work)
    except (UploadError, BodyError) as exc:  # all or nothing: checked before anything is produced
        raise bad_request(str(exc)) from None
    if report.not_acknowledged:
        return JSONResponse(report.model_dump(mode="json"), status_code=503)
    return report


@router.get("/v1/backfills/{backfill_id}", response_model=BackfillRecord,
            responses={**documented(401, 404, 429, 503), **_NOT_OPERATOR},
            summary="A backfill's record: who, why, when, its events, customers and periods")
async def get_backfill(backfill_id: str, who: AnyViewer, svc: Svc,
                       tenant: Annotated[str | None, Query(description="The backfill's tenant")] = None,
                       ) -> BackfillRecord:
    tenant = _operator(who, tenant)
    found = await svc.db(find_backfill, backfill_id)
    if found is None or found.tenant != tenant:
        raise NotFound(f"no backfill {backfill_id!r} of tenant {tenant!r}")
    return BackfillRecord(**found.__dict__)
