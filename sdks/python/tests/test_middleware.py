"""The one-line middleware in real apps: FastAPI (ASGI) and Flask (WSGI)."""

from __future__ import annotations

import pytest
from fastapi import FastAPI, HTTPException
from fastapi.testclient import TestClient
from flask import Flask, abort

from aforo_sdk import Aforo, AforoMiddleware, AforoWSGI, set_customer


def _by_route(events: list[dict]) -> dict[tuple[str, str], dict]:
    return {(e["data"]["method"], e["data"]["route"]): e for e in events}


def _check(harness, source: str, events: dict[tuple[str, str], dict], item_route: str) -> None:
    item = events[("GET", item_route)]
    assert item["type"] == "api.call" and item["subject"] == "ai-cust-1"
    assert item["data"]["status"] == 200 and item["data"]["latency_ms"] >= 0
    assert set(item["data"]) == {"route", "method", "status", "latency_ms"}  # no raw path, no ids
    record = harness.ledger(source, item["id"], harness.ai_key)["records"][0]
    assert (record["status"], record["tier"], record["revenue"]) == ("accepted", "sdk", "0.001")


@pytest.fixture
def aforo(harness, source):
    client = Aforo(harness.proxy, harness.ai_key, source=source, linger_s=3600)
    yield client
    client.close()


def test_asgi_middleware_meters_a_fastapi_app(harness, source, aforo):
    app = FastAPI()

    @app.get("/items/{item_id}")
    def item(item_id: int) -> dict:
        return {"id": item_id}

    @app.post("/orders")
    async def order() -> dict:
        set_customer("ai-cust-2")  # learnt inside the request (say, from a session)
        return {}

    @app.get("/missing/{x}")
    def missing(x: str) -> None:
        raise HTTPException(404)

    @app.get("/boom")
    def boom() -> None:
        raise RuntimeError("bug")

    @app.get("/health")
    def health() -> dict:
        return {"ok": True}

    mounted = FastAPI()

    @mounted.get("/reports/{name}")
    def named(name: str) -> dict:
        return {}

    app.mount("/v2", mounted)
    app.add_middleware(AforoMiddleware, client=aforo)

    who = {"X-Customer-Id": "ai-cust-1"}
    with TestClient(app, raise_server_exceptions=False) as http:
        assert http.get("/items/42", headers=who).status_code == 200
        assert http.get("/items/43", headers=who).status_code == 200
        assert http.post("/orders").status_code == 200
        assert http.get("/missing/a", headers=who).status_code == 404
        assert http.get("/boom", headers=who).status_code == 500
        assert http.get("/health", headers=who).status_code == 200  # a probe: skipped
        assert http.get("/nowhere", headers=who).status_code == 404  # no route: skipped
        assert http.get("/items/44").status_code == 200  # nobody to bill: counted, not sent
        assert http.get("/v2/reports/q3", headers=who).status_code == 200
    aforo.flush()
    events = harness.sent(source)
    assert len(events) == 6 and aforo.stats.unattributed == 1
    routes = _by_route(events)
    assert set(routes) == {("GET", "/items/{item_id}"), ("POST", "/orders"), ("GET", "/missing/{x}"),
                           ("GET", "/boom"), ("GET", "/v2/reports/{name}")}
    assert routes[("POST", "/orders")]["subject"] == "ai-cust-2"
    assert routes[("GET", "/missing/{x}")]["data"]["status"] == 404
    assert routes[("GET", "/boom")]["data"]["status"] == 500
    _check(harness, source, routes, "/items/{item_id}")


def test_asgi_customer_callback_and_skip(harness, source, aforo):
    app = FastAPI()

    @app.get("/v1/things/{name}")
    def thing(name: str) -> dict:
        return {}

    app.add_middleware(AforoMiddleware, client=aforo, customer=lambda scope: scope["path_params"].get("name"),
                       skip=lambda scope: scope["path"].endswith("/internal"))
    with TestClient(app) as http:
        http.get("/v1/things/ai-cust-1")
        http.get("/v1/things/internal")
    aforo.flush()
    assert [(e["subject"], e["data"]["route"]) for e in harness.sent(source)] == [
        ("ai-cust-1", "/v1/things/{name}")]


def test_wsgi_middleware_meters_a_flask_app(harness, source, aforo):
    app = Flask(__name__)

    @app.get("/users/<int:user_id>")
    def user(user_id: int) -> dict:
        return {"id": user_id}

    @app.post("/orders")
    def order() -> dict:
        set_customer("ai-cust-2")
        return {}

    @app.get("/missing/<x>")
    def missing(x: str) -> None:
        abort(404)

    @app.get("/boom")
    def boom() -> None:
        raise RuntimeError("bug")

    @app.get("/healthz")
    def health() -> dict:
        return {"ok": True}

    app.wsgi_app = AforoWSGI(app.wsgi_app, client=aforo)

    # buffered: the test client reads and closes each response, as WSGI servers do (the request
    # is metered when the server closes the response, so that streaming time counts)
    who = {"headers": {"X-Customer-Id": "ai-cust-1"}, "buffered": True}
    http = app.test_client()
    assert http.get("/users/7", **who).status_code == 200
    assert http.post("/orders", buffered=True).status_code == 200
    assert http.get("/missing/a", **who).status_code == 404
    assert http.get("/boom", **who).status_code == 500
    assert http.get("/healthz", **who).status_code == 200
    assert http.get("/nowhere", **who).status_code == 404
    aforo.flush()
    routes = _by_route(harness.sent(source))
    assert set(routes) == {("GET", "/users/<int:user_id>"), ("POST", "/orders"), ("GET", "/missing/<x>"),
                           ("GET", "/boom")}
    assert routes[("POST", "/orders")]["subject"] == "ai-cust-2"
    assert routes[("GET", "/missing/<x>")]["data"]["status"] == 404
    assert routes[("GET", "/boom")]["data"]["status"] == 500
    _check(harness, source, routes, "/users/<int:user_id>")


def test_wsgi_route_callback_for_other_frameworks(harness, source, aforo):
    def plain(environ, start_response):
        start_response("201 Created", [("Content-Type", "text/plain")])
        return [b"ok"]

    app = AforoWSGI(plain, client=aforo, route=lambda environ: "/upload/{kind}")
    from werkzeug.test import Client
    Client(app).post("/upload/csv", headers={"X-Customer-Id": "ai-cust-1"}, buffered=True)
    aforo.flush()
    [event] = harness.sent(source)
    assert (event["data"]["route"], event["data"]["status"], event["data"]["method"]) == (
        "/upload/{kind}", 201, "POST")
