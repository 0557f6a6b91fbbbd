"""The catalog in Postgres: apply a catalog file, print it back, load what the flow needs."""

from __future__ import annotations

from collections.abc import Iterable
from decimal import Decimal
from pathlib import Path

import orjson
import psycopg
import yaml
from psycopg.types.json import Jsonb

from operators.pricing import parse_charge
from operators.timestamp_gate import to_us
from schemas.billing import CostRate, Entitlement, MetricDef, SubscriptionRef, TenantInfo
from schemas.catalog import Catalog
from schemas.errors import NotFound
from sinks.postgres import as_dicts


class CatalogError(ValueError):
    """The catalog cannot be applied; the message says why and what to do instead."""


def require_tenant(conn: psycopg.Connection, tenant: str) -> None:
    """NotFound unless the catalog declares the tenant: a mistyped name must not close, bill or
    replay an empty period and report success."""
    if conn.execute("SELECT 1 FROM tenants WHERE id = %s", (tenant,)).fetchone() is None:
        raise NotFound(f"no tenant {tenant!r}")


def read_catalog_file(path: Path) -> Catalog:
    text = path.read_bytes()
    # YAML or JSON floats would be inexact: amounts must be quoted, which the model enforces.
    try:
        data = yaml.safe_load(text) if path.suffix.lower() in (".yaml", ".yml") else orjson.loads(text)
    except yaml.YAMLError as exc:  # its text spans several lines, with a copy of the input
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise CatalogError(f"not valid YAML: {getattr(exc, 'problem', None) or exc}{where}") from None
    return Catalog.model_validate(data)


# Each upsert changes a row only when something differs, so re-applying a file is a no-op and
# rowcount tells whether the catalog version must move.
_UPSERTS = {
    "tenants": ("INSERT INTO tenants (id, name, currency, idempotency_key) VALUES (%s, %s, %s, %s)"
                " ON CONFLICT (id) DO UPDATE SET name = excluded.name, currency = excluded.currency,"
                " idempotency_key = excluded.idempotency_key"
                " WHERE (tenants.name, tenants.currency, tenants.idempotency_key) IS DISTINCT FROM"
                " (excluded.name, excluded.currency, excluded.idempotency_key)"),
    "metrics": ("INSERT INTO metrics (tenant, code, event_type, aggregation, value_path, group_by)"
                " VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT (tenant, code) DO UPDATE SET"
                " event_type = excluded.event_type, aggregation = excluded.aggregation,"
                " value_path = excluded.value_path, group_by = excluded.group_by"
                " WHERE (metrics.event_type, metrics.aggregation, metrics.value_path, metrics.group_by)"
                " IS DISTINCT FROM (excluded.event_type, excluded.aggregation, excluded.value_path,"
                " excluded.group_by)"),
    "customers": ("INSERT INTO customers (tenant, id, name, tax_rate) VALUES (%s, %s, %s, %s)"
                  " ON CONFLICT (tenant, id) DO UPDATE SET name = excluded.name, tax_rate = excluded.tax_rate"
                  " WHERE (customers.name, customers.tax_rate) IS DISTINCT FROM"
                  " (excluded.name, excluded.tax_rate)"),
    "subscriptions": ("INSERT INTO subscriptions (tenant, id, customer, plan, plan_version, starts_at,"
                      " ends_at, minimum) VALUES (%s, %s, %s, %s, %s, %s, %s, %s) ON CONFLICT (tenant, id)"
                      " DO UPDATE SET customer = excluded.customer, plan = excluded.plan,"
                      " plan_version = excluded.plan_version, starts_at = excluded.starts_at,"
                      " ends_at = excluded.ends_at, minimum = excluded.minimum"
                      " WHERE (subscriptions.customer, subscriptions.plan, subscriptions.plan_version,"
                      " subscriptions.starts_at, subscriptions.ends_at, subscriptions.minimum)"
                      " IS DISTINCT FROM (excluded.customer, excluded.plan, excluded.plan_version,"
                      " excluded.starts_at, excluded.ends_at, excluded.minimum)"),
    "quotas": ('INSERT INTO quotas (tenant, subscription, metric, "limit", overage)'
               ' VALUES (%s, %s, %s, %s, %s) ON CONFLICT (tenant, subscription, metric) DO UPDATE SET'
               ' "limit" = excluded."limit", overage = excluded.overage WHERE (quotas."limit",'
               ' quotas.overage) IS DISTINCT FROM (excluded."limit", excluded.overage)'),
    "costs": ("INSERT INTO costs (tenant, metric, match, unit_cost) VALUES (%s, %s, %s, %s)"
              " ON CONFLICT (tenant, metric, match) DO UPDATE SET unit_cost = excluded.unit_cost"
              " WHERE costs.unit_cost IS DISTINCT FROM excluded.unit_cost"),
    "tax_rates": ("INSERT INTO tax_rates (tenant, id, name, percent, kind) VALUES (%s, %s, %s, %s, %s)"
                  " ON CONFLICT (tenant, id) DO UPDATE SET name = excluded.name, percent = excluded.percent,"
                  " kind = excluded.kind WHERE (tax_rates.name, tax_rates.percent, tax_rates.kind)"
                  " IS DISTINCT FROM (excluded.name, excluded.percent, excluded.kind)"),
    "coupons": ("INSERT INTO coupons (tenant, code, name, percent_off, amount_off, periods, charges)"
                " VALUES (%s, %s, %s, %s, %s, %s, %s) ON CONFLICT (tenant, code) DO UPDATE SET"
                " name = excluded.name, percent_off = excluded.percent_off, amount_off = excluded.amount_off,"
                " periods = excluded.periods, charges = excluded.charges"
                " WHERE (coupons.name, coupons.percent_off, coupons.amount_off, coupons.periods,"
                " coupons.charges) IS DISTINCT FROM (excluded.name, excluded.percent_off,"
                " excluded.amount_off, excluded.periods, excluded.charges)"),
    "redemptions": ("INSERT INTO coupon_redemptions (tenant, customer, coupon, from_period)"
                    " VALUES (%s, %s, %s, %s) ON CONFLICT (tenant, customer, coupon) DO UPDATE SET"
                    " from_period = excluded.from_period"
                    " WHERE coupon_redemptions.from_period IS DISTINCT FROM excluded.from_period"),
    # grants are appended only: a repeated file changes nothing, a changed grant is refused
    "credits": ("INSERT INTO credit_grants (tenant, id, customer, metric, units, from_period, source,"
                " granted_by) VALUES (%s, %s, %s, %s, %s, %s, 'catalog', 'catalog') ON CONFLICT DO NOTHING"),
}


