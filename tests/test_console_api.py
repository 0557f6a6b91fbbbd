"""The console's read API on the real stack: key scopes, tenant and customer scoping of every read,
sessions and their CSRF rule, unit health arithmetic, the offline docs, and the live tail (one
consumer per process, fanned out per tenant, starting at the true end of the topics)."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import httpx
import orjson
import pytest
from billing_fixtures import apply
from click.testing import CliRunner
from integration import env_of, meter_demo, send
from test_api_helpers import open_api
from test_api_server import serving

from api.keys import create_key, key_id_of, revoke_key
from cli.api_commands import keys
from flows.metering import run
from sinks.kafka import ensure_topics
from sinks.postgres import connect

pytestmark = pytest.mark.integration
READS = ["/v1/revenue/summary", "/v1/revenue/margins", "/v1/events", "/v1/events/counters", "/v1/usage/tiers",
         "/v1/alerts", "/v1/quotas"]


def _key(settings, tenant, scope="tenant", customer=None) -> str:
    with connect(settings.database_url) as conn:
        return create_key(conn, tenant, scope, customer)[1]


def console_keys(settings) -> dict[str, str]:
    """A key of each scope: tenants acme and globex, an operator, acme's customer cust-2."""
    with connect(settings.database_url) as conn:
        return {"acme": create_key(conn, "acme")[1], "globex": create_key(conn, "globex")[1],
                "operator": create_key(conn, None, "operator")[1],
                "cust-2": create_key(conn, "acme", "customer", "cust-2")[1]}


def _bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def _event(i, tenant="acme", subject="cust-1", **extra) -> bytes:
    return orjson.dumps({"specversion": "1.0", "id": f"c-{i}", "source": "console-test", "type": "api.call",
                         "subject": subject, "tenantid": tenant, "time": datetime.now(UTC).isoformat(),
                         **extra})


@pytest.fixture
def metered(settings):
    return meter_demo(settings, 400)


def test_key_scopes_from_the_cli(settings):
    runner, env = CliRunner(), env_of(settings)
    for args in (["--operator"], ["--tenant", "acme", "--customer", "cust-2"], ["--tenant", "acme"]):
        made = runner.invoke(keys, ["create", *args], env=env)
        assert made.exit_code == 0, made.output
    refused = [runner.invoke(keys, ["create", *a], env=env) for a in
               ([], ["--operator", "--tenant", "acme"], ["--tenant", "acme", "--customer", "nobody"])]
    assert [r.exit_code for r in refused] == [2, 2, 1]
    assert "customer 'nobody' of tenant 'acme' is not in the catalog" in refused[2].output
    listed = runner.invoke(keys, ["list"], env=env).output.splitlines()
    assert [line.split()[1:4] for line in listed[1:]] == [
        ["operator", "*", "-"], ["customer", "acme", "cust-2"], ["tenant", "acme", "-"]]


def test_only_tenant_keys_send_events(settings):
    for api in open_api(settings):
        for scope, customer in (("operator", None), ("customer", "cust-1")):
            key = _key(settings, None if scope == "operator" else "acme", scope, customer)
            r = api.client.post("/v1/events", json=[orjson.loads(_event(1))], headers=_bearer(key))
            assert r.status_code == 403 and f"{scope} key" in r.json()["message"]
            assert api.client.post("/v1/guide/test-event", headers=_bearer(key)).status_code == 403
        sent = api.client.post("/v1/events", json=[orjson.loads(_event(1))], headers=api.auth)
        assert sent.status_code == 202


