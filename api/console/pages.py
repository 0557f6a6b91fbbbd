"""The console's pages: sign-in, the console pages, an event's provenance, an invoice, and the
customer portal. Each page renders the very models its JSON route returns (the routes' functions are
called directly), so the page and `/v1/...` cannot disagree. Signed in by session cookie only."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path
from urllib.parse import parse_qs, quote

from fastapi import APIRouter, Request, Response
from fastapi.responses import HTMLResponse, RedirectResponse
from fastapi.routing import APIRoute
from fastapi.templating import Jinja2Templates

from api.auth import live_key
from api.errors import ApiError
from api.routes.events import counters, one_event, recent
from api.routes.guide import guide
from api.routes.invoices import invoice, invoices
from api.routes.portal import portal
from api.routes.revenue import margins_route, revenue_summary_route
from api.routes.usage import alerts, quotas, usage_tiers
from api.services import Svc
from api.sessions import COOKIE, LIFETIME, create_session, end_session
from api.viewer import CSRF_HEADER, Viewer, from_another_site, session_viewer
from schemas.errors import AforoError
from sinks.console import tenant_names
from sinks.invoice_files import exact

HERE = Path(__file__).parent
STATIC = HERE / "static"
CHART_JS = "vendor/chart.js-4.5.1/chart.umd.min.js"
SWAGGER = "vendor/swagger-ui-5.32.0"
templates = Jinja2Templates(directory=HERE / "templates")
# an exact amount of the JSON (a string) as invoices print it: every digit, none trailing
templates.env.filters["exact"] = lambda amount: exact(Decimal(amount))
# Scripts, styles and data only from the console itself: it works offline and nothing injected runs.
CSP = ("default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
       "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'")

NAV = [("home", "/", "Revenue"), ("margins", "/margins", "Margins"), ("events", "/events", "Live events"),
       ("health", "/health", "Unit health"), ("alerts", "/alerts", "Alerts"),
       ("invoices", "/invoices", "Invoices"), ("guide", "/guide", "Integration")]


class _Redirect(Exception):
    def __init__(self, response: Response):
        self.response = response


def _to_login(request: Request) -> _Redirect:
    target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    return _Redirect(RedirectResponse(f"/login?next={quote(target, safe='')}", status_code=303))


async def _signed_in(request: Request, svc) -> Viewer:
    found = await session_viewer(svc, request.cookies.get(COOKIE))
    if found is None:
        raise _to_login(request)
    return found


async def _page(request: Request, svc, page: str, tenant: str | None, one_tenant: bool = False,
                customers: bool = False) -> dict:
    """The context every console page shares; customer keys are sent to their portal, except to
    the pages that serve it too (`customers`), which they see without the console's navigation."""
    viewer = await _signed_in(request, svc)
    if viewer.scope == "customer":
        if not customers:
            raise _Redirect(RedirectResponse("/portal", status_code=303))
        return {"viewer": viewer, "tenant": viewer.tenant, "tenants": [], "page": page, "nav": [],
                "csrf_header": CSRF_HEADER}
    scope = viewer.tenant_scope(tenant)
    tenants = await svc.db(tenant_names, None if viewer.operator else viewer.tenant)
    if scope is None and one_tenant and tenants:
        scope = tenants[0][0]  # a page about one tenant: an operator starts with the first
    return {"viewer": viewer, "tenant": scope, "tenants": tenants, "page": page, "nav": NAV,
            "csrf_header": CSRF_HEADER, "chart_js": CHART_JS}


def _render(request: Request, name: str, context: dict, status: int = 200) -> HTMLResponse:
    return templates.TemplateResponse(request, name, context, status_code=status)


class PageRoute(APIRoute):
    """A page answers a redirect to sign in, or an HTML error page (not the API's JSON), and
    carries the console's content security policy."""

    def get_route_handler(self):
        handler = super().get_route_handler()

        async def page(request: Request) -> Response:
            try:
                response = await handler(request)
            except _Redirect as redirect:
                return redirect.response
            except AforoError as exc:  # an unknown invoice (NotFound) as much as a refused key
                response = _render(request, "error.html", {"status": exc.http_status, "message": str(exc),
                                                           "nav": []}, exc.http_status)
            if request.url.path != "/docs":
                response.headers["Content-Security-Policy"] = CSP
            return response
        return page


router = APIRouter(include_in_schema=False, route_class=PageRoute)


def _data(model) -> object:
    return model.model_dump(mode="json", by_alias=True)


# --- sign in --------------------------------------------------------------------------------------

@router.get("/login", response_class=HTMLResponse)
async def login_form(request: Request, next: str = "/") -> HTMLResponse:
    return _render(request, "login.html", {"next": next if next.startswith("/") else "/", "nav": []})


@router.post("/login")
async def login(request: Request, svc: Svc) -> Response:
    form = parse_qs((await request.body()).decode("utf-8", "replace"))
    key = (form.get("key") or [""])[0].strip()
    target = (form.get("next") or ["/"])[0]
    target = target if target.startswith("/") and not target.startswith("//") else "/"
    if from_another_site(request):
        refused = ("Sign-in refused: the form was sent from another site, which could sign you in with"
                   " its own key. Sign in here, on this console's own page.")
        return _render(request, "login.html", {"next": target, "error": refused, "nav": []}, 403)
    try:
        stored = await live_key(svc, key)
    except ApiError as exc:
        message = "That key is not valid (or has been revoked)." if exc.http_status == 401 else exc.message
        return _render(request, "login.html", {"next": target, "error": message, "nav": []}, exc.http_status)
    token = await svc.db(create_session, stored.id)
    if stored.scope == "customer" and not target.startswith("/portal"):
        target = "/portal"
    response = RedirectResponse(target, status_code=303)
    response.set_cookie(COOKIE, token, max_age=int(LIFETIME.total_seconds()), httponly=True,
                        samesite="strict", secure=request.url.scheme == "https", path="/")
    return response