def apply_catalog(conn: psycopg.Connection, catalog: Catalog) -> dict[str, int]:
    """Upsert everything in the file (entries not in it are kept); return rows changed per kind.

    A published plan version is immutable: different charges for an existing (tenant, plan,
    version) are refused, and nothing of the file is applied.
    """
    c = catalog
    rows = {
        "tenants": [(t.id, t.name, t.currency, t.idempotency_key) for t in c.tenants],
        "metrics": [(m.tenant, m.code, m.event_type, m.aggregation, m.value, Jsonb(m.group_by))
                    for m in c.metrics],
        "customers": [(x.tenant, x.id, x.name, x.tax_rate) for x in c.customers],
        "subscriptions": [(s.tenant, s.id, s.customer, s.plan, s.plan_version, s.start, s.end, s.minimum)
                          for s in c.subscriptions],
        "quotas": [(q.tenant, q.subscription, q.metric, q.limit, q.overage) for q in c.quotas],
        "costs": [(x.tenant, x.metric, Jsonb(x.match), x.unit_cost) for x in c.costs],
        "tax_rates": [(x.tenant, x.id, x.name, x.percent, x.kind) for x in c.tax_rates],
        "coupons": [(x.tenant, x.code, x.name, x.percent_off, x.amount_off, x.periods, Jsonb(x.charges))
                    for x in c.coupons],
        "redemptions": [(x.tenant, x.customer, x.coupon, x.from_period) for x in c.redemptions],
        "credits": [(x.tenant, x.id, x.customer, x.metric, x.units, x.from_period) for x in c.credits],
    }
    changed: dict[str, int] = {}
    try:
        with conn.transaction():
            conn.execute("LOCK TABLE catalog_state IN EXCLUSIVE MODE")
            for kind in ("tenants", "metrics", "tax_rates"):
                changed[kind] = _upsert(conn, kind, rows[kind])
            changed["plans"] = _publish_plans(conn, c)
            for kind in ("customers", "subscriptions", "quotas", "costs", "coupons", "redemptions"):
                changed[kind] = _upsert(conn, kind, rows[kind])
            _check_credits_unchanged(conn, c)
            changed["credits"] = _upsert(conn, "credits", rows["credits"])
            _check_block_quotas(conn)
            if any(changed.values()):
                conn.execute("UPDATE catalog_state SET version = version + 1")
    except psycopg.errors.ForeignKeyViolation as exc:
        raise CatalogError(f"the catalog refers to something that does not exist: "
                           f"{exc.diag.message_detail}") from None
    return changed