def test_every_read_is_scoped_to_the_keys_tenant(metered):
    settings = metered
    globex, operator = _key(settings, "globex"), _key(settings, None, "operator")
    customer = _key(settings, "acme", "customer", "cust-1")
    for api in open_api(settings):
        for path in READS:
            own = api.client.get(path, headers=_bearer(globex))
            assert own.status_code == 200, (path, own.text)
            assert not any(word in own.content for word in (b"acme", b"cust-1", b"USD")), path
            assert api.client.get(path, params={"tenant": "acme"}, headers=_bearer(globex)).status_code == 403
            assert api.client.get(path, headers=_bearer(customer)).status_code == 403
            every = api.client.get(path, headers=_bearer(operator))
            assert every.status_code == 200
            narrowed = api.client.get(path, params={"tenant": "globex"}, headers=_bearer(operator))
            assert b"cust-1" not in narrowed.content, path
        margins = api.client.get("/v1/revenue/margins", headers=_bearer(operator)).json()
        assert {(c["tenant"], c["customer"]) for c in margins["customers"]} == {
            ("acme", "cust-1"), ("acme", "cust-2"), ("acme", "cust-3"),
            ("globex", "cust-a"), ("globex", "cust-b")}
        # one event: the tenant's own only; an operator names the tenant
        with connect(settings.database_url) as conn:
            source, event_id = conn.execute(
                "SELECT source, event_id FROM ledger WHERE tenantid = 'acme' AND status = 'accepted'"
                " AND reason IS NULL ORDER BY raw_partition, raw_offset LIMIT 1").fetchone()
        path = f"/v1/events/{source}/{event_id}"
        assert api.client.get(path, headers=_bearer(globex)).status_code == 404
        assert api.client.get(path, params={"tenant": "acme"}, headers=_bearer(globex)).status_code == 403
        assert api.client.get(path, headers=_bearer(operator)).status_code == 400
        found = api.client.get(path, params={"tenant": "acme"}, headers=_bearer(operator)).json()
        record = found["records"][0]
        assert [g["outcome"] for g in record["gates"]] == ["passed"] * 8
        assert record["lines"]
        assert sum(Decimal(x["revenue"]) for x in record["lines"]) == Decimal(record["revenue"])


def test_the_portal_reads_one_customer(metered):
    settings = metered
    cust2 = _key(settings, "acme", "customer", "cust-2")
    for api in open_api(settings):
        mine = api.client.get("/v1/portal", headers=_bearer(cust2))
        assert mine.status_code == 200, mine.text
        body = mine.json()
        assert (body["customer"], body["name"]) == ("cust-2", "Initech")
        assert not any(word in mine.content for word in (b"cust-1", b"cust-3", b"sub-1"))
        assert [q["subscription"] for q in body["quotas"]] == ["sub-2"]
        for other in ({"customer": "cust-1"}, {"tenant": "globex"}):
            assert api.client.get("/v1/portal", params=other, headers=_bearer(cust2)).status_code == 403
        # a tenant key looks at any of its customers as that customer sees it
        other = api.client.get("/v1/portal", params={"customer": "cust-1"}, headers=api.auth)
        assert other.status_code == 200 and other.json()["customer"] == "cust-1"
        globex_customer = api.client.get("/v1/portal", params={"customer": "cust-a"}, headers=api.auth)
        assert globex_customer.status_code == 404
        with connect(settings.database_url) as conn:
            billed = conn.execute("SELECT sum(revenue) FROM revenue WHERE customer = 'cust-2'"
                                  " AND period = %s", (body["period"],)).fetchone()[0]
        assert Decimal(body["bill_to_date"][0]["amount"]) == billed


# Valid, if hostile: a price of 10^12 per unit and a quota limit of 10^-24 units.
HUGE = {"tenants": [{"id": "huge", "name": "Huge", "currency": "USD"}],
        "metrics": [{"tenant": "huge", "code": "units", "event_type": "bulk.write", "aggregation": "sum",
                     "value": "$.n"}],
        "plans": [{"tenant": "huge", "code": "p", "version": 1, "currency": "USD",
                   "charges": [{"metric": "units", "model": "per_unit", "unit_price": "1000000000000"}]}],
        "customers": [{"tenant": "huge", "id": "whale"}],
        "subscriptions": [{"tenant": "huge", "id": "sub-w", "customer": "whale", "plan": "p",
                           "plan_version": 1, "start": "2026-01-01T00:00:00Z"}],
        "quotas": [{"tenant": "huge", "subscription": "sub-w", "metric": "units",
                    "limit": "0.000000000000000000000001"}]}


def test_no_figure_is_too_large_to_show(settings):
    """A 27-digit revenue and a quota used at 10^41 % of its limit: every page and JSON route
    shows them, every digit, rather than answering 500."""
    apply(settings, HUGE)
    ensure_topics(settings)
    send(settings, [_event("w", tenant="huge", subject="whale", type="bulk.write",
                           data={"n": 999999999999999})])
    run(settings, once=True)
    with connect(settings.database_url) as conn:
        assert conn.execute("SELECT revenue FROM ledger WHERE tenantid = 'huge'").fetchone()[0] == \
            Decimal("999999999999999000000000000")
    shown, percent = "999,999,999,999,999,000,000,000,000.00 USD", "99999999999999900000000000000000000000000"
    key = _key(settings, "huge")
    with serving(settings) as base, httpx.Client(base_url=base, timeout=60) as c:
        quotas = c.get("/v1/quotas", headers=_bearer(key))
        assert quotas.status_code == 200, quotas.text
        assert (quotas.json()[0]["used"], quotas.json()[0]["used_percent"]) == ("999999999999999", percent)
        for path in ("/v1/revenue/summary", "/v1/revenue/margins", "/v1/portal?customer=whale"):
            r = c.get(path, headers=_bearer(key))
            assert r.status_code == 200 and shown in r.text, (path, r.text)
        assert c.post("/login", content=f"key={key}&next=/", follow_redirects=False).status_code == 303
        for path in ("/", "/margins", "/portal?customer=whale"):
            r = c.get(path)
            assert r.status_code == 200 and shown in r.text, path
        alerts = c.get("/alerts")
        assert alerts.status_code == 200 and f"used 999999999999999 ({percent}%)" in alerts.text


