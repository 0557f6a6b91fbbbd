"""Who is calling: the API key presented, its tenant and scope, and that key's rate limit."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request, Security
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer

from api.errors import ApiError
from api.keys import StoredKey, key_id_of, verify
from api.services import Services, Svc

bearer = HTTPBearer(auto_error=False, scheme_name="ApiKey",
                    description="A tenant API key from `aforo keys create`: `Authorization: Bearer afk_...`")
# Kinesis Data Firehose sends its configured access key in this header (AWS gateway adapter).
firehose_key = APIKeyHeader(name="X-Amz-Firehose-Access-Key", auto_error=False,
                            scheme_name="FirehoseAccessKey")
Bearer = Annotated[HTTPAuthorizationCredentials | None, Security(bearer)]
FirehoseKey = Annotated[str | None, Security(firehose_key)]


@dataclass(frozen=True)
class Caller:
    tenant: str
    key_id: str


BEARER = "Authorization: Bearer afk_..."


def unauthorized(where: str = BEARER) -> ApiError:
    return ApiError(401, "unauthorized", f"a valid API key is required ({where})",
                    headers={"WWW-Authenticate": "Bearer"})


async def live_key(svc: Services, key: str | None, where: str = BEARER) -> StoredKey:
    """The live stored key matching `key` (a 401 saying `where` it goes otherwise), within its
    rate limit."""
    key_id = key_id_of(key) if key else None
    stored = verify(await svc.keys.get(key_id), key) if key_id else None
    if stored is None:
        raise unauthorized(where)
    await svc.limiter.acquire(f"key:{stored.id}")
    return stored


async def authenticate(svc: Services, key: str | None, where: str = BEARER) -> Caller:
    """A caller that sends events: only a tenant key does (operator and customer keys read)."""
    stored = await live_key(svc, key, where)
    if stored.scope != "tenant" or stored.tenant is None:
        raise ApiError(403, "forbidden", f"this is a {stored.scope} key, which only reads; "
                       "send events with a tenant key (aforo keys create --tenant T)")
    return Caller(stored.tenant, stored.id)


async def rest_caller(credentials: Bearer, svc: Svc) -> Caller:
    return await authenticate(svc, credentials.credentials if credentials else None)


async def gateway_caller(request: Request, credentials: Bearer, access_key: FirehoseKey, svc: Svc) -> Caller:
    # Firehose sends its HTTP endpoint's access key in its own header, never Authorization.
    where = ("X-Amz-Firehose-Access-Key: afk_... (the stream's HTTP endpoint access key)"
             if "x-amz-firehose-request-id" in request.headers else BEARER)
    return await authenticate(svc, credentials.credentials if credentials else access_key, where)


RestCaller = Annotated[Caller, Depends(rest_caller)]
GatewayCaller = Annotated[Caller, Depends(gateway_caller)]
