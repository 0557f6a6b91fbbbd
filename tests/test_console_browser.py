"""The web console in a real browser: Debian's chromium driven by Playwright, against the API on a
real socket, on the real stack, with the metering flow run as the user would (`run(once=True)`).

Every request the browser makes is checked to stay on the console's own origin (it works
offline). Screenshots of every page, at 1280x800 and at phone width, go to
test-output/screenshots/ (not committed).
"""

from __future__ import annotations

import json
import re
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlencode

import orjson
import pytest
from billing_fixtures import PERIOD, START, apply, send_at
from click.testing import CliRunner
from integration import env_of, meter_demo, send
from playwright.sync_api import BrowserContext, Page, expect, sync_playwright
from test_api_server import serving
from test_billing_run import TERMS, month_of_usage
from test_console_api import console_keys

from cli.main import main
from flows.billing import bill_run
from flows.metering import run
from operators.money import display
from operators.projection import Pace
from sinks.kafka import ensure_topics
from sinks.postgres import connect

pytestmark = pytest.mark.integration

CHROMIUM = "/usr/bin/chromium"  # Debian's package; `make test` installs it (Playwright's download cannot)
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]
DESKTOP, PHONE = {"width": 1280, "height": 800}, {"width": 390, "height": 844}
SHOTS = Path(__file__).resolve().parent.parent / "test-output" / "screenshots"
PAGES = ["/", "/margins", "/events", "/health", "/alerts", "/invoices", "/guide"]
ACME_ONLY = ("cust-1", "cust-2", "cust-3", "Umbrella", "Initech", "USD", "acme")


@pytest.fixture(scope="module")
def chromium() -> Iterator[BrowserContext]:
    with sync_playwright() as p, tempfile.TemporaryDirectory(prefix="aforo-chromium-") as profile:
        context = p.chromium.launch_persistent_context(profile, executable_path=CHROMIUM, headless=True,
                                                       args=ARGS, viewport=DESKTOP)
        yield context
        context.close()


class Console:
    """One signed-in browser session against one served installation."""

    def __init__(self, context: BrowserContext, base: str):
        self.context, self.base = context, base
        self.offsite: list[str] = []
        self.errors: list[str] = []
        context.clear_cookies()
        context.route("**/*", self._only_local)
        self.page = context.new_page()
        self.page.on("pageerror", lambda e: self.errors.append(str(e)))
        self.page.set_viewport_size(DESKTOP)

    def _only_local(self, route) -> None:
        if route.request.url.startswith(self.base):
            route.continue_()
        else:
            self.offsite.append(route.request.url)
            route.abort()

    def sign_in(self, key: str, path: str = "/") -> Page:
        """As a person does: the console sends them to sign in; the key field has the focus."""
        page = self.page
        page.goto(self.base + path)
        expect(page).to_have_url(re.compile(r"/login\?next="))
        expect(page.locator("#key")).to_be_focused()
        page.keyboard.type(key)
        with page.expect_navigation():  # the form's POST (and its redirect when the key is good)
            page.keyboard.press("Enter")
        return page

    def go(self, path: str) -> Page:
        self.page.goto(self.base + path)
        return self.page

    def shot(self, name: str, full_page: bool = True) -> None:
        SHOTS.mkdir(parents=True, exist_ok=True)
        self.page.screenshot(path=SHOTS / f"{name}.png", full_page=full_page)

    def close(self) -> None:
        self.context.unroute("**/*")
        self.page.close()
        assert not self.offsite, f"the console reached outside its origin: {self.offsite[:5]}"
        assert not self.errors, f"script errors: {self.errors[:5]}"


@pytest.fixture
def served(settings):
    """The demo stream metered, keys of each scope, the API served on a real socket."""
    ensure_topics(settings)
    meter_demo(settings, 400)
    keys = console_keys(settings)
    with serving(settings) as base:
        yield settings, base, keys


@pytest.fixture
def console(chromium, served):
    settings, base, keys = served
    c = Console(chromium, base)
    yield c, settings, keys
    c.close()


