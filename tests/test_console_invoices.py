"""The console's invoice reads over real HTTP (`aforo serve`'s app on a socket), on invoices made by
a real bill run over real ledger data: lines, each usage line's events (their count, their revenue,
their validation hashes), the trace download verifying offline, exports, credit notes, and every
key scope (another tenant's key sees nothing, a customer key its own invoices only)."""

from __future__ import annotations

import hashlib
import io
import zipfile
from decimal import Decimal as D

import httpx
import orjson
import pytest
from billing_fixtures import PERIOD, apply, cli
from test_api_server import serving
from test_billing_run import TERMS, month_of_usage
from test_console_api import console_keys

from flows.billing import bill_run
from sinks.audit import verify_file
from sinks.postgres import connect

pytestmark = pytest.mark.integration


@pytest.fixture
def billed(settings):
    """acme's PERIOD metered and billed: INV-2026-0001 (cust-1, four lines), -0002, -0003; keys."""
    apply(settings, TERMS)
    month_of_usage(settings)
    assert bill_run(settings, "acme", PERIOD).ok
    keys = console_keys(settings)
    with serving(settings) as base:
        yield settings, base, keys


def _client(base: str, key: str) -> httpx.Client:
    return httpx.Client(base_url=base, headers={"Authorization": f"Bearer {key}"}, timeout=60)


def _all_events(c: httpx.Client, url: str) -> list[dict]:
    """Every event behind a line, 40 a page."""
    items, offset = [], 0
    while offset is not None:
        page = c.get(url, params={"offset": offset, "limit": 40})
        assert page.status_code == 200, page.text
        items += page.json()["items"]
        offset = page.json()["next_offset"]
    return items


def test_each_line_is_attributed_to_its_events_and_the_trace_verifies(billed, tmp_path):
    settings, base, keys = billed
    with _client(base, keys["acme"]) as c:
        listed = c.get("/v1/invoices", params={"period": PERIOD}).json()
        assert [(i["number"], i["customer"]) for i in listed] == [
            ("INV-2026-0001", "cust-1"), ("INV-2026-0002", "cust-2"), ("INV-2026-0003", "cust-3")]
        assert listed[0]["total"] == {"amount": "5.40", "currency": "USD", "display": "5.40 USD"}

        inv = c.get("/v1/invoices/INV-2026-0001").json()
        assert (inv["customer_name"], inv["digest_verified"], inv["voided_by"]) == ("Globex Labs", True, None)
        assert [x["kind"] for x in inv["lines"]] == ["usage", "usage", "usage", "commitment"]
        calls, tokens_4o, _, true_up = inv["lines"]
        assert (calls["metric"], calls["quantity"], calls["events"]) == ("api_calls", "150", 150)
        assert [p["label"] for p in calls["parts"]] == ["tier 1 (0 to 100)", "tier 2 (above 100)"]
        assert (D(calls["amount"]["amount"]), D(calls["discount"]["amount"])) == (D("0.1"), D("0.01"))
        assert (calls["net"]["display"], calls["tax"]["display"], calls["total"]["display"]) == \
            ("0.09 USD", "0.02 USD", "0.11 USD")
        assert tokens_4o["group"] == {"model": "gpt-4o"}
        assert true_up["attribution"] is None and inv["totals"]["total"]["display"] == "5.40 USD"

        with connect(settings.database_url) as conn:
            hashes = {(t, p, o): h for t, p, o, h in conn.execute(
                "SELECT raw_topic_id, raw_partition, raw_offset, validation_hash FROM ledger"
                " WHERE customer = 'cust-1' AND period = %s", (PERIOD,))}
        for line in inv["lines"][:3]:
            a = line["attribution"]
            assert a["events"] == line["events"] == a["first"]["events"]
            assert len(a["first"]["items"]) == min(10, line["events"])
            events = _all_events(c, a["events_url"])
            assert len(events) == line["events"]
            coords = [(e["raw_topic_id"], e["raw_partition"], e["raw_offset"]) for e in events]
            assert coords == sorted(set(coords))  # raw order, none twice
            assert sum(D(e["revenue"]) for e in events) == D(line["usage_amount"]["amount"])
            assert all(hashes[k] == e["validation_hash"] for k, e in zip(coords, events, strict=True))
        assert (events[0]["source"], events[0]["event_id"]) == ("billing-test", "bt2")  # line 3: 1 completion

        # the trace download is the file `aforo invoice trace` writes, and verifies offline
        trace = c.get(inv["lines"][0]["attribution"]["trace_url"])
        assert trace.status_code == 200 and trace.headers["content-type"] == "application/zip"
        with zipfile.ZipFile(io.BytesIO(trace.content)) as z:
            assert sorted(z.namelist()) == ["INV-2026-0001-line-1.ndjson",
                                            "INV-2026-0001-line-1.ndjson.manifest.json"]
            z.extractall(tmp_path)
        ndjson = tmp_path / "INV-2026-0001-line-1.ndjson"
        assert verify_file(ndjson) == (150, None)
        assert "150 rows" in cli(settings, "audit", "verify", str(ndjson))
        manifest = orjson.loads((tmp_path / "INV-2026-0001-line-1.ndjson.manifest.json").read_bytes())
        assert (manifest["invoice"], manifest["rows"]) == ("INV-2026-0001", 150)
        assert D(manifest["totals"]["api_calls"]["revenue"]) == D(calls["usage_amount"]["amount"])
        by_cli = tmp_path / "cli.ndjson"
        cli(settings, "invoice", "trace", "INV-2026-0001", "--line", "1", "-o", str(by_cli))
        assert by_cli.read_bytes() == ndjson.read_bytes()

        exported = c.get(inv["exports"]["json"])
        assert hashlib.sha256(exported.content).hexdigest() == inv["digest"]
        assert 'filename="INV-2026-0001.json"' in exported.headers["content-disposition"]
        assert c.get(inv["exports"]["pdf"]).content.startswith(b"%PDF")

        # mistakes: a clear 4xx, never a 500
        for path, status in (("/v1/invoices/INV-2026-0999", 404),
                             ("/v1/invoices/INV-2026-0001/lines/9/events", 404),
                             ("/v1/invoices/INV-2026-0001/lines/4/events", 404),  # the true-up: no events
                             ("/v1/invoices/INV-2026-0001/trace?line=4", 404),
                             ("/v1/invoices/INV-2026-0001/export?format=xls", 400),
                             ("/v1/invoices?period=March", 400)):
            r = c.get(path)
            assert r.status_code == status, (path, r.text)
            assert r.json()["message"]