def test_a_nul_in_a_parameter_is_a_clear_400(settings):
    """Postgres text cannot hold a NUL: every read and page names the parameter, never a 500."""
    ensure_topics(settings)
    key, operator = _key(settings, "acme"), _key(settings, None, "operator")
    with serving(settings) as base, httpx.Client(base_url=base, timeout=60) as c:
        for path, who, name in (("/v1/invoices?customer=%00", key, "customer"),
                                ("/v1/events?source=a%00", key, "source"),
                                ("/v1/revenue/summary?tenant=%00", operator, "tenant"),
                                ("/v1/portal?customer=%00", key, "customer"),
                                ("/v1/invoices/INV%00", key, "number"),
                                ("/v1/events/src%00/id", key, "source"),
                                ("/v1/events/src/id%00", key, "event_id")):
            r = c.get(path, headers=_bearer(who))
            assert (r.status_code, r.json()["message"]) == (400, f"{name} contains a NUL character"), path
        assert c.post("/login", content=f"key={key}&next=/", follow_redirects=False).status_code == 303
        for path in ("/invoices?customer=%00", "/invoices/INV%00", "/events/view?source=%00&id=x",
                     "/margins?period=%00"):
            r = c.get(path)
            assert r.status_code == 400 and "contains a NUL character" in r.text, path


def test_the_console_shows_an_events_provenance(settings):
    """The page the live stream opens (and its fragment) shows the event the JSON route finds,
    an MCP proxy's session/request id included: a 200, never a 500."""
    ensure_topics(settings)
    send(settings, [_event("x", id="sess-9/7", source="mcp/proxy")])
    run(settings, once=True)
    key = _key(settings, "acme")
    with serving(settings) as base, httpx.Client(base_url=base, timeout=60) as c:
        found = c.get("/v1/events/mcp/proxy/sess-9%2F7", headers=_bearer(key))
        assert (found.status_code, found.json()["status"]) == (200, "accepted"), found.text
        assert c.post("/login", content=f"key={key}&next=/", follow_redirects=False).status_code == 303
        for fragment in ("0", "1"):
            page = c.get("/events/view", params={"source": "mcp/proxy", "id": "sess-9/7",
                                                 "fragment": fragment})
            assert page.status_code == 200, page.text
            assert "sess-9/7" in page.text and 'data-final-status="accepted"' in page.text


def test_sessions_sign_in_out_and_need_the_csrf_header_to_write(settings):
    for api in open_api(settings):
        c = api.client
        assert c.get("/", follow_redirects=False).headers["location"] == "/login?next=%2F"
        bad = c.post("/login", content="key=afk_nope&next=/", follow_redirects=False)
        assert bad.status_code == 401 and "not valid" in bad.text
        ok = c.post("/login", content=f"key={api.key}&next=/margins", follow_redirects=False)
        assert ok.status_code == 303 and ok.headers["location"] == "/margins"
        cookie = ok.headers["set-cookie"]
        assert "HttpOnly" in cookie and "SameSite=strict" in cookie
        assert c.get("/v1/revenue/margins").status_code == 200  # the cookie authenticates reads
        assert "Content-Security-Policy" in c.get("/margins").headers
        refused = c.post("/v1/guide/test-event")
        assert refused.status_code == 403 and "X-Aforo-Console" in refused.json()["message"]
        assert c.post("/v1/guide/test-event", headers={"X-Aforo-Console": "1"}).status_code == 202
        c.post("/logout")
        c.cookies.clear()
        assert c.get("/v1/revenue/margins").status_code == 401


