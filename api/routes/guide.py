"""GET /v1/guide (integration snippets) and POST /v1/guide/test-event (a real event through the
real pipeline, to watch it land)."""

from __future__ import annotations

import uuid

from fastapi import APIRouter, Request
from pydantic import BaseModel

from api.accept import produce_events
from api.cloudevents import rfc3339_ms
from api.errors import ApiError, documented
from api.guide import snippets
from api.services import Svc
from api.viewer import TenantViewer
from config.clock import now_ms
from sinks.console import first_customer

router = APIRouter(tags=["console"])
TEST_TYPE = "aforo.test"  # a type no metric uses: the test event passes every gate and bills nothing
TEST_SOURCE = "aforo-console/test"


class Snippet(BaseModel):
    label: str
    language: str
    code: str


class TierGuide(BaseModel):
    tier: str  # gateway, middleware, sdk, rest, upload, webhook, mcp
    ledger_tier: str  # what the ledger records as the event's tier (middleware sends through rest)
    title: str
    snippets: list[Snippet]


class Guide(BaseModel):
    tenant: str
    endpoint: str
    customer: str | None  # the customer the snippets and the test event use
    tiers: list[TierGuide]


@router.get("/v1/guide", response_model=Guide, responses=documented(400, 401, 403, 429),
            summary="Ready-to-paste snippets per ingestion tier, filled in for the tenant")
async def guide(request: Request, viewer: TenantViewer, svc: Svc, tenant: str | None = None) -> Guide:
    scope = viewer.one_tenant(tenant)
    customer = await svc.db(first_customer, scope)
    endpoint = str(request.base_url).rstrip("/")
    return Guide(tenant=scope, endpoint=endpoint, customer=customer,
                 tiers=snippets(endpoint, scope, customer or "<customer id>"))


class TestEvent(BaseModel):
    tenantid: str
    source: str
    id: str
    subject: str
    type: str
    received_at: str
    partition: int
    offset: int
    status_url: str  # GET it until 200: the event's terminal status in the ledger


@router.post("/v1/guide/test-event", status_code=202, response_model=TestEvent,
             responses=documented(400, 401, 403, 404, 429, 503),
             summary="Send a real test event of the caller's tenant through the REST door")
async def test_event(viewer: TenantViewer, svc: Svc) -> TestEvent:
    """A CloudEvent of type `aforo.test` for the tenant's first customer, produced exactly as
    `POST /v1/events` produces (tier `rest`): it passes every gate and ends `accepted/unmetered`
    (enriched with the customer and subscription, billed nothing) unless the tenant meters that
    type. Tenant keys only: operator and customer keys read."""
    if viewer.scope != "tenant" or viewer.tenant is None:
        raise ApiError(403, "forbidden", "only a tenant key sends events; sign in with one to send one")
    customer = await svc.db(first_customer, viewer.tenant)
    if customer is None:
        raise ApiError(404, "not_found", f"tenant {viewer.tenant!r} has no customer to send a test event for")
    received = now_ms()
    event = {"specversion": "1.0", "id": f"test-{uuid.uuid4()}", "source": TEST_SOURCE, "type": TEST_TYPE,
             "subject": customer, "time": rfc3339_ms(received), "tenantid": viewer.tenant,
             "data": {"note": "a test event sent from the console's integration guide"}}
    receipt = (await produce_events(svc, [event], "rest", received))["events"][0]
    return TestEvent(tenantid=viewer.tenant, source=TEST_SOURCE, id=event["id"], subject=customer,
                     type=TEST_TYPE, received_at=event["time"], partition=receipt["partition"],
                     offset=receipt["offset"], status_url=f"/v1/events/{TEST_SOURCE}/{event['id']}")