@router.post("/logout")
async def logout(request: Request, svc: Svc) -> Response:
    token = request.cookies.get(COOKIE)
    if token:
        await svc.db(end_session, token)
    response = RedirectResponse("/login", status_code=303)
    response.delete_cookie(COOKIE, path="/")
    return response


# --- the console --------------------------------------------------------------------------------

@router.get("/", response_class=HTMLResponse)
async def home(request: Request, svc: Svc, tenant: str | None = None) -> HTMLResponse:
    ctx = await _page(request, svc, "home", tenant)
    summary = await revenue_summary_route(ctx["viewer"], svc, ctx["tenant"])
    return _render(request, "home.html", {**ctx, "summary": summary, "data": _data(summary)})


@router.get("/margins", response_class=HTMLResponse)
async def margins_page(request: Request, svc: Svc, tenant: str | None = None,
                       period: str | None = None) -> HTMLResponse:
    ctx = await _page(request, svc, "margins", tenant)
    m = await margins_route(ctx["viewer"], svc, ctx["tenant"], period)
    return _render(request, "margins.html", {**ctx, "margins": m})


@router.get("/events", response_class=HTMLResponse)
async def events_page(request: Request, svc: Svc, tenant: str | None = None, status: str | None = None,
                      source: str | None = None) -> HTMLResponse:
    ctx = await _page(request, svc, "events", tenant)
    latest = await recent(ctx["viewer"], svc, ctx["tenant"], status, source, 100)
    c = await counters(ctx["viewer"], svc, ctx["tenant"])
    return _render(request, "events.html", {**ctx, "events": latest, "counters": c, "status": status or "",
                                            "source": source or ""})


@router.get("/events/view", response_class=HTMLResponse)
async def event_page(request: Request, svc: Svc, source: str, id: str, tenant: str | None = None,
                     fragment: bool = False) -> HTMLResponse:
    """One event's provenance; `fragment=1` is the panel the live stream opens in place."""
    ctx = await _page(request, svc, "events", tenant, one_tenant=True)
    event = await one_event(source, id, ctx["viewer"], svc, ctx["tenant"])
    return _render(request, "event_fragment.html" if fragment else "event.html", {**ctx, "event": event})


@router.get("/health", response_class=HTMLResponse)
async def health_page(request: Request, svc: Svc, tenant: str | None = None,
                      period: str | None = None) -> HTMLResponse:
    ctx = await _page(request, svc, "health", tenant)
    health = await usage_tiers(ctx["viewer"], svc, ctx["tenant"], period)
    return _render(request, "health.html", {**ctx, "health": health, "data": _data(health)})


@router.get("/alerts", response_class=HTMLResponse)
async def alerts_page(request: Request, svc: Svc, tenant: str | None = None,
                      kind: str | None = None) -> HTMLResponse:
    ctx = await _page(request, svc, "alerts", tenant)
    found = await alerts(ctx["viewer"], svc, ctx["tenant"], kind, None)
    q = await quotas(ctx["viewer"], svc, ctx["tenant"])
    return _render(request, "alerts.html", {**ctx, "alerts": found, "quotas": q, "kind": kind or ""})


@router.get("/guide", response_class=HTMLResponse)
async def guide_page(request: Request, svc: Svc, tenant: str | None = None) -> HTMLResponse:
    ctx = await _page(request, svc, "guide", tenant, one_tenant=True)
    g = await guide(request, ctx["viewer"], svc, ctx["tenant"])
    return _render(request, "guide.html", {**ctx, "guide": g})


@router.get("/invoices", response_class=HTMLResponse)
async def invoices_page(request: Request, svc: Svc, tenant: str | None = None, period: str | None = None,
                        customer: str | None = None) -> HTMLResponse:
    ctx = await _page(request, svc, "invoices", tenant, customers=True)
    found = await invoices(ctx["viewer"], svc, ctx["tenant"], period, customer)
    return _render(request, "invoices.html", {**ctx, "invoices": found, "period": period or "",
                                              "customer": customer or ""})


@router.get("/invoices/{number}", response_class=HTMLResponse)
async def invoice_page(request: Request, svc: Svc, number: str, tenant: str | None = None) -> HTMLResponse:
    """An invoice's lines; each usage line expands into the events behind it."""
    ctx = await _page(request, svc, "invoices", tenant, one_tenant=True, customers=True)
    found = await invoice(number, ctx["viewer"], svc, ctx["tenant"])
    return _render(request, "invoice.html", {**ctx, "inv": found})


# --- the customer portal ------------------------------------------------------------------------

@router.get("/portal", response_class=HTMLResponse)
async def portal_page(request: Request, svc: Svc, tenant: str | None = None,
                      customer: str | None = None) -> HTMLResponse:
    viewer = await _signed_in(request, svc)
    if viewer.scope != "customer" and not customer:
        raise ApiError(400, "bad_request", "name the customer whose portal to show (?customer=...)")
    p = await portal(viewer, svc, tenant if viewer.operator else None, customer)
    billed = await invoices(viewer, svc, p.tenant, None, p.customer)
    return _render(request, "portal.html", {"viewer": viewer, "portal": p, "invoices": billed, "nav": [],
                                            "page": "portal"})


# --- the OpenAPI docs, offline ------------------------------------------------------------------

@router.get("/docs", response_class=HTMLResponse)
async def docs(request: Request) -> HTMLResponse:
    return _render(request, "docs.html", {"swagger": SWAGGER})
