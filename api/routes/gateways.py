"""POST /v1/gateways/{gateway}: API-gateway request-log exports -> `api.call` events (tier `gateway`)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Literal

from fastapi import APIRouter, Path, Query, Request, Response

from api.accept import Accepted, json_response, produce_events
from api.auth import Caller, GatewayCaller, authenticate
from api.cloudevents import parse_exact, rfc3339_ms
from api.errors import bad_request, documented
from api.gateways import FORMATS, GATEWAYS, MAX_EXPORT_BYTES, ExportError, export_events
from api.limits import decoded, read_body
from api.services import Services, Svc
from config.clock import now_ms

router = APIRouter(tags=["gateways"])

Gateway = Literal[GATEWAYS]
EXPORT_BODY = {"requestBody": {"required": True, "content": {"application/json": {"schema": {
    "oneOf": [{"type": "object"}, {"type": "array", "items": {"type": "object"}}]}}}}}
_RESPONSES = documented(400, 401, 413, 415, 429, 503)


FIREHOSE_REQUEST_ID = "x-amz-firehose-request-id"


class GatewayAccepted(Accepted):
    # Kinesis Data Firehose requires its request id and a timestamp in every answer (and an
    # errorMessage in a failure): it treats one without them as a 500 with no body.
    requestId: str | None = None  # Firehose's field names
    timestamp: int | None = None


def firehose_reply(headers: Mapping[str, str], error: str | None = None) -> dict[str, object]:
    """What a Kinesis Data Firehose delivery's answer must carry (nothing for other callers)."""
    request_id = headers.get(FIREHOSE_REQUEST_ID)
    if request_id is None:
        return {}
    reply: dict[str, object] = {"requestId": request_id, "timestamp": now_ms()}
    if error is not None:
        reply["errorMessage"] = error
    return reply


async def _ingest(gateway: str, request: Request, caller: Caller, svc: Services,
                  source: str | None) -> Response:
    received = now_ms()
    body = await read_body(decoded(request.stream(), request.headers.get("content-encoding")),
                           MAX_EXPORT_BYTES)
    fmt = FORMATS[gateway]
    try:
        events = export_events(fmt, parse_exact(body), tenant=caller.tenant,
                               source=source or f"gateway/{gateway}", received=rfc3339_ms(received))
    except ExportError as exc:
        raise bad_request(f"{fmt.title} export refused: {exc}") from None
    accepted = await produce_events(svc, events, "gateway", received)
    return json_response({**accepted, **firehose_reply(request.headers)}, 200)


@router.post("/v1/gateways/{gateway}", response_model=GatewayAccepted,
             openapi_extra=EXPORT_BODY, responses=_RESPONSES,
             summary="Ingest a gateway's native request-log export: one api.call event per request")
async def gateway_export(gateway: Gateway, request: Request, caller: GatewayCaller, svc: Svc,
                         source: Annotated[str | None, Query(description="event source; default "
                                                              "gateway/<name>")] = None) -> Response:
    """200 (not 202: Firehose and Kong treat only 200 as delivered) once every event is acknowledged."""
    return await _ingest(gateway, request, caller, svc, source)


@router.post("/v1/gateways/mulesoft/{api_key}/v2/analytics/events", response_model=GatewayAccepted,
             openapi_extra=EXPORT_BODY, responses=_RESPONSES,
             summary="MuleSoft analytics event forwarding (base URI .../v1/gateways/mulesoft/<api key>)")
async def mulesoft_forward(request: Request, api_key: Annotated[str, Path(description="a tenant API key")],
                           svc: Svc) -> Response:
    """The gateway posts to `<analytics base URI>/v2/analytics/events` and cannot add headers, so
    the key is part of the configured base URI (keep that URI as secret as the key)."""
    return await _ingest("mulesoft", request, await authenticate(svc, api_key), svc, None)