def test_a_sign_in_sent_from_another_site_is_refused(settings):
    """Sign-in takes no cookie, so SameSite cannot guard it: a form on another site posting its
    own key would sign the victim's browser in to the attacker's tenant. The browser's word on
    where the form comes from (Sec-Fetch-Site, else Origin, else Referer) must be this console;
    a script sending none of it still signs in, and Bearer reads never needed a form."""
    ensure_topics(settings)
    attacker = _key(settings, "globex")
    with serving(settings) as base, httpx.Client(base_url=base, timeout=60) as c:
        host = base.removeprefix("http://")
        for headers in ({"Origin": "https://evil.example", "Sec-Fetch-Site": "cross-site"},
                        {"Origin": base, "Sec-Fetch-Site": "same-site"},  # a sibling subdomain
                        {"Origin": "https://evil.example"},
                        {"Origin": "null"},  # a sandboxed frame, or a redirect from elsewhere
                        {"Origin": f"http://{host.split(':')[0]}:1"},  # same host, another port
                        {"Referer": "https://evil.example/win-a-prize"}):
            r = c.post("/login", content=f"key={attacker}&next=/", follow_redirects=False,
                       headers={"Content-Type": "application/x-www-form-urlencoded", **headers})
            assert r.status_code == 403, (headers, r.text)
            assert "set-cookie" not in r.headers, headers
            assert "sent from another site" in r.text and 'id="signin-error"' in r.text, headers
            assert c.get("/v1/revenue/margins").status_code == 401, headers  # not signed in
        for headers in ({"Origin": base, "Sec-Fetch-Site": "same-origin"}, {"Origin": base},
                        {"Referer": f"{base}/login?next=%2Fmargins"}, {}):  # {}: a script
            c.cookies.clear()
            ok = c.post("/login", content=f"key={attacker}&next=/margins", follow_redirects=False,
                        headers=headers)
            assert (ok.status_code, ok.headers["location"]) == (303, "/margins"), (headers, ok.text)
            assert c.get("/v1/revenue/margins").status_code == 200, headers
        c.cookies.clear()
        assert c.get("/v1/revenue/margins", headers=_bearer(attacker)).status_code == 200


def test_unit_health_splits_graduated_usage_across_tiers(metered):
    settings = metered
    for api in open_api(settings):
        health = api.client.get("/v1/usage/tiers", headers=api.auth).json()
    with connect(settings.database_url) as conn:
        calls = [q for (q,) in conn.execute("SELECT quantity FROM revenue WHERE tenant = 'acme' AND"
                                            " metric = 'api_calls' AND period = %s", (health["period"],))]
    graduated = next(c for c in health["charges"] if c["metric"] == "api_calls")
    assert graduated["thresholds"] == ["100"]
    first, rest = sum(min(q, 100) for q in calls), sum(max(q - 100, 0) for q in calls)
    assert [Decimal(t["units"]) for t in graduated["tiers"]] == [first, rest]
    assert sum(int(t["share_percent"]) for t in graduated["tiers"]) in (99, 100, 101)
    assert sum(b["customers"] for b in graduated["histogram"]) == len(calls) == graduated["customers"]
    stairstep = next(c for c in health["charges"] if c["metric"] == "storage_gb")
    assert stairstep["model"] == "stairstep" and stairstep["thresholds"] == ["10", "100"]
    assert {c["metric"] for c in health["charges"]} == {"api_calls", "storage_gb"}  # matrix is not tiered


def test_docs_are_served_offline(settings):
    for api in open_api(settings):
        page = api.client.get("/docs")
        assert page.status_code == 200
        assert "http" not in page.text.replace("http-equiv", "")  # no CDN, no absolute URL
        for asset in ("/static/vendor/swagger-ui-5.32.0/swagger-ui-bundle.js",
                      "/static/vendor/swagger-ui-5.32.0/swagger-ui.css", "/static/docs.js",
                      "/static/vendor/chart.js-4.5.1/chart.umd.min.js"):
            assert api.client.get(asset).status_code == 200, asset
        assert api.client.get("/openapi.json").json()["paths"]["/v1/revenue/summary"]["get"]


def _stream(client, key, frames, ready, stop, tenant=None):
    params = {"tenant": tenant} if tenant else None
    with client.stream("GET", "/v1/events/stream", params=params, headers=_bearer(key)) as r:
        assert r.status_code == 200
        for line in r.iter_lines():
            if line == "event: ready":
                ready.set()
            if line.startswith("data:") and line != "data: {}":
                frames.append(orjson.loads(line[len("data: "):]))
            if stop.is_set():
                return


