"""POST /v1/uploads: CSV, a JSON array or NDJSON, streamed (tier `upload`)."""

from __future__ import annotations

import io
from collections.abc import AsyncIterator, Iterator
from typing import Annotated, Literal

import anyio.from_thread
import anyio.to_thread
import orjson
from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse
from starlette.requests import ClientDisconnect

from api.auth import RestCaller
from api.errors import ApiError, bad_request, documented
from api.limits import decoded
from api.services import Svc
from api.uploads import (
    CHUNK,
    BodyError,
    Row,
    UploadError,
    UploadReport,
    format_of,
    parse_csv_mapping,
    rows_of,
    run_upload,
)

router = APIRouter(tags=["uploads"])

UPLOAD_BODY = {"requestBody": {"required": True, "content": {
    "text/csv": {"schema": {"type": "string"}},
    "application/x-ndjson": {"schema": {"type": "string"}},
    "application/json": {"schema": {"type": "array", "items": {"type": "object"}}},
}}}


class BodyReader(io.RawIOBase):
    """A blocking file over the request's async body, for the parsers running in a worker thread:
    each read waits on the event loop for the next chunk, so the body is never held whole."""

    def __init__(self, chunks: AsyncIterator[bytes]):
        self._chunks = chunks
        self._pending = memoryview(b"")

    def readable(self) -> bool:
        return True

    async def _next(self) -> bytes | None:
        try:
            return await anext(self._chunks)
        except StopAsyncIteration:
            return None

    def readinto(self, buffer) -> int:
        while not self._pending:
            try:
                chunk = anyio.from_thread.run(self._next)
            except ApiError as exc:  # gzip that breaks off midway
                raise BodyError(exc.message) from None
            except ClientDisconnect:
                raise BodyError("the client closed the connection before the body was read") from None
            if chunk is None:
                return 0
            self._pending = memoryview(chunk)
        n = min(len(buffer), len(self._pending))
        buffer[:n] = self._pending[:n]
        self._pending = self._pending[n:]
        return n


def streamed_rows(request: Request, format: str | None, mapping: str | None) -> tuple[str, Iterator[Row]]:
    """The format and the rows of an upload-shaped body (uploads, backfills), read lazily from the
    request's stream in whatever thread iterates them; 400 for a bad format or mapping."""
    try:
        fmt = format_of(format, request.headers.get("content-type"))
        csv_mapping = parse_csv_mapping(orjson.loads(mapping)) if mapping is not None else None
    except orjson.JSONDecodeError as exc:
        raise bad_request(f"mapping is not valid JSON: {exc}") from None
    except UploadError as exc:
        raise bad_request(str(exc)) from None
    reader = io.BufferedReader(BodyReader(decoded(request.stream(), request.headers.get("content-encoding"))),
                               CHUNK)
    return fmt, rows_of(reader, fmt, csv_mapping)


@router.post("/v1/uploads", response_model=UploadReport, status_code=202, openapi_extra=UPLOAD_BODY,
             responses={**documented(400, 401, 415, 429),
                        503: {"model": UploadReport, "description": "Some rows were not acknowledged "
                              "by the broker (listed); they may be uploaded again"}},
             summary="Upload a CSV, JSON-array or NDJSON file of events, streamed")
async def upload(request: Request, caller: RestCaller, svc: Svc,
                 format: Annotated[Literal["csv", "json", "ndjson"] | None, Query(
                     description="csv, json (an array) or ndjson; default: from Content-Type")] = None,
                 mapping: Annotated[str | None, Query(
                     description="CSV column mapping, JSON (see README)")] = None):
    """Each row keeps its own `time`; the answer counts rows produced and lists bad rows by line. An
    upload that stops midway (a broken JSON array, unreadable gzip) is a 400 carrying that report:
    the rows before the line it names were produced."""
    fmt, rows = streamed_rows(request, format, mapping)

    def work() -> UploadReport:
        return run_upload(rows, fmt, caller.tenant, svc.producer)

    try:
        report = await anyio.to_thread.run_sync(work)
    except UploadError as exc:
        raise bad_request(str(exc)) from None
    if report.not_acknowledged:
        return JSONResponse(report.model_dump(), status_code=503)
    if report.stopped is not None:  # never a 202 for a file the rest of which was not read
        stop = report.stopped
        raise ApiError(400, "upload_stopped", f"the upload stopped at line {stop.line}: {stop.error}; the "
                       f"{report.produced} rows produced before it are in (the report lists the rows "
                       "refused): upload the rest from that line, or the whole file again (what was "
                       "produced ends as duplicates)", **report.model_dump())
    return report