def _revenue_cli(settings) -> dict:
    out = CliRunner().invoke(main, ["revenue", "--tenant", "acme", "--format", "json"], env=env_of(settings))
    assert out.exit_code == 0, out.output
    return json.loads(out.output)


def _tile(page: Page, key: str) -> str:
    return page.locator(f'[data-currency="USD"] [data-tile="{key}"] [data-value]').inner_text()


def test_sign_in_and_the_tiles_match_aforo_revenue_to_the_cent(console):
    c, settings, keys = console
    page = c.sign_in("afk_0000000000000000_" + "x" * 43)
    expect(page.locator("#signin-error")).to_contain_text("not valid")
    page = c.sign_in(keys["acme"])
    expect(page).to_have_url(c.base + "/")
    before = _revenue_cli(settings)
    tiles = {k: _tile(page, k) for k in ("today", "period_to_date", "projected")}
    after = _revenue_cli(settings)
    for key, field in (("today", "today"), ("period_to_date", "period_to_date")):
        assert tiles[key] == display(Decimal(before[field]["USD"]), "USD") == \
            display(Decimal(after[field]["USD"]), "USD")
    # the projection moves with the clock by the minute: the page was read between the two runs
    assert tiles["projected"] in {display(Decimal(r["projected_end_of_period"]["USD"]), "USD")
                                  for r in (before, after)}
    table = CliRunner().invoke(main, ["revenue", "--tenant", "acme"], env=env_of(settings)).output
    assert tiles["today"] in table and tiles["period_to_date"] in table
    pace = Pace.of(before["period"], datetime.now(UTC))
    expect(page.locator("#period-day")).to_have_text(f"day {pace.day} of {pace.days}")
    expect(page.locator("[data-note]")).to_contain_text("flat and stairstep fees count once")
    assert page.locator("[data-spark]").count() == 3
    c.shot("home-1280")


@contextmanager
def another_site(page: str) -> Iterator[str]:
    """A web server of someone else's, serving `page`: at localhost, while the console is at
    127.0.0.1, so the browser treats it as another site."""
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.end_headers()
            self.wfile.write(page.encode())

        def log_message(self, *args) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://localhost:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()


def test_another_sites_form_cannot_sign_the_browser_in(chromium, settings):
    """Login CSRF: a page elsewhere posts the attacker's own key to the console's sign-in, so that
    the victim's test events and backfills would land in the attacker's tenant. The console
    refuses it and says why; a key typed on the console's own page still signs in."""
    ensure_topics(settings)
    keys = console_keys(settings)
    with serving(settings) as base, another_site(
            f'<form method="post" action="{base}/login"><input name="key" value="{keys["globex"]}">'
            '<input name="next" value="/guide"></form><script>document.forms[0].submit()</script>') as evil:
        chromium.clear_cookies()
        page = chromium.new_page()
        try:
            page.goto(evil)  # the form submits itself
            expect(page.locator("#signin-error")).to_contain_text("sent from another site")
            SHOTS.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=SHOTS / "login-refused-1280.png")
            # the victim then opens the console: not signed in to the attacker's tenant
            assert [c["name"] for c in chromium.cookies(base)] == []
            page.goto(base + "/guide")
            expect(page).to_have_url(base + "/login?next=%2Fguide")
            page.locator("#key").fill(keys["acme"])
            with page.expect_navigation(url=base + "/guide"):
                page.keyboard.press("Enter")
            expect(page.locator(".who")).to_contain_text("Tenant acme")
        finally:
            page.close()


def test_a_tile_whose_data_is_older_than_30_s_says_so(console):
    c, _settings, keys = console
    c.sign_in(keys["acme"])
    page = c.page
    page.clock.install()
    page.reload()
    page.route("**/v1/revenue/summary*", lambda route: route.abort())  # the next refresh fails
    page.clock.fast_forward("01:01")
    stale = page.locator('[data-tile="today"] [data-stale]')
    expect(stale).to_be_visible()
    expect(stale).to_contain_text("the last refresh failed")
    page.unroute("**/v1/revenue/summary*")
    page.clock.fast_forward("01:00")
    expect(stale).to_be_hidden()