def test_the_live_tail_starts_at_the_true_end_and_fans_out_per_tenant(settings):
    """History first (the output topics hold earlier records, the embedded broker's high
    watermark lagging behind their end); then three clients on one consumer: acme, globex and an
    operator. Each gets only what was routed after it was positioned, filtered to its tenant."""
    ensure_topics(settings)
    send(settings, [_event(f"old-{i}") for i in range(300)])
    run(settings, once=True)
    clients = {"acme": _key(settings, "acme"), "globex": _key(settings, "globex"),
               "operator": _key(settings, None, "operator")}
    frames = {name: [] for name in clients}
    readies = {name: threading.Event() for name in clients}
    stop = threading.Event()
    with serving(settings) as base, httpx.Client(base_url=base, timeout=60) as client:
        readers = [threading.Thread(target=_stream, args=(client, key, frames[n], readies[n], stop),
                                    daemon=True) for n, key in clients.items()]
        for t in readers:
            t.start()
        assert all(r.wait(60) for r in readies.values())
        tails = [t for t in threading.enumerate() if t.name == "aforo-live-tail"]
        assert len(tails) == 1  # one consumer for the three streams
        send(settings, [_event("new-a"), _event("new-g", tenant="globex", subject="cust-a")])
        run(settings, once=True)
        deadline = time.monotonic() + 60
        while len(frames["operator"]) < 2 and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(1)  # anything else (an old record replayed) would have arrived by now
        stop.set()
        send(settings, [_event("bye"), _event("bye", tenant="globex", subject="cust-a")])  # wake the readers
        run(settings, once=True)
        for t in readers:
            t.join(30)
    ids = {n: [f["event"]["id"] for f in frames[n] if f["event"]["id"] != "c-bye"] for n in frames}
    assert ids["acme"] == ["c-new-a"]
    assert ids["globex"] == ["c-new-g"]
    assert sorted(ids["operator"]) == ["c-new-a", "c-new-g"]


def test_a_revoked_keys_open_stream_ends_before_the_next_event(settings):
    """An open stream outlives the request that checked its key: once the revocation is seen
    (the key cache keeps a key 5 s), the next frame is `event: revoked`, not the tenant's next
    event, and reconnecting is refused."""
    ensure_topics(settings)
    key = _key(settings, "acme")
    lines, ready = [], threading.Event()
    with serving(settings) as base, httpx.Client(base_url=base, timeout=60) as client:
        def read() -> None:
            with client.stream("GET", "/v1/events/stream", headers=_bearer(key)) as r:
                for line in r.iter_lines():
                    lines.append(line)
                    if line == "event: ready":
                        ready.set()
        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        assert ready.wait(60)
        send(settings, [_event("before")])
        run(settings, once=True)
        deadline = time.monotonic() + 60
        while not any("c-before" in line for line in lines) and time.monotonic() < deadline:
            time.sleep(0.1)
        with connect(settings.database_url) as conn:
            revoke_key(conn, key_id_of(key))
        time.sleep(5.5)  # the key cache's lifetime
        send(settings, [_event("after")])
        run(settings, once=True)
        reader.join(30)
        assert not reader.is_alive(), "the stream of a revoked key is still open"
        assert client.get("/v1/events/stream", headers=_bearer(key)).status_code == 401
    assert any("c-before" in line for line in lines)
    assert "event: revoked" in lines and not any("c-after" in line for line in lines)


def test_a_shutdown_ends_the_live_streams(settings):
    """`aforo serve` on SIGTERM tells each open stream `event: closing` and ends it, so the
    graceful shutdown does not wait for clients that would never leave (then uvicorn re-raises
    the signal: the process ends by SIGTERM)."""
    ensure_topics(settings)
    key = _key(settings, "acme")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    aforo = Path(sys.executable).with_name("aforo")  # the console script of this environment
    server = subprocess.Popen([str(aforo), "serve", "--port", str(port)],
                              env=env_of(settings), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        base = f"http://127.0.0.1:{port}"
        for _ in range(600):
            try:
                httpx.get(base + "/openapi.json", timeout=1)
                break
            except httpx.TransportError:
                time.sleep(0.1)
        lines = []
        with httpx.stream("GET", base + "/v1/events/stream", headers=_bearer(key), timeout=60) as r:
            for line in r.iter_lines():
                lines.append(line)
                if line == "event: ready":
                    server.send_signal(signal.SIGTERM)
        assert "event: closing" in lines[-3:]
        assert server.wait(60) == -signal.SIGTERM
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()