def _upsert(conn: psycopg.Connection, kind: str, rows: list[tuple]) -> int:
    n = 0
    with conn.cursor() as cur:
        for row in rows:
            cur.execute(_UPSERTS[kind], row)
            n += cur.rowcount
    return n


def _check_charges_fit_metrics(conn: psycopg.Connection, p) -> None:
    """Every charge prices a metric of its tenant; a matrix reads dimensions the metric groups by."""
    group_by = dict(conn.execute("SELECT code, group_by FROM metrics WHERE tenant = %s", (p.tenant,)))
    for charge in p.charges:
        metric = charge["metric"]
        if metric not in group_by:
            raise CatalogError(f"plan {p.tenant}/{p.code} version {p.version} prices metric {metric!r}, "
                               f"which tenant {p.tenant} does not have")
        missing = set(charge.get("dimensions", ())) - set(group_by[metric])
        if charge["model"] == "matrix" and missing:
            raise CatalogError(f"plan {p.tenant}/{p.code} version {p.version}: matrix dimensions "
                               f"{sorted(missing)} are not in metric {metric}'s group_by")


def _publish_plans(conn: psycopg.Connection, c: Catalog) -> int:
    n = 0
    for p in c.plans:
        _check_charges_fit_metrics(conn, p)
        cur = conn.execute(
            "INSERT INTO plans (tenant, code, version, currency, charges) VALUES (%s, %s, %s, %s, %s)"
            " ON CONFLICT DO NOTHING", (p.tenant, p.code, p.version, p.currency, Jsonb(p.charges)))
        if cur.rowcount:
            n += 1
            continue
        same = conn.execute(
            "SELECT charges = %s AND currency = %s FROM plans WHERE tenant = %s AND code = %s"
            " AND version = %s", (Jsonb(p.charges), p.currency, p.tenant, p.code, p.version)).fetchone()[0]
        if not same:
            raise CatalogError(
                f"plan {p.tenant}/{p.code} version {p.version} is published and immutable; "
                f"publish the new charges as version {_next_version(conn, p.tenant, p.code)}")
    return n


def _check_credits_unchanged(conn: psycopg.Connection, c: Catalog) -> None:
    for x in c.credits:
        row = conn.execute("SELECT customer, metric, units, from_period FROM credit_grants"
                           " WHERE tenant = %s AND id = %s", (x.tenant, x.id)).fetchone()
        if row is not None and row != (x.customer, x.metric, x.units, x.from_period):
            raise CatalogError(f"credit grant {x.tenant}/{x.id} is recorded and never changes; "
                               "grant more units under a new id")


def _check_block_quotas(conn: psycopg.Connection) -> None:
    """A `block` quota caps billable units; a percentage charge has none to cap."""
    row = conn.execute(
        "SELECT q.tenant, q.subscription, q.metric FROM quotas q"
        " JOIN subscriptions s ON (s.tenant, s.id) = (q.tenant, q.subscription)"
        " JOIN plans p ON (p.tenant, p.code, p.version) = (s.tenant, s.plan, s.plan_version)"
        " CROSS JOIN jsonb_array_elements(p.charges) ch"
        " WHERE q.overage = 'block' AND ch->>'metric' = q.metric AND ch->>'model' = 'percentage'"
        " ORDER BY 1, 2, 3 LIMIT 1").fetchone()
    if row is not None:
        raise CatalogError(f"quota {row[0]}/{row[1]}/{row[2]}: overage `block` caps units, but the "
                           "subscription's plan prices that metric by percentage; use `bill`")


def _next_version(conn: psycopg.Connection, tenant: str, code: str) -> int:
    return conn.execute("SELECT max(version) + 1 FROM plans WHERE tenant = %s AND code = %s",
                        (tenant, code)).fetchone()[0]


