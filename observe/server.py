"""The small HTTP server a flow process (or the MCP proxy) runs next to its work, on
`--metrics-port`: `/metrics` (Prometheus), `/healthz` (the process is alive) and `/readyz`
(its services answer; 503 with the reasons when not). A daemon thread: it never keeps a
process alive, and a slow scrape never touches the dataflow's threads."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import orjson

from config import Settings
from observe.health import Readiness
from observe.metrics import exposition
from schemas.errors import AforoError

log = logging.getLogger("aforo.observe")

ReadyFn = Callable[[], tuple[bool, dict]]


class _Handler(BaseHTTPRequestHandler):
    server: ObservabilityServer

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        if path == "/metrics":
            body, content_type = exposition()
            self._send(200, body, content_type)
        elif path == "/healthz":
            self._json(200, {"status": "alive", "role": self.server.role,
                             "uptime_s": round(time.monotonic() - self.server.started, 1)})
        elif path == "/readyz":
            if self.server.ready is None:
                self._json(200, {"status": "ready", "checks": {}})
            else:
                ready, body = self.server.ready()
                self._json(200 if ready else 503, body)
        else:
            self._json(404, {"error": "not_found", "message": f"no route {path}; try /metrics, "
                                                              "/healthz or /readyz"})

    def _json(self, status: int, body: dict) -> None:
        self._send(status, orjson.dumps(body), "application/json")

    def _send(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass  # scrapes and probes every few seconds are not events of interest


class ObservabilityServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, host: str, port: int, role: str, ready: ReadyFn | None):
        super().__init__((host, port), _Handler)
        self.role = role
        self.ready = ready
        self.started = time.monotonic()


def start(host: str, port: int, role: str, ready: ReadyFn | None = None) -> ObservabilityServer:
    """Serve in a daemon thread; port 0 picks a free one (see server_address)."""
    try:
        server = ObservabilityServer(host, port, role, ready)
    except OSError as exc:
        raise AforoError(f"cannot serve metrics on {host}:{port}: {exc.strerror}") from None
    threading.Thread(target=server.serve_forever, name=f"aforo-{role}-metrics", daemon=True).start()
    log.info("metrics, health and readiness on http://%s:%d (/metrics, /healthz, /readyz)",
             host, server.server_address[1], extra={"role": role})
    return server


def start_for_flow(settings: Settings, port: int, role: str, *, ledger_gauges: bool) -> ObservabilityServer:
    """A flow process's server (AFORO_METRICS_HOST:port) with its readiness checks; with
    ledger_gauges, this process also refreshes the lag and held-events gauges (one process of a
    cluster should: see observe.ledger_gauges)."""
    server = start(settings.metrics_host, port, role, Readiness(settings).report)
    if ledger_gauges:
        from observe import ledger_gauges as gauges
        gauges.start(settings)
    return server