def test_a_test_event_from_the_guide_lands_with_its_terminal_status(console):
    c, settings, keys = console
    page = c.sign_in(keys["acme"], "/guide")
    expect(page.locator("pre").first).to_contain_text(f"{c.base}/v1/events")
    page.get_by_role("button", name="Send a test event").click()
    status = page.locator("#verify-status")
    expect(status).to_contain_text("waiting for the pipeline")
    run(settings, once=True)  # what `aforo run` does continuously
    expect(status).to_have_attribute("data-status", "accepted", timeout=30_000)
    expect(status).to_contain_text("unmetered")
    with connect(settings.database_url) as conn:
        tier, reason, customer, digest = conn.execute(
            "SELECT tier, reason, customer, validation_hash FROM ledger WHERE source = 'aforo-console/test'"
        ).fetchone()
    assert (tier, reason, customer) == ("rest", "unmetered", "cust-1")
    expect(page.locator("#verify-facts")).to_contain_text(digest)
    c.shot("guide-1280")


def test_the_live_stream_counts_a_duplicate_and_opens_its_provenance(console):
    c, settings, keys = console
    page = c.sign_in(keys["acme"], "/events")
    expect(page.locator("#live-state")).to_have_text("live", timeout=30_000)
    duplicates = int(page.locator('[data-counter="duplicates"]').inner_text())
    event = orjson.dumps({"specversion": "1.0", "id": "dup-1", "source": "browser-test", "type": "api.call",
                          "subject": "cust-1", "tenantid": "acme", "time": datetime.now(UTC).isoformat()})
    send(settings, [event, event])
    run(settings, once=True)
    expect(page.locator('[data-counter="duplicates"]')).to_have_text(str(duplicates + 1), timeout=30_000)
    rows = page.locator("tr.event-row", has_text="dup-1")
    expect(rows).to_have_count(2)
    expect(rows.filter(has=page.locator(".badge.duplicate"))).to_have_count(1)
    with connect(settings.database_url) as conn:
        leakage = conn.execute(
            "SELECT sum(a.revenue) FROM ledger d JOIN dedup_claims c USING (dedup_key)"
            " JOIN ledger a ON (a.raw_topic_id, a.raw_partition, a.raw_offset)"
            "  = (c.raw_topic_id, c.raw_partition, c.raw_offset)"
            " WHERE d.status = 'duplicate' AND a.status = 'accepted' AND d.tenantid = 'acme'"
            " AND d.event_time >= date_trunc('day', now() AT TIME ZONE 'UTC') AT TIME ZONE 'UTC'"
        ).fetchone()[0]
        hashes = [h for (h,) in conn.execute("SELECT validation_hash FROM ledger WHERE event_id = 'dup-1'"
                                             " ORDER BY ingested_at, raw_partition, raw_offset")]
    expect(page.locator('[data-counter="leakage"]')).to_have_text(display(leakage, "USD"))
    c.shot("events-1280")

    rows.first.get_by_role("button", name="dup-1").click()
    dialog = page.locator("#provenance")
    expect(dialog).to_be_visible()
    expect(page.locator("#provenance-close")).to_be_focused()
    expect(dialog.locator("[data-final-status]")).to_have_attribute("data-final-status", "accepted")
    expect(dialog).to_contain_text("duplicate · same payload")
    expect(dialog).to_contain_text("idempotency: decided")
    expect(dialog).to_contain_text('"id":"dup-1"')  # the raw payload as received
    assert dialog.locator("[data-validation-hash]").all_inner_texts() == hashes
    c.shot("event-provenance-1280", full_page=False)
    page.keyboard.press("Escape")
    expect(dialog).to_be_hidden()

    page.get_by_role("button", name="Pause").click()
    send(settings, [event.replace(b"dup-1", b"held-1")])
    run(settings, once=True)
    expect(page.locator("#pause")).to_have_text("Resume (1 waiting)", timeout=30_000)
    expect(page.locator("tr.event-row", has_text="held-1")).to_have_count(0)
    page.locator("#pause").click()
    expect(page.locator("tr.event-row", has_text="held-1")).to_have_count(1)


