"""The one error shape of the API: `{"error": code, "message": text, ...}` with a 4xx status."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

from schemas.errors import AforoError


class ApiError(AforoError):
    """A refusal only the API makes, with its HTTP status; `extra` fields are added to the JSON
    body. Answered by the one AforoError handler (api/app.py), like every other AforoError."""

    def __init__(self, status: int, code: str, message: str, *,
                 headers: dict[str, str] | None = None, **extra: object):
        super().__init__(message)
        self.http_status, self.code, self.message = status, code, message
        self.headers = headers
        self.extra = extra

    def body(self) -> dict[str, object]:
        return {**super().body(), **self.extra}


class ErrorBody(BaseModel):
    """Every 4xx/5xx answer of the API."""

    model_config = ConfigDict(extra="allow")
    error: str
    message: str


def bad_request(message: str, **extra: object) -> ApiError:
    return ApiError(400, "bad_request", message, **extra)


def too_large(message: str) -> ApiError:
    return ApiError(413, "too_large", message)


_DESCRIPTIONS = {
    400: "Structurally broken input (not JSON, wrong shape); the message names the problem",
    401: "Missing or invalid credentials or signature, or a stale signed request",
    403: "An event names another tenant than the caller's, or the key's scope does not allow this",
    404: "Not found",
    413: "Body or batch too large",
    415: "Unsupported Content-Type or Content-Encoding",
    429: "Rate limit of this source exceeded; see Retry-After",
    503: "The broker did not acknowledge every record, or a backing service is unavailable",
}


def documented(*statuses: int) -> dict[int | str, dict]:
    """OpenAPI `responses` entries for the given error statuses."""
    return {s: {"model": ErrorBody, "description": _DESCRIPTIONS[s]} for s in statuses}
