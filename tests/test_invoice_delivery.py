"""Route: invoices delivered to a signed webhook (a real HTTP server verifying the signature as the
generic receiver does), a file directory and the invoices topic; a failing destination is retried
and recorded, never losing or doubling an invoice."""

from __future__ import annotations

import hashlib
import json
import threading
import time
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from billing_fixtures import END, PERIOD, START, cli, clock_past, event, on_time, send_at

import sinks.invoice_delivery
from api.webhooks.signatures import SignatureError, SignedRequest, verify_generic
from flows.metering import run
from sinks.postgres import connect

pytestmark = pytest.mark.integration
SECRET = "whsec-billing-test"


class Receiver:
    """An invoice webhook receiver: verifies the signature, answers the scripted status."""

    def __init__(self, failures: int):
        self.failures = failures
        self.accepted: list[tuple[str, bytes]] = []  # (Idempotency-Key, body) answered 200
        self.refused = 0
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                req = SignedRequest(f"http://{self.headers['Host']}{self.path}",
                                    {k.lower(): v for k, v in self.headers.items()}, body)
                try:
                    verify_generic(SECRET, req, time.time())
                except SignatureError as exc:
                    self.send_response(401)
                    self.end_headers()
                    self.wfile.write(str(exc).encode())
                    return
                if receiver.failures:
                    receiver.failures -= 1
                    receiver.refused += 1
                    self.send_response(503)
                    self.end_headers()
                    return
                receiver.accepted.append((self.headers["Idempotency-Key"], body))
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/invoices"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


@pytest.fixture
def receiver():
    r = Receiver(failures=3)
    yield r
    r.server.shutdown()


def test_a_failing_webhook_is_retried_and_recorded_and_each_invoice_arrives_once_signed(
        settings, receiver, tmp_path, monkeypatch):
    monkeypatch.setattr(sinks.invoice_delivery, "RETRY_DELAYS_S", (0.01, 0.01))
    times = [START + timedelta(hours=i) for i in range(130)]
    lines = [(event(f"d{i}", "cust-1", t), t) for i, t in enumerate(times)]
    send_at(settings, [*on_time(lines), clock_past(END)])
    run(settings, once=True)
    cli(settings, "invoice", "destinations", "add", "erp", "--tenant", "acme", "--webhook", receiver.url,
        "--secret", SECRET)
    cli(settings, "invoice", "destinations", "add", "archive", "--tenant", "acme", "--directory",
        str(tmp_path / "out"), "--formats", "json,pdf,html")
    assert "erp" in cli(settings, "invoice", "destinations", "list", "--tenant", "acme")

    first = cli(settings, "bill", "run", "--tenant", "acme", "--period", PERIOD, "--quiet", code=1)
    assert "delivery INV-2026-0001 -> erp: FAILED, will retry: " in first and "answered 503" in first
    assert "delivery INV-2026-0002 -> erp: delivered" in first  # the receiver is back after three refusals
    assert receiver.refused == 3
    with connect(settings.database_url) as conn:
        assert conn.execute("SELECT status, attempts, last_error IS NOT NULL FROM invoice_deliveries d"
                            " JOIN invoices i ON i.id = d.invoice_id WHERE number = 'INV-2026-0001'"
                            " AND destination = 'erp'").fetchone() == ("failed", 3, True)

    again = cli(settings, "bill", "run", "--tenant", "acme", "--period", PERIOD, "--quiet")
    assert "delivery INV-2026-0001 -> erp: delivered" in again and "already settled" in again
    third = cli(settings, "bill", "run", "--tenant", "acme", "--period", PERIOD, "--quiet")
    assert "delivery" not in third  # nothing left to deliver, nothing sent twice
    keys = [k for k, _ in receiver.accepted]
    assert sorted(keys) == ["INV-2026-0001", "INV-2026-0002", "INV-2026-0003"]
    for key, body in receiver.accepted:  # the body is the invoice's canonical document
        shown = json.loads(cli(settings, "invoice", "show", key, "--format", "json"))
        assert hashlib.sha256(body).hexdigest() == shown["digest"]
        assert {d["destination"]: d["status"] for d in shown["deliveries"]} == \
            {"archive": "delivered", "erp": "delivered", "kafka": "delivered"}
    out = tmp_path / "out"
    assert sorted(p.name for p in out.iterdir()) == sorted(
        f"INV-2026-000{i}.{f}" for i in (1, 2, 3) for f in ("json", "pdf", "html"))
    assert hashlib.sha256((out / "INV-2026-0001.json").read_bytes()).hexdigest() == \
        json.loads(cli(settings, "invoice", "show", "INV-2026-0001", "--format", "json"))["digest"]


def test_a_bad_secret_is_refused_by_the_receiver(settings, receiver, monkeypatch):
    monkeypatch.setattr(sinks.invoice_delivery, "RETRY_DELAYS_S", ())
    send_at(settings, [*on_time([(event("x", "cust-1", START), START)]), clock_past(END)])
    run(settings, once=True)
    cli(settings, "invoice", "destinations", "add", "erp", "--tenant", "acme", "--webhook", receiver.url,
        "--secret", "not-the-secret")
    out = cli(settings, "bill", "run", "--tenant", "acme", "--period", PERIOD, "--customer", "cust-1",
              "--quiet", code=1)
    assert "answered 401: signature does not match" in out and receiver.accepted == []