def test_tenant_a_never_sees_tenant_b(console):
    c, settings, keys = console
    page = c.sign_in(keys["globex"])
    for path in PAGES:
        c.go(path)
        text = page.locator("main").inner_text() + page.locator("header").inner_text()
        assert not [w for w in ACME_ONLY if w in text], (path, [w for w in ACME_ONLY if w in text])
        assert "globex" in text, path
    for path in [*PAGES, "/events/view?source=demo/sdk&id=x"]:
        denied = page.request.get(c.base + path + ("&" if "?" in path else "?") + "tenant=acme")
        assert denied.status == 403, path
    for path in ["/v1/revenue/summary", "/v1/revenue/margins", "/v1/events", "/v1/events/counters",
                 "/v1/usage/tiers", "/v1/alerts", "/v1/quotas", "/v1/guide"]:
        own = page.request.get(c.base + path)  # the session cookie, as the page's scripts send it
        assert own.ok, path
        assert not [w for w in ACME_ONLY if w.encode() in own.body()], path
        assert page.request.get(c.base + path + "?tenant=acme").status == 403, path
    c.go("/events")
    expect(page.locator("#live-state")).to_have_text("live", timeout=30_000)
    send(settings, [orjson.dumps({"specversion": "1.0", "id": f"iso-{t}", "source": "iso", "type": "api.call",
                                  "subject": s, "tenantid": t, "time": datetime.now(UTC).isoformat()})
                    for t, s in (("acme", "cust-1"), ("globex", "cust-a"))])
    run(settings, once=True)
    expect(page.locator("tr.event-row", has_text="iso-globex")).to_have_count(1, timeout=30_000)
    expect(page.locator("tr.event-row", has_text="iso-acme")).to_have_count(0)


def test_the_portal_shows_one_customer_only(console):
    c, _settings, keys = console
    page = c.sign_in(keys["cust-2"])
    expect(page).to_have_url(c.base + "/portal")
    text = page.locator("main").inner_text()
    assert "Initech" in text and "cust-2" in text
    assert not [w for w in ("cust-1", "cust-3", "Umbrella", "Globex Labs", "sub-1", "cust-a") if w in text]
    expect(page.locator("[data-quota]")).to_have_count(1)
    expect(page.locator('[data-quota="sub-2/api_calls"]')).to_contain_text("limit 500")
    portal = page.request.get(c.base + "/v1/portal").json()
    expect(page.locator("[data-projected]")).to_have_text(portal["projected_bill"][0]["display"])
    c.shot("portal-1280")
    page.set_viewport_size(PHONE)
    c.shot("portal-390")
    c.go("/")
    expect(page).to_have_url(c.base + "/portal")  # console pages are not a customer's
    for path in ("/v1/revenue/margins", "/v1/events", "/v1/portal?customer=cust-1"):
        assert page.request.get(c.base + path).status == 403, path