def show_catalog(conn: psycopg.Connection) -> dict:
    """The stored catalog in the file's own shape."""
    def rows(sql: str) -> list[dict]:
        return as_dicts(conn.execute(sql))
    return {
        "tenants": rows("SELECT id, name, currency, idempotency_key FROM tenants ORDER BY id"),
        "metrics": rows("SELECT tenant, code, event_type, aggregation, value_path AS value, group_by"
                        " FROM metrics ORDER BY tenant, code"),
        "plans": rows("SELECT tenant, code, version, currency, charges FROM plans"
                      " ORDER BY tenant, code, version"),
        "customers": rows("SELECT tenant, id, name, tax_rate FROM customers ORDER BY tenant, id"),
        "subscriptions": rows("SELECT tenant, id, customer, plan, plan_version, starts_at AS start,"
                              " ends_at AS end, minimum FROM subscriptions ORDER BY tenant, id"),
        "quotas": rows('SELECT tenant, subscription, metric, "limit", overage FROM quotas'
                       " ORDER BY tenant, subscription, metric"),
        "costs": rows("SELECT tenant, metric, match, unit_cost FROM costs ORDER BY tenant, metric"),
        "tax_rates": rows("SELECT tenant, id, name, percent, kind FROM tax_rates ORDER BY tenant, id"),
        "coupons": rows("SELECT tenant, code, name, percent_off, amount_off, periods, charges FROM coupons"
                        " ORDER BY tenant, code"),
        "redemptions": rows("SELECT tenant, customer, coupon, from_period FROM coupon_redemptions"
                            " ORDER BY tenant, customer, coupon"),
        "credits": rows("SELECT tenant, id, customer, metric, units, from_period FROM credit_grants"
                        " WHERE source = 'catalog' ORDER BY tenant, id"),
    }


# --- what the flow loads -----------------------------------------------------------------------

def catalog_state(conn: psycopg.Connection) -> tuple[str, int]:
    """(catalog id, version): caches are keyed on both."""
    return conn.execute("SELECT catalog_id, version FROM catalog_state").fetchone()


def load_tenants(conn: psycopg.Connection) -> dict[str, TenantInfo]:
    metrics: dict[str, dict[str, list[MetricDef]]] = {}
    for tenant, code, event_type, agg, path, group_by in conn.execute(
            "SELECT tenant, code, event_type, aggregation, value_path, group_by FROM metrics"
            " ORDER BY tenant, code"):
        metrics.setdefault(tenant, {}).setdefault(event_type, []).append(
            MetricDef(code, agg, path, tuple(group_by)))
    charges: dict[str, dict[tuple[str, int], dict]] = {}
    currencies: dict[str, dict[tuple[str, int], str]] = {}
    for tenant, code, version, currency, plan_charges in conn.execute(
            "SELECT tenant, code, version, currency, charges FROM plans"):
        charges.setdefault(tenant, {})[(code, version)] = {
            ch["metric"]: parse_charge(ch) for ch in plan_charges}
        currencies.setdefault(tenant, {})[(code, version)] = currency
    costs: dict[str, dict[str, list[CostRate]]] = {}
    for tenant, metric, match, unit_cost in conn.execute(
            "SELECT tenant, metric, match, unit_cost FROM costs"
            " ORDER BY tenant, metric, (SELECT count(*) FROM jsonb_object_keys(match)) DESC, match::text"):
        costs.setdefault(tenant, {}).setdefault(metric, []).append(CostRate(match, Decimal(unit_cost)))
    closed: dict[str, set[str]] = {}
    for tenant, period in conn.execute("SELECT tenant, period FROM closed_periods"):
        closed.setdefault(tenant, set()).add(period)
    return {
        tid: TenantInfo(
            id=tid, currency=currency, idempotency_key=key,
            metrics_by_type={t: tuple(ms) for t, ms in metrics.get(tid, {}).items()},
            charges=charges.get(tid, {}), plan_currency=currencies.get(tid, {}),
            costs={m: tuple(rates) for m, rates in costs.get(tid, {}).items()},
            closed_periods=frozenset(closed.get(tid, ())))
        for tid, currency, key in conn.execute("SELECT id, currency, idempotency_key FROM tenants")
    }


def load_entitlements(conn: psycopg.Connection,
                      wanted: Iterable[tuple[str, str]]) -> dict[tuple[str, str], Entitlement | None]:
    """Customers and their subscriptions for (tenant, subject) pairs, in one query."""
    wanted = list(wanted)
    found: dict[tuple[str, str], list[SubscriptionRef]] = {}
    rows = conn.execute(
        "SELECT c.tenant, c.id, s.id, s.plan, s.plan_version, s.starts_at, s.ends_at"
        " FROM unnest(%s::text[], %s::text[]) AS w(tenant, subject)"
        " JOIN customers c ON c.tenant = w.tenant AND c.id = w.subject"
        " LEFT JOIN subscriptions s ON s.tenant = c.tenant AND s.customer = c.id"
        " ORDER BY c.tenant, c.id, s.starts_at, s.id",
        ([t for t, _ in wanted], [s for _, s in wanted]))
    for tenant, customer, sid, plan, version, starts, ends in rows:
        subs = found.setdefault((tenant, customer), [])
        if sid is not None:
            subs.append(SubscriptionRef(sid, plan, version, to_us(starts),
                                        None if ends is None else to_us(ends)))
    return {key: (Entitlement(key[1], tuple(found[key])) if key in found else None) for key in wanted}
