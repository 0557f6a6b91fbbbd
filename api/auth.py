"""Who is calling: the tenant of the API key presented, and that key's rate limit."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Security
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer

from api.errors import ApiError
from api.keys import key_id_of, verify
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


async def authenticate(svc: Services, key: str | None) -> Caller:
    unauthorized = ApiError(401, "unauthorized", "a valid API key is required "
                            "(Authorization: Bearer afk_...)", headers={"WWW-Authenticate": "Bearer"})
    key_id = key_id_of(key) if key else None
    if key_id is None:
        raise unauthorized
    tenant = verify(await svc.keys.get(key_id), key)
    if tenant is None:
        raise unauthorized
    await svc.limiter.acquire(f"key:{key_id}")
    return Caller(tenant, key_id)


async def rest_caller(credentials: Bearer, svc: Svc) -> Caller:
    return await authenticate(svc, credentials.credentials if credentials else None)


async def gateway_caller(credentials: Bearer, access_key: FirehoseKey, svc: Svc) -> Caller:
    return await authenticate(svc, credentials.credentials if credentials else access_key)


RestCaller = Annotated[Caller, Depends(rest_caller)]
GatewayCaller = Annotated[Caller, Depends(gateway_caller)]