_CONTRAST = """() => {
  const lum = (c) => { const [r, g, b] = c.match(/[\\d.]+/g).slice(0, 3).map(Number).map((v) => {
    v /= 255; return v <= 0.03928 ? v / 12.92 : ((v + 0.055) / 1.055) ** 2.4; });
    return 0.2126 * r + 0.7152 * g + 0.0722 * b; };
  const bg = (el) => { for (; el; el = el.parentElement) { const c = getComputedStyle(el).backgroundColor;
    if (!c.startsWith("rgba(0, 0, 0, 0)") && c !== "transparent") return c; } return "rgb(255, 255, 255)"; };
  const low = [];
  for (const el of document.querySelectorAll("main *, header *")) {
    const text = [...el.childNodes].some((n) => n.nodeType === 3 && n.textContent.trim());
    if (!el.offsetParent || !text) continue;
    const [a, b] = [lum(getComputedStyle(el).color), lum(bg(el))];
    const ratio = (Math.max(a, b) + 0.05) / (Math.min(a, b) + 0.05);
    const what = `${el.tagName}.${el.className} "${el.textContent.trim().slice(0, 30)}"`;
    if (ratio < 4.5) low.push(`${what}: ${ratio.toFixed(2)}`);
  }
  return low;
}"""
# What scrolls sideways: the page itself, or a box inside it (a table's wrapper); [] on a page
# that reads at its width.
_SIDEWAYS = """() => {
  const wide = [];
  if (document.documentElement.scrollWidth > window.innerWidth)
    wide.push(`the page: ${document.documentElement.scrollWidth} > ${window.innerWidth}`);
  for (const el of document.querySelectorAll("body *")) {
    if (el.offsetParent && ["auto", "scroll"].includes(getComputedStyle(el).overflowX)
        && el.scrollWidth > el.clientWidth)
      wide.push(`${el.tagName}.${el.className}: ${el.scrollWidth} > ${el.clientWidth}`);
  }
  return wide;
}"""
_UNLABELLED = """() => [...document.querySelectorAll("input:not([type=hidden]), select, textarea, button")]
  .filter((el) => el.offsetParent && !(el.labels && el.labels.length) && !el.getAttribute("aria-label")
                  && !el.getAttribute("aria-labelledby") && !el.textContent.trim())
  .map((el) => el.outerHTML.slice(0, 80))"""


def test_every_page_at_desktop_and_phone_width_is_labelled_and_legible(console):
    """An operator's console: every page rendered, looked at (screenshots), usable at 1280x800
    and at 390 px (nothing wider than the screen, nothing scrolling sideways), labelled controls,
    text contrast of at least 4.5:1, and the skip link first in the keyboard order."""
    c, _settings, keys = console
    page = c.sign_in(keys["operator"])
    for path in [*PAGES, "/?tenant=acme", "/docs"]:
        for size, label in ((DESKTOP, "1280"), (PHONE, "390")):
            page.set_viewport_size(size)
            c.go(path)
            page.wait_for_load_state("networkidle")
            name = (path.strip("/").replace("?", "-").replace("=", "-") or "home") + f"-operator-{label}"
            c.shot(name)
            if path == "/docs":
                expect(page.locator(".swagger-ui .info .title")).to_contain_text("Aforo", timeout=30_000)
                continue
            assert page.evaluate("document.documentElement.scrollWidth") <= size["width"], (path, label)
            assert page.evaluate(_SIDEWAYS) == [], (path, label)
            assert page.evaluate(_UNLABELLED) == [], path
            assert page.evaluate(_CONTRAST) == [], path
            page.keyboard.press("Tab")
            assert page.evaluate("document.activeElement.className") == "skip", path
    page.set_viewport_size(DESKTOP)

    c.go("/health?tenant=acme")
    expect(page.locator("[data-headline]").first).to_contain_text("of usage falls in tier")
    c.go("/alerts?tenant=acme")
    expect(page.locator("[data-quota]")).to_have_count(2)
    expect(page.locator('[data-quota="sub-2/api_calls"]')).to_contain_text("projected over the limit")
    c.go("/margins")
    page.get_by_role("button", name="Margin %").click()
    expect(page.locator("th[aria-sort]")).to_have_attribute("aria-sort", "ascending")
    shown = [Decimal(p) for p in page.locator("tbody.customer").evaluate_all(
        "(bodies) => bodies.map((b) => b.dataset.margin_percent)")]
    assert shown == sorted(shown) and len(shown) == 5  # the thinnest (or negative) margins first
    expand = page.locator("tbody.customer").first.locator("button.expand")
    expand.focus()
    page.keyboard.press("Enter")
    expect(expand).to_have_attribute("aria-expanded", "true")
    expect(page.locator("tbody.customer").first.locator("tr.detail").first).to_be_visible()


