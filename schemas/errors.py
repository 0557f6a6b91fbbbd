"""The errors an operator or an API caller causes and can fix, and what each kind means to the
CLI (exit code) and to the API (HTTP status and error code).

Every such error derives from AforoError. The CLI (`cli/errors.py`) and the API (`api/app.py`)
each map them in one place, from these attributes: a command or a route raises the error that
says what went wrong and never picks an exit code or a status itself. Here, below every other
layer, so operators, sinks, the stack, the API and the CLI can all raise them.
"""

from __future__ import annotations


class AforoError(Exception):
    """A mistake or a missing piece the message explains in one line (the input is wrong, a
    name is unknown, a period is closed...). The message is shown as is: no traceback."""

    exit_code = 1
    http_status = 400
    code = "bad_request"
    headers: dict[str, str] | None = None
    details: tuple[str, ...] = ()  # more lines the CLI prints under the message (e.g. bad rows)

    def body(self) -> dict[str, object]:
        """The API's JSON error shape."""
        return {"error": self.code, "message": str(self)}


class Forbidden(AforoError):
    """The caller may not do this (e.g. a tenant key asking for an operator's action)."""

    http_status = 403
    code = "forbidden"


class NotFound(AforoError):
    http_status = 404
    code = "not_found"


class Conflict(AforoError):
    """The request is well formed but contradicts the state (e.g. a closed period)."""

    http_status = 409
    code = "conflict"


class Unavailable(AforoError):
    """A service Aforo needs is not configured or cannot be reached: start it, or point Aforo
    at it. Exit code 2, so scripts can tell it from a refused request."""

    exit_code = 2
    http_status = 503
    code = "unavailable"

    def __init__(self, message: str):
        super().__init__(message)
        self.headers = {"Retry-After": "5"}
