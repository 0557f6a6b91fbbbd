"""Who is reading: the key behind a read request (Bearer header, or the console's session cookie)
and what of the data it may see.

A tenant key sees its tenant; an operator key sees every tenant (or the one it asks for); a
customer key sees only its own customer, through the portal. Every read route narrows its query
with `Viewer.tenant_scope` / `Viewer.customer_scope`, so a key can never read past its scope,
whatever it asks for.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated
from urllib.parse import urlsplit

from fastapi import Depends, Request

from api.auth import Bearer, live_key, unauthorized
from api.errors import ApiError
from api.keys import StoredKey
from api.services import Services, Svc
from api.sessions import COOKIE

# A cookie-authenticated request that changes something must carry this header: a cross-site
# form cannot set it and no CORS policy lets another origin's script send it.
CSRF_HEADER = "X-Aforo-Console"
_SAFE = frozenset({"GET", "HEAD", "OPTIONS"})


def from_another_site(request: Request) -> bool:
    """Whether the browser says this request comes from a page of another origin. Sign-in carries
    no cookie, so SameSite cannot guard it: another site's form could sign its visitor in with the
    attacker's key. Sec-Fetch-Site is the browser's own verdict (a proxy rewriting Host cannot
    spoil it); browsers without it send Origin, or at least Referer, on a form's POST. A request
    with none of them is no browser's form but a script's, as in Go's CrossOriginProtection."""
    site = request.headers.get("sec-fetch-site")
    if site is not None:
        return site not in ("same-origin", "none")  # "none": typed or bookmarked by the user
    origin = request.headers.get("origin") or request.headers.get("referer")
    if origin is None:
        return False
    return urlsplit(origin).netloc.lower() != request.headers.get("host", "").lower()  # "null" has none


@dataclass(frozen=True)
class Viewer:
    key_id: str
    scope: str  # tenant | operator | customer
    tenant: str | None  # None for an operator
    customer: str | None  # a customer key's customer

    @classmethod
    def of(cls, stored: StoredKey) -> Viewer:
        return cls(stored.id, stored.scope, stored.tenant, stored.customer)

    @property
    def operator(self) -> bool:
        return self.scope == "operator"

    def tenant_scope(self, requested: str | None) -> str | None:
        """The tenant to read: the operator's choice (None: every tenant), else the key's own;
        asking for another tenant is refused."""
        if self.operator:
            return requested or None
        if requested not in (None, "", self.tenant):
            raise ApiError(403, "forbidden", f"this key reads tenant {self.tenant!r} only")
        return self.tenant

    def one_tenant(self, requested: str | None) -> str:
        """As tenant_scope, for reads that are about one tenant (an operator must name it)."""
        tenant = self.tenant_scope(requested)
        if tenant is None:
            raise ApiError(400, "bad_request", "an operator key must name the tenant (?tenant=...)")
        return tenant

    def customer_scope(self, requested: str | None) -> str | None:
        """The customer to read: a customer key's own, else the one asked for (None: all)."""
        if self.scope != "customer":
            return requested or None
        if requested not in (None, "", self.customer):
            raise ApiError(403, "forbidden", f"this key reads customer {self.customer!r} only")
        return self.customer


async def session_viewer(svc: Services, token: str | None) -> Viewer | None:
    """The viewer of a console session cookie, or None (no cookie, expired, or key revoked)."""
    key_id = await svc.sessions.get(token) if token else None
    stored = await svc.keys.get(key_id) if key_id else None
    if stored is None or stored.revoked_at is not None:
        return None
    await svc.limiter.acquire(f"key:{stored.id}")
    return Viewer.of(stored)


async def viewer(request: Request, credentials: Bearer, svc: Svc) -> Viewer:
    """A Bearer key, else the console session; cookie-borne writes need the CSRF header."""
    if credentials is not None:
        return Viewer.of(await live_key(svc, credentials.credentials))
    found = await session_viewer(svc, request.cookies.get(COOKIE))
    if found is None:
        raise unauthorized()
    if request.method not in _SAFE and request.headers.get(CSRF_HEADER) != "1":
        raise ApiError(403, "forbidden",
                       f"a console request that changes something needs the {CSRF_HEADER} header")
    return found


async def tenant_viewer(found: Annotated[Viewer, Depends(viewer)]) -> Viewer:
    """Tenant and operator keys: the console's reads. Customer keys have the portal only."""
    if found.scope == "customer":
        raise ApiError(403, "forbidden", "a customer key reads its own usage only (/v1/portal)")
    return found


AnyViewer = Annotated[Viewer, Depends(viewer)]
TenantViewer = Annotated[Viewer, Depends(tenant_viewer)]
