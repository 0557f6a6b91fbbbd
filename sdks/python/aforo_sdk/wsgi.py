"""WSGI middleware: `app.wsgi_app = AforoWSGI(app.wsgi_app, client=aforo)` meters every request.

The route template comes from Flask's matched `url_rule` (read through Flask's public
`request_started` signal when the wrapped app is a Flask app's wsgi_app), from the `route`
callback (a function of the WSGI environ), or from aforo_sdk.set_route() inside the app."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from aforo_sdk import _context
from aforo_sdk._requests import RequestMeter


class AforoWSGI:
    def __init__(self, app: Callable, client: Any, *, route: Callable[[dict], str | None] | None = None,
                 **options: Any):
        self.app = app
        self.meter = RequestMeter(client, **options)
        self.route = route
        self._key = "HTTP_" + self.meter.header.upper().replace("-", "_")
        flask_app = getattr(app, "__self__", None)
        if flask_app is not None and type(flask_app).__module__.startswith("flask"):
            from flask import request_started
            request_started.connect(_record_flask_rule, flask_app, weak=False)

    def __call__(self, environ: dict, start_response: Callable) -> Iterable[bytes]:
        if self.meter.skipped(environ.get("PATH_INFO", ""), environ):
            return self.app(environ, start_response)
        started = time.perf_counter()
        request = _context.Scope(customer=environ.get(self._key) or _context.current().customer,
                                 agent=_context.current().agent)
        status = [500]

        def observe(status_line: str, headers: list, exc_info: Any = None) -> Callable:
            status[0] = int(status_line.split(" ", 1)[0])
            return start_response(status_line, headers, exc_info)

        def finish() -> None:
            if self.route is not None:
                request.route = self.route(environ) or request.route
            self.meter.finish(request, environ, environ.get("REQUEST_METHOD", "GET"), status[0], started)

        try:
            with _context.request_scope(request):
                body = self.app(environ, observe)
        except BaseException:
            finish()
            raise
        return _Body(body, finish)


class _Body:
    """The response iterable, metered when it is exhausted or closed, whichever comes first (so
    latency covers streaming; a test client may read a body without closing it)."""

    def __init__(self, body: Iterable[bytes], finish: Callable[[], None]):
        self._body = body
        self._finish = finish
        self._done = False

    def _once(self) -> None:
        if not self._done:
            self._done = True
            self._finish()

    def __iter__(self) -> Iterator[bytes]:
        yield from self._body
        self._once()

    def close(self) -> None:
        try:
            close = getattr(self._body, "close", None)
            if close is not None:
                close()
        finally:
            self._once()


def _record_flask_rule(_app: Any, **_extra: Any) -> None:
    from flask import request
    if request.url_rule is not None:
        _context.set_route(request.url_rule.rule)