def test_margins_sort_at_phone_width(console):
    """At 390 px a customer is a block of label/value lines and the header row is gone, its sort
    buttons with it (Tab never lands on a button no one sees); a "Sort by" select sorts instead."""
    c, _settings, keys = console
    page = c.sign_in(keys["operator"], "/margins")
    page.set_viewport_size(PHONE)
    bodies = page.locator("tbody.customer")

    def shown(key: str) -> list[str]:
        return bodies.evaluate_all(f"(bs) => bs.map((b) => b.dataset.{key})")

    expect(bodies).to_have_count(5)
    listed = shown("customer")
    focused = []
    for _ in range(30):
        page.keyboard.press("Tab")
        focused.append(page.evaluate("document.activeElement.id || document.activeElement.className"))
    assert "sort" not in focused, "a hidden header's sort button takes the focus"
    assert "sort-by" in focused
    assert page.locator("#margins thead").is_hidden()
    sort_by = page.get_by_label("Sort by")
    sort_by.select_option(label="Customer, Z to A")
    assert shown("customer") == sorted(listed, reverse=True) != listed  # ids are unique: it moved
    expect(bodies.first).to_contain_text(sorted(listed)[-1])
    sort_by.select_option(label="Revenue, highest first")
    revenue = [Decimal(r) for r in shown("revenue")]
    assert revenue == sorted(revenue, reverse=True)
    sort_by.select_option(label="Margin %, lowest first")
    percent = [Decimal(p) for p in shown("margin_percent")]
    assert percent == sorted(percent)
    c.shot("margins-sorted-390")
    page.set_viewport_size(DESKTOP)  # the header sorts again; the select follows it
    expect(sort_by).to_be_hidden()
    page.get_by_role("button", name="Customer", exact=True).click()
    assert shown("customer") == sorted(listed)
    expect(sort_by).to_have_value("customer asc")


@pytest.fixture
def billed_console(chromium, settings):
    """acme's PERIOD metered and billed by a real bill run (INV-2026-0001..3), served, a browser."""
    apply(settings, TERMS)
    month_of_usage(settings)
    assert bill_run(settings, "acme", PERIOD).ok
    keys = console_keys(settings)
    with serving(settings) as base:
        c = Console(chromium, base)
        yield c, settings, keys
        c.close()


def test_an_invoice_opens_from_the_list_and_a_line_expands_into_its_events(billed_console):
    c, settings, keys = billed_console
    page = c.sign_in(keys["acme"])
    page.get_by_role("navigation").get_by_role("link", name="Invoices").click()
    expect(page).to_have_url(c.base + "/invoices")
    expect(page.locator("#invoices tbody tr")).to_have_count(3)
    expect(page.locator('tr[data-invoice="INV-2026-0001"]')).to_contain_text("5.40 USD")
    c.shot("invoices-acme-1280")
    page.get_by_role("link", name="INV-2026-0001").click()
    expect(page).to_have_url(c.base + "/invoices/INV-2026-0001")
    expect(page.locator("[data-invoice-total]")).to_have_text("5.40 USD")
    calls = page.locator('tbody.line[data-line="1"]')
    attribution = calls.locator("tr.attribution")
    expect(attribution).to_be_hidden()
    calls.get_by_role("button", name="Show the events behind line 1").click()
    expect(attribution).to_be_visible()
    expect(attribution.locator("[data-event-count]")).to_have_text("150")
    hashes = attribution.locator("[data-validation-hash]")
    expect(hashes).to_have_count(10)
    with connect(settings.database_url) as conn:
        ledger = {h for (h,) in conn.execute("SELECT validation_hash FROM ledger WHERE customer = 'cust-1'"
                                             " AND period = %s", (PERIOD,))}
    assert hashes.first.inner_text() in ledger
    attribution.get_by_role("button", name="Show more events").click()
    expect(hashes).to_have_count(60)
    expect(attribution.locator("[data-shown]")).to_have_text("60 of 150 shown")
    assert set(hashes.all_inner_texts()) <= ledger
    for size, label in ((DESKTOP, "1280"), (PHONE, "390")):
        page.set_viewport_size(size)
        c.shot(f"invoice-acme-{label}")
        assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth"), label
        assert page.evaluate(_SIDEWAYS) == [], label  # nothing scrolls sideways: the page reads at its width
        assert page.evaluate(_UNLABELLED) == [] and page.evaluate(_CONTRAST) == []
    page.set_viewport_size(PHONE)
    c.go("/invoices")
    c.shot("invoices-acme-390")
    assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
    assert page.evaluate(_SIDEWAYS) == []
    page.set_viewport_size(DESKTOP)
    missing = page.goto(c.base + "/invoices/INV-2026-0999")
    assert missing.status == 404
    expect(page.get_by_role("alert")).to_contain_text("no invoice INV-2026-0999")
    # another tenant's console: acme's invoice does not exist there
    c.context.clear_cookies()
    page = c.sign_in(keys["globex"], "/invoices/INV-2026-0001")
    expect(page.get_by_role("alert")).to_contain_text("no invoice INV-2026-0001 of tenant globex")
    assert "Globex Labs" not in page.locator("main").inner_text()  # acme's customer of that name


