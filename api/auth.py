"""Who is calling: the API key presented, its tenant and scope, and that key's rate limit."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Security
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


def unauthorized() -> ApiError:
    return ApiError(401, "unauthorized", "a valid API key is required (Authorization: Bearer afk_...)",
                    headers={"WWW-Authenticate": "Bearer"})


async def live_key(svc: Services, key: str | None) -> StoredKey:
    """The live stored key matching `key` (401 otherwise), within its rate limit."""
    key_id = key_id_of(key) if key else None
    stored = verify(await svc.keys.get(key_id), key) if key_id else None
    if stored is None:
        raise unauthorized()
    await svc.limiter.acquire(f"key:{stored.id}")
    return stored


async def authenticate(svc: Services, key: str | None) -> Caller:
    """A caller that sends events: only a tenant key does (operator and customer keys read)."""
    stored = await live_key(svc, key)
    if stored.scope != "tenant" or stored.tenant is None:
        raise ApiError(403, "forbidden", f"this is a {stored.scope} key, which only reads; "
                       "send events with a tenant key (aforo keys create --tenant T)")
    return Caller(stored.tenant, stored.id)


async def rest_caller(credentials: Bearer, svc: Svc) -> Caller:
    return await authenticate(svc, credentials.credentials if credentials else None)


async def gateway_caller(credentials: Bearer, access_key: FirehoseKey, svc: Svc) -> Caller:
    return await authenticate(svc, credentials.credentials if credentials else access_key)


RestCaller = Annotated[Caller, Depends(rest_caller)]
GatewayCaller = Annotated[Caller, Depends(gateway_caller)]
