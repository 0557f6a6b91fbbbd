"""POST /v1/webhooks/{provider}/{source}: provider-signed events (tier `webhook`)."""

from __future__ import annotations

import time
from typing import Literal

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse

from api.accept import Accepted, json_response, produce_events
from api.cloudevents import media_type, rfc3339_ms
from api.errors import ApiError, bad_request, documented
from api.limits import MIB, read_body
from api.producer import now_ms
from api.services import Svc
from api.webhooks.mapping import map_events, parse_payload
from api.webhooks.signatures import PROVIDERS, VERIFIERS, SignatureError, SignedRequest
from observe.metrics import WEBHOOK_VERIFICATION_FAILURES

router = APIRouter(tags=["webhooks"])

TENANT_HEADER = "x-aforo-tenant"
MAX_WEBHOOK_BYTES = 5 * MIB
Provider = Literal[PROVIDERS]
WEBHOOK_BODY = {"requestBody": {"required": True, "content": {
    "application/json": {"schema": {}},
    "application/x-www-form-urlencoded": {"schema": {"type": "object"}},
}}}


def tenant_of(configured: str | None, header: str | None) -> str:
    """The source's configured tenant; the X-Aforo-Tenant header only for a source without one."""
    if configured is None:
        if not header:
            raise bad_request("this webhook source has no tenant: send the X-Aforo-Tenant header")
        return header
    if header and header != configured:
        raise ApiError(403, "forbidden_tenant", f"this webhook source belongs to tenant {configured!r}")
    return configured


@router.post("/v1/webhooks/{provider}/{source}", status_code=202, response_model=Accepted,
             openapi_extra=WEBHOOK_BODY,
             responses={200: {"description": "Slack url_verification: the challenge echoed"},
                        **documented(400, 401, 403, 404, 413, 429, 503)},
             summary="Receive a provider's signed webhook (Stripe, Twilio, SendGrid, GitHub, Slack, generic)")
async def receive_webhook(provider: Provider, source: str, request: Request, svc: Svc) -> Response:
    """The signature is verified before anything else is read into an event; a bad or stale one is
    401 and nothing is produced. The CloudEvent id is the provider's event id, so a replay is a
    duplicate in the ledger, never billed twice.

    The signature is checked before the rate limit (an HMAC of at most 5 MiB costs little), and
    requests that fail it draw from a budget of their own: a flood of forged or stale requests is
    refused without spending the source's budget for genuine deliveries."""
    received = now_ms()
    configured = await svc.sources.get(source) if "\x00" not in source else None
    if configured is None or configured.provider != provider:
        raise ApiError(404, "not_found", f"no {provider} webhook source {source!r}")
    body = await read_body(request.stream(), MAX_WEBHOOK_BYTES)
    headers = {k.lower(): v for k, v in request.headers.items()}
    try:
        VERIFIERS[provider](configured.secret, SignedRequest(str(request.url), headers, body), time.time())
    except SignatureError as exc:
        WEBHOOK_VERIFICATION_FAILURES.labels(provider).inc()
        await svc.limiter.acquire(f"webhook_unverified:{source}")
        raise ApiError(401, "bad_signature", f"{provider} signature refused: {exc}") from None
    await svc.limiter.acquire(f"webhook:{source}")
    try:
        payload = parse_payload(body, media_type(headers.get("content-type")))
    except ValueError as exc:
        raise bad_request(str(exc)) from None
    if provider == "slack" and isinstance(payload, dict) and payload.get("type") == "url_verification":
        return JSONResponse({"challenge": payload.get("challenge")})  # Slack's endpoint check
    tenant = tenant_of(configured.tenant, headers.get(TENANT_HEADER))
    events = map_events(configured.mapping, payload, headers, source=f"{provider}/{source}",
                        tenant=tenant, received=rfc3339_ms(received))
    return json_response(await produce_events(svc, events, "webhook", received), 202)