def test_a_customer_finds_its_own_invoices_in_the_portal(billed_console):
    c, _settings, keys = billed_console
    page = c.sign_in(keys["cust-2"])
    expect(page).to_have_url(c.base + "/portal")
    expect(page.locator("#portal-invoices tbody tr")).to_have_count(1)
    page.get_by_role("link", name="INV-2026-0002").click()
    expect(page).to_have_url(c.base + "/invoices/INV-2026-0002")
    expect(page.locator("h1")).to_have_text("Invoice INV-2026-0002")
    c.shot("invoice-portal-1280")
    assert page.goto(c.base + "/invoices/INV-2026-0001").status == 404  # cust-1's


HOSTILE = '"><img src=x onerror=alert(1)><script>alert(2)</script>\u202eevil\u200b' + "W" * 200  # no space


def test_hostile_names_ids_and_payloads_are_text_and_keep_the_layout(chromium, settings):
    """A customer name, an event's id, source and payload carrying markup, right-to-left and
    zero-width characters and 200 characters without a space: every page shows them as text
    (nothing injected runs or renders) and nothing scrolls sideways, at phone and desktop width."""
    apply(settings, TERMS)
    apply(settings, {"customers": [{"tenant": "acme", "id": "cust-1", "name": HOSTILE}]})
    at = START + timedelta(days=2)
    hostile = orjson.dumps({"specversion": "1.0", "id": HOSTILE, "source": f"x/{HOSTILE}", "type": "api.call",
                            "subject": "cust-1", "tenantid": "acme", "time": at.isoformat(),
                            "data": {"note": HOSTILE}})
    send_at(settings, [(hostile, at + timedelta(seconds=1))])
    month_of_usage(settings)
    assert bill_run(settings, "acme", PERIOD).ok
    keys = console_keys(settings)
    with serving(settings) as base:
        c = Console(chromium, base)
        dialogs = []
        c.page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
        page = c.sign_in(keys["acme"])
        event = "/events/view?" + urlencode({"source": f"x/{HOSTILE}", "id": HOSTILE})
        for path in (f"/margins?period={PERIOD}", "/invoices", "/invoices/INV-2026-0001", event,
                     "/portal?customer=cust-1"):
            for size in (PHONE, DESKTOP):
                page.set_viewport_size(size)
                assert page.goto(c.base + path).status == 200, path
                if path == "/invoices/INV-2026-0001":
                    page.get_by_role("button", name="Show the events behind line 1").click()
                    expect(page.locator("tr.attribution").first).to_contain_text(HOSTILE)
                if path != "/invoices":  # which names customers by id
                    expect(page.locator("main")).to_contain_text(HOSTILE)
                assert page.locator("main img, main script").count() == 0, path
                assert page.evaluate(_SIDEWAYS) == [], (path, size)
        c.shot("hostile-portal-1280")
        c.close()
    assert dialogs == []
