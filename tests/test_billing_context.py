"""Billing context end to end: catalog, enrichment through the caches, revenue, reports."""

from __future__ import annotations

import dataclasses
import json
import random
import socket
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import orjson
import psycopg
import pytest
import yaml
from click.testing import CliRunner
from integration import env_of, ledger, outcomes, periods_of, send
from test_revenue import CHARGES

from cli.main import main
from config import clock
from flows.metering import run
from schemas.catalog import Catalog
from sinks.catalog import CatalogError, apply_catalog
from sinks.postgres import connect

pytestmark = pytest.mark.integration


def pricing_catalog() -> dict:
    """One tenant, one metric and event type per pricing model, one customer subscribed."""
    return {
        "tenants": [{"id": "p", "currency": "USD"}],
        "metrics": [{"tenant": "p", "code": c["model"], "event_type": c["model"], "aggregation": "sum",
                     "value": "$.q", "group_by": ["g"]} for c in CHARGES],
        "plans": [{"tenant": "p", "code": "all", "version": 1, "charges": [
            {**c, "metric": c["model"]} for c in CHARGES]}],
        "customers": [{"tenant": "p", "id": "c1"}],
        "subscriptions": [{"tenant": "p", "id": "s1", "customer": "c1", "plan": "all", "plan_version": 1,
                           "start": "2020-01-01T00:00:00Z"}],
    }


def apply(settings, catalog: dict) -> dict[str, int]:
    with connect(settings.database_url) as conn:
        return apply_catalog(conn, Catalog.model_validate(catalog))


@pytest.mark.time_sensitive
def test_flow_and_aforo_price_agree_to_the_last_digit_for_every_model(settings, tmp_path):
    apply(settings, pricing_catalog())
    rnd = random.Random(3)
    # a minute of events, all in one period: the marginals run on within a period only
    now = clock.now()
    first = max(now - timedelta(seconds=60), now.replace(day=1, hour=0, minute=0, second=0, microsecond=0))
    events = {c["model"]: [(f"{rnd.randint(0, 400)}.{rnd.randint(0, 999):03d}", "a") for _ in range(60)]
              for c in CHARGES}
    lines = []
    for model, qs in events.items():
        for i, (q, g) in enumerate(qs):
            lines.append(orjson.dumps({"specversion": "1.0", "id": f"{model}-{i}", "source": "t",
                                       "type": model, "subject": "c1", "tenantid": "p",
                                       "time": (first + timedelta(seconds=i)).isoformat(),
                                       "data": {"q": q, "g": g}}))
    send(settings, lines)
    run(settings, once=True)
    assert outcomes(settings) == {"accepted/": len(lines)}

    runner = CliRunner()
    with connect(settings.database_url) as conn:
        for charge in CHARGES:
            model = charge["model"]
            flow_marginals = [str(r) for (r,) in conn.execute(
                "SELECT x.revenue FROM ledger_lines x JOIN ledger l USING (raw_topic_id, raw_partition,"
                " raw_offset) WHERE x.metric = %s ORDER BY l.event_time", (model,))]
            plan = tmp_path / f"{model}.json"
            plan.write_text(json.dumps(charge))
            ev = tmp_path / f"{model}.ndjson"
            ev.write_text("".join(json.dumps({"quantity": q, "group": {"g": g}}) + "\n"
                                  for q, g in events[model]))
            out = runner.invoke(main, ["price", "--plan", str(plan), "--events", str(ev)])
            assert out.exit_code == 0, out.output
            priced = json.loads(out.output)
            assert flow_marginals == priced["marginals"], model
            revenue = conn.execute("SELECT revenue FROM revenue WHERE metric = %s", (model,)).fetchone()[0]
            assert str(revenue) == priced["total"] or Decimal(priced["total"]) == revenue


def test_catalog_apply_is_idempotent_and_published_plans_are_immutable(settings, tmp_path):
    env = env_of(settings)
    runner = CliRunner()
    path = tmp_path / "catalog.yaml"  # YAML as well as JSON
    path.write_text(yaml.safe_dump(pricing_catalog()))
    first = runner.invoke(main, ["catalog", "apply", str(path)], env=env)
    assert first.exit_code == 0 and "changed" in first.output
    with connect(settings.database_url) as conn:
        version = conn.execute("SELECT version FROM catalog_state").fetchone()[0]
    again = runner.invoke(main, ["catalog", "apply", str(path)], env=env)
    assert again.exit_code == 0 and "unchanged" in again.output
    with connect(settings.database_url) as conn:
        assert conn.execute("SELECT version FROM catalog_state").fetchone()[0] == version

    changed = pricing_catalog()
    changed["plans"][0]["charges"][1]["unit_price"] = "0.004"
    changed["customers"].append({"tenant": "p", "id": "c2"})
    path = tmp_path / "catalog.json"
    path.write_text(json.dumps(changed))
    refused = runner.invoke(main, ["catalog", "apply", str(path)], env=env)
    assert refused.exit_code == 1
    assert "plan p/all version 1 is published and immutable" in refused.output
    assert "version 2" in refused.output
    with connect(settings.database_url) as conn:  # nothing of the refused file was applied
        assert conn.execute("SELECT count(*) FROM customers WHERE id = 'c2'").fetchone()[0] == 0

    shown = runner.invoke(main, ["catalog", "show"], env=env)
    stored = json.loads(shown.output)
    assert {"tenant": "p", "code": "all", "version": 1, "currency": "USD",
            "charges": pricing_catalog()["plans"][0]["charges"]} in stored["plans"]


