"""The API in production: /metrics, /healthz and /readyz, rate limits shared by every API process
through Redis, and a webhook budget that forged requests cannot spend (issue 16 item 8)."""

from __future__ import annotations

import dataclasses
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import orjson
import psycopg
import pytest
from prometheus_client.parser import text_string_to_metric_families
from starlette.testclient import TestClient
from test_api_helpers import Api, fixture_bytes, new_key, open_api, stripe_headers

from api.app import create_app
from api.services import ApiOptions
from api.webhooks.secrets import SecretBox
from api.webhooks.store import add_source
from observe.metrics import REGISTRY
from sinks.kafka import ensure_topics
from sinks.postgres import connect

pytestmark = pytest.mark.integration


@contextmanager
def serving(settings, options: ApiOptions | None = None) -> Iterator[Api]:
    apis = open_api(settings, options)
    try:
        yield next(apis)
    finally:
        apis.close()


def _sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def _stripe(event_id: str) -> bytes:
    event = orjson.loads(fixture_bytes("stripe_invoice_paid.json"))
    return orjson.dumps({**event, "id": event_id, "created": int(time.time())})


def test_forged_webhooks_do_not_spend_the_sources_budget(settings):
    # almost no refill during the test: the burst is the whole budget
    with serving(settings, ApiOptions(rate=0.001, burst=3)) as api:
        _forged_then_genuine(api)


def _forged_then_genuine(api: Api) -> None:
    settings = api.settings
    source = f"stripe-{uuid.uuid4().hex[:8]}"
    with connect(settings.database_url) as conn:
        add_source(conn, source, "stripe", "whsec_test", "acme", None, SecretBox(settings))
    url = f"/v1/webhooks/stripe/{source}"
    failures = _sample("aforo_webhook_verification_failures_total", provider="stripe")
    now = int(time.time())
    forged = []
    for i in range(20):
        body = _stripe(f"evt_forged_{i}")
        forged.append(api.client.post(url, content=body,
                                      headers=stripe_headers("whsec_forged", body, now)).status_code)
    # the forgeries draw from their own budget: three refused as forged, then as too many
    assert forged == [401] * 3 + [429] * 17
    assert _sample("aforo_webhook_verification_failures_total", provider="stripe") == failures + 20
    genuine = []
    for i in range(4):
        body = _stripe(f"evt_genuine_{i}")
        genuine.append(api.client.post(url, content=body, headers=stripe_headers("whsec_test", body, now)))
    # the genuine deliveries still have their whole budget of three
    assert [r.status_code for r in genuine] == [202, 202, 202, 429], genuine[-2].text
    assert genuine[-1].headers["Retry-After"]


def test_rate_limits_are_shared_by_api_processes(settings):
    """Two apps, each with its own Redis connection, as two `aforo serve` processes would be."""
    _, key = new_key(settings, "acme")
    auth = {"Authorization": f"Bearer {key}"}
    options = ApiOptions(rate=0.001, burst=4)
    with TestClient(create_app(settings, options)) as a, TestClient(create_app(settings, options)) as b:
        statuses = [client.get("/v1/events/src/evt-1", headers=auth).status_code
                    for client in (a, b, a, b, a, b)]
    assert statuses == [404, 404, 404, 404, 429, 429]  # 404: not processed; 429: the budget is spent


def test_without_redis_each_process_still_limits_and_is_not_ready(settings):
    ensure_topics(settings)
    broken = dataclasses.replace(settings, redis_url_env="redis://127.0.0.1:1/0")
    _, key = new_key(settings, "acme")
    auth = {"Authorization": f"Bearer {key}"}
    with TestClient(create_app(broken, ApiOptions(rate=0.001, burst=2))) as client:
        statuses = [client.get("/v1/events/src/evt-1", headers=auth).status_code for _ in range(3)]
        ready = client.get("/readyz")
    assert statuses == [404, 404, 429]
    assert ready.status_code == 503
    body = ready.json()
    assert body["status"] == "not_ready" and body["checks"]["redis"]["ok"] is False
    assert "127.0.0.1:1" in body["checks"]["redis"]["detail"]
    assert body["checks"]["kafka"]["ok"] and body["checks"]["postgres"]["ok"]


def test_metrics_health_and_readiness(settings):
    with serving(settings) as api:
        client = api.client
        client.get("/v1/events/src/evt-404", headers=api.auth)
        client.get("/no/such/route")
        health, ready, scraped = client.get("/healthz"), client.get("/readyz"), client.get("/metrics")
        paths = set(client.app.openapi()["paths"])
    assert health.status_code == 200 and health.json() == {"status": "alive"}
    assert ready.status_code == 200, ready.text
    checks = ready.json()["checks"]
    assert set(checks) == {"kafka", "postgres", "migrations", "redis"}
    assert all(c["ok"] for c in checks.values())
    assert scraped.headers["content-type"].startswith("text/plain")
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for family in text_string_to_metric_families(scraped.text) for s in family.samples}
    route = "/v1/events/{source:path}/{event_id}"  # the template, not the ids
    assert samples[("aforo_http_requests_total",
                    (("method", "GET"), ("route", route), ("status", "404")))] >= 1
    assert samples[("aforo_http_requests_total",
                    (("method", "GET"), ("route", "unmatched"), ("status", "404")))] >= 1
    assert "/no/such/route" not in scraped.text  # a 404's path is never a label
    assert samples[("aforo_http_request_duration_seconds_count", (("method", "GET"), ("route", route)))] >= 1
    assert samples[("aforo_ready", (("check", "migrations"),))] == 1
    # platform endpoints are not part of the API's contract
    assert not {"/metrics", "/healthz", "/readyz"} & paths


def test_not_ready_until_migrated(stack, settings):
    name = f"t_{uuid.uuid4().hex[:12]}"
    admin = settings.database_url.rsplit("/", 1)[0] + "/postgres"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    empty = dataclasses.replace(settings, database_url_env=admin.rsplit("/", 1)[0] + "/" + name)
    with TestClient(create_app(empty)) as client:
        ready = client.get("/readyz")
    assert ready.status_code == 503
    migrations = ready.json()["checks"]["migrations"]
    assert not migrations["ok"]
    assert "pending" in migrations["detail"] and "aforo migrate" in migrations["detail"]
