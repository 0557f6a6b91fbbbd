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
from api.services import Services, Svc
from api.webhooks.mapping import FORM, JSON, map_events, parse_payload
from api.webhooks.receipts import first_receipts
from api.webhooks.secrets import SecretKeyError
from api.webhooks.signatures import PROVIDERS, VERIFIERS, SignatureError, SignedRequest
from api.webhooks.store import WebhookSource
from config.clock import now_ms
from observe.metrics import WEBHOOK_VERIFICATION_FAILURES

router = APIRouter(tags=["webhooks"])

TENANT_HEADER = "x-aforo-tenant"
MAX_WEBHOOK_BYTES = 5 * MIB
Provider = Literal[PROVIDERS]
# What each provider posts; any other body is refused (415) before it is acknowledged, not
# produced to end as rejected/schema. GitHub's default is a form whose `payload` is the JSON.
MEDIA_TYPES = {"stripe": (JSON,), "twilio": (FORM,), "sendgrid": (JSON,), "github": (JSON, FORM),
               "slack": (JSON, FORM), "generic": (JSON,)}
WEBHOOK_BODY = {"requestBody": {"required": True, "content": {
    JSON: {"schema": {}},
    FORM: {"schema": {"type": "object"}},
}}}


def tenant_of(source: WebhookSource, header: str | None) -> str:
    """The source's tenant. X-Aforo-Tenant, signed by no provider, may only repeat it."""
    if source.tenant is None:
        raise ApiError(403, "forbidden_tenant", f"webhook source {source.name!r} is shared by tenants, which "
                       "cannot be trusted (no provider signs X-Aforo-Tenant): remove it and add it again "
                       "with --tenant")
    if header and header != source.tenant:
        raise ApiError(403, "forbidden_tenant", f"this webhook source belongs to tenant {source.tenant!r}")
    return source.tenant


def _media_type(provider: str, content_type: str | None) -> str:
    media = media_type(content_type)
    kind = JSON if media == JSON or media.endswith("+json") else media
    if kind not in MEDIA_TYPES[provider]:
        raise ApiError(415, "unsupported_media_type", f"{provider} webhooks are "
                       f"{' or '.join(MEDIA_TYPES[provider])}, got Content-Type {media or 'none'!r}")
    return kind


@router.post("/v1/webhooks/{provider}/{source}", status_code=202, response_model=Accepted,
             openapi_extra=WEBHOOK_BODY,
             responses={200: {"description": "Slack url_verification: the challenge echoed"},
                        **documented(400, 401, 403, 404, 413, 415, 429, 503)},
             summary="Receive a provider's signed webhook (Stripe, Twilio, SendGrid, GitHub, Slack, generic)")
async def receive_webhook(provider: Provider, source: str, request: Request, svc: Svc) -> Response:
    """The signature is verified before anything else is read into an event; a bad or stale one is
    401 and nothing is produced. The CloudEvent id comes from the signed payload, so a replay or a
    redelivery is a duplicate in the ledger, never billed twice.

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
        secret = svc.secrets.open(configured.secret)
    except SecretKeyError as exc:
        raise ApiError(503, "unavailable", f"cannot read webhook source {source!r}'s secret: {exc}") from None
    try:
        VERIFIERS[provider](secret, SignedRequest(str(request.url), headers, body), time.time())
    except SignatureError as exc:
        WEBHOOK_VERIFICATION_FAILURES.labels(provider).inc()
        await svc.limiter.acquire(f"webhook_unverified:{source}")
        raise ApiError(401, "bad_signature", f"{provider} signature refused: {exc}") from None
    await svc.limiter.acquire(f"webhook:{source}")
    kind = _media_type(provider, headers.get("content-type"))
    try:
        payload = parse_payload(body, kind, payload_field=provider == "github")
    except ValueError as exc:
        raise bad_request(str(exc)) from None
    if provider == "slack" and isinstance(payload, dict) and payload.get("type") == "url_verification":
        return JSONResponse({"challenge": payload.get("challenge")})  # Slack's endpoint check
    tenant = tenant_of(configured, headers.get(TENANT_HEADER))
    events = map_events(configured.mapping, payload, headers, source=f"{provider}/{source}",
                        tenant=tenant, received=None)
    await _stamp_untimed(svc, f"{provider}/{source}", events, received)
    return json_response(await produce_events(svc, events, "webhook", received), 202)


async def _stamp_untimed(svc: Services, source: str, events: list[dict], received_ms: int) -> None:
    """Events whose payload gives no time get the time their id was first received."""
    untimed = [e for e in events if "time" not in e]
    ids = [e["id"] for e in untimed if isinstance(e.get("id"), str)]
    first = await svc.db(first_receipts, source, ids, received_ms) if ids else {}
    for event in untimed:
        event["time"] = rfc3339_ms(first.get(event.get("id"), received_ms))