def test_invoices_are_scoped_to_the_keys_tenant_and_customer(billed):
    _, base, keys = billed
    paths = ["/v1/invoices/INV-2026-0001", "/v1/invoices/INV-2026-0001/lines/1/events",
             "/v1/invoices/INV-2026-0001/export", "/v1/invoices/INV-2026-0001/trace?line=1"]
    with _client(base, keys["globex"]) as c:
        assert c.get("/v1/invoices").json() == []
        for path in paths:
            r = c.get(path)
            assert r.status_code == 404 and b"cust-1" not in r.content, path
        assert c.get("/v1/invoices", params={"tenant": "acme"}).status_code == 403
    with _client(base, keys["operator"]) as c:
        assert len(c.get("/v1/invoices").json()) == 3
        assert c.get(paths[0]).status_code == 400  # numbers restart per tenant: name it
        assert c.get(paths[0], params={"tenant": "acme"}).json()["lines"][0]["attribution"]["events_url"] == \
            "/v1/invoices/INV-2026-0001/lines/1/events?tenant=acme"
        assert c.get(paths[0], params={"tenant": "globex"}).status_code == 404
    with _client(base, keys["cust-2"]) as c:  # the portal's customer: its own invoices only
        assert [i["number"] for i in c.get("/v1/invoices").json()] == ["INV-2026-0002"]
        assert c.get("/v1/invoices", params={"customer": "cust-1"}).status_code == 403
        for path in paths:
            assert c.get(path).status_code == 404, path
        assert c.get("/v1/invoices/INV-2026-0002").json()["customer"] == "cust-2"


def test_a_credit_note_is_listed_and_linked_to_the_invoice_it_voids(billed):
    settings, base, keys = billed
    cli(settings, "invoice", "void", "INV-2026-0002", "--reason", "duplicate account")
    with _client(base, keys["acme"]) as c:
        listed = {i["number"]: i for i in c.get("/v1/invoices", params={"customer": "cust-2"}).json()}
        assert (listed["INV-2026-0002"]["voided_by"], listed["CN-2026-0001"]["credit_note_of"]) == \
            ("CN-2026-0001", "INV-2026-0002")
        note = c.get("/v1/invoices/CN-2026-0001").json()
        assert (note["kind"], note["credit_note_of"], note["title"]) == \
            ("credit_note", "INV-2026-0002", "Credit note CN-2026-0001 (voids INV-2026-0002)")
        assert all(x["attribution"] is None for x in note["lines"])  # the events are the invoice's
        assert c.get("/v1/invoices/INV-2026-0002").json()["voided_by"] == "CN-2026-0001"