def test_catalog_errors_are_clear(settings):
    bad = pricing_catalog()
    bad["subscriptions"][0]["customer"] = "nobody"
    with pytest.raises(CatalogError, match="does not exist"):
        apply(settings, bad)
    bad = pricing_catalog()
    bad["metrics"] = [m for m in bad["metrics"] if m["code"] != "matrix"]
    with pytest.raises(CatalogError, match="prices metric 'matrix', which tenant p does not have"):
        apply(settings, bad)
    bad = pricing_catalog()
    bad["metrics"][-1]["group_by"] = []
    with pytest.raises(CatalogError, match=r"matrix dimensions \['g'\] are not in metric matrix's group_by"):
        apply(settings, bad)
    with pytest.raises(ValueError, match="float"):
        Catalog.model_validate({"costs": [{"tenant": "p", "metric": "m", "unit_cost": 0.1}]})


def test_enrichment_keeps_running_when_redis_is_down(settings):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = f"redis://127.0.0.1:{s.getsockname()[1]}/0"
    now = datetime.now(UTC).isoformat()
    lines = [orjson.dumps({"specversion": "1.0", "id": f"e{i}", "source": "t", "type": "api.call",
                           "subject": "cust-1", "tenantid": "acme", "time": now}) for i in range(50)]
    send(settings, lines)
    run(dataclasses.replace(settings, redis_url_env=dead), once=True)
    assert outcomes(settings) == {"accepted/": 50}
    assert all(row[11] == "sub-1" for row in ledger(settings))


def test_a_catalog_change_reaches_a_running_cache(settings):
    """Unknown customer first; after the catalog learns it, new events resolve (the cached
    absence is dropped with the version change)."""
    now = datetime.now(UTC).isoformat()

    def ev(i):
        return orjson.dumps({"specversion": "1.0", "id": f"n{i}", "source": "t", "type": "api.call",
                             "subject": "cust-new", "tenantid": "acme", "time": now})
    send(settings, [ev(0)])
    run(settings, once=True)
    apply(settings, {"customers": [{"tenant": "acme", "id": "cust-new"}],
                     "subscriptions": [{"tenant": "acme", "id": "sub-new", "customer": "cust-new",
                                        "plan": "pro", "plan_version": 1, "start": "2026-01-01T00:00:00Z"}]})
    send(settings, [ev(1)])
    run(settings, once=True)
    assert [(r[2], r[3], r[11]) for r in ledger(settings)] == [
        ("unresolved", "unknown_customer", None), ("accepted", None, "sub-new")]


@pytest.mark.time_sensitive
def test_revenue_report_adds_up_to_the_ledger(settings):
    from cli.demo import TENANTS, demo_stream
    now = clock.now()
    lines, _ = demo_stream(now, normal=1500)
    send(settings, lines)
    run(settings, once=True)

    def report(*args: str) -> dict:
        out = CliRunner().invoke(main, ["revenue", "--format", "json", *args], env=env_of(settings))
        assert out.exit_code == 0, out.output
        return json.loads(out.output)

    assert report()["period"] == now.strftime("%Y-%m")  # the clock's period by default
    # the demo's last hour may straddle two periods (at 00:30 on the 1st it does): each adds up
    seen = set()
    for period in sorted(set(periods_of(lines, "acme") + periods_of(lines, "globex"))):
        customers = report("--period", period)["customers"]
        with psycopg.connect(settings.database_url) as conn:
            per_customer = {(t, c): (str(r), str(k), str(m)) for t, c, r, k, m in conn.execute(
                "SELECT tenantid, customer, sum(revenue), sum(cost), sum(margin) FROM ledger"
                " WHERE status = 'accepted' AND revenue IS NOT NULL AND period = %s GROUP BY 1, 2",
                (period,))}
        assert {(c["tenant"], c["customer"]): (c["revenue"], c["cost"], c["margin"])
                for c in customers} == per_customer
        seen |= set(per_customer)
    assert seen == {(t, c) for t, cs in TENANTS.items() for c in cs}  # every demo customer
    table = CliRunner().invoke(main, ["revenue", "--period", now.strftime("%Y-%m")], env=env_of(settings))
    assert "period to date" in table.output and f"period {now:%Y-%m}" in table.output


def test_a_tenant_configured_idempotency_key_replaces_source_and_id(settings):
    apply(settings, {"tenants": [{"id": "acme", "name": "Acme", "currency": "USD",
                                  "idempotency_key": "$.request_id"}]})
    now = datetime.now(UTC).isoformat()

    def ev(i, data):
        return orjson.dumps({"specversion": "1.0", "id": f"x{i}", "source": f"s{i}", "type": "api.call",
                             "subject": "cust-1", "tenantid": "acme", "time": now, "data": data})
    send(settings, [ev(0, {"request_id": "r-1"}), ev(1, {"request_id": "r-1"}), ev(2, {})])
    run(settings, once=True)
    assert [(r[2], r[3]) for r in ledger(settings)] == [
        ("accepted", None), ("duplicate", "conflict"), ("rejected", "schema")]
