"""Over a real socket (uvicorn on loopback): the live tail of processed events, a large streamed
upload; and the `keys` and `webhooks` commands."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime

import httpx
import orjson
import pytest
import uvicorn
from click.testing import CliRunner
from integration import env_of
from test_api_helpers import new_key

from api.app import create_app
from api.services import ApiOptions
from api.stream import sse_frame
from cli.api_commands import keys, webhooks
from flows.metering import run
from sinks.kafka import ensure_topics
from sinks.postgres import connect


@contextmanager
def serving(settings) -> Iterator[str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    app = create_app(settings, ApiOptions(rate=1e6, burst=1e6))
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning",
                                           timeout_graceful_shutdown=5))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "uvicorn did not start"
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(30)


def _event(event_id: str, subject: str) -> dict:
    return {"specversion": "1.0", "id": event_id, "source": "sdk/live", "type": "api.call",
            "subject": subject, "time": datetime.now(UTC).isoformat()}


def test_sse_frames_only_for_the_tenant():
    message = orjson.dumps({"status": "accepted", "reason": None, "event": {"tenantid": "acme", "id": "1"}})
    frame = sse_frame("raw/0/1", message, "acme")
    assert frame == b"id: raw/0/1\nevent: accepted\ndata: " + message + b"\n\n"
    assert sse_frame("raw/0/1", message, "acm") is None
    assert sse_frame("raw/0/2", orjson.dumps({"status": "rejected", "raw_b64": "eA=="}), "acme") is None
    assert sse_frame("raw/0/3", b"not json", "acme") is None


@pytest.mark.integration
def test_live_tail_streams_the_tenants_processed_events(settings):
    ensure_topics(settings)
    _, acme = new_key(settings, "acme")
    _, globex = new_key(settings, "globex")
    frames: list[bytes] = []
    ready = threading.Event()

    with serving(settings) as base, httpx.Client(base_url=base, timeout=60) as client:
        def tail() -> None:
            with client.stream("GET", "/v1/events/stream", headers={"Authorization": f"Bearer {acme}"}) as r:
                assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
                for line in r.iter_lines():
                    ready.set()
                    frames.append(line.encode())
                    if sum(f.startswith(b"data:") for f in frames) == 3:  # `ready`, then two events
                        return

        reader = threading.Thread(target=tail, daemon=True)
        reader.start()
        assert ready.wait(60)
        for key, events in ((acme, [_event("live-1", "cust-1"), _event("live-2", "nobody")]),
                            (globex, [_event("other", "cust-a")])):
            r = client.post("/v1/events", json=events, headers={"Authorization": f"Bearer {key}"})
            assert r.status_code == 202, r.text
        run(settings, once=True)
        reader.join(60)
        assert not reader.is_alive(), f"the stream did not deliver: {frames}"

    assert frames[:3] == [b": tailing", b"", b"event: ready"]
    data = [orjson.loads(f[len(b"data: "):]) for f in frames if f.startswith(b"data:")][1:]
    # two output topics: no order between them; globex's event never reaches acme's stream
    assert sorted((d["event"]["id"], d["status"], d["provenance"]["tier"]) for d in data) == [
        ("live-1", "accepted", "rest"), ("live-2", "unresolved", "rest")]
    assert b"event: accepted" in frames and b"event: unresolved" in frames


@pytest.mark.integration
def test_large_upload_is_streamed_over_http(settings):
    ensure_topics(settings)
    _, key = new_key(settings, "acme")
    rows = 20_000
    now = datetime.now(UTC).isoformat()
    line = (b'{"specversion":"1.0","id":"big-%d","source":"bulk","type":"api.call","subject":"cust-1",'
            b'"time":"' + now.encode() + b'","data":{"pad":"' + b"x" * 200 + b'"}}\n')

    def body():
        for i in range(0, rows, 1000):
            yield b"".join(line.replace(b"%d", str(n).encode()) for n in range(i, i + 1000))

    with serving(settings) as base, httpx.Client(base_url=base, timeout=120) as client:
        r = client.post("/v1/uploads", content=body(), params={"format": "ndjson"},
                        headers={"Authorization": f"Bearer {key}"})
    assert r.status_code == 202, r.text
    assert (r.json()["rows"], r.json()["produced"], r.json()["bad_rows"]) == (rows, rows, 0)


@pytest.mark.integration
def test_keys_and_webhooks_commands(settings, tmp_path):
    runner, env = CliRunner(), env_of(settings)
    created = runner.invoke(keys, ["create", "--tenant", "acme"], env=env)
    assert created.exit_code == 0, created.output
    key_id = created.output.split("key id:")[1].split()[0]
    assert runner.invoke(keys, ["create", "--tenant", "nobody"], env=env).exit_code != 0
    listed = runner.invoke(keys, ["list"], env=env).output
    assert key_id in listed and "afk_" not in listed
    assert runner.invoke(keys, ["revoke", key_id], env=env).exit_code == 0
    assert runner.invoke(keys, ["revoke", key_id], env=env).exit_code != 0

    mapping = tmp_path / "mapping.json"
    mapping.write_text('{"id": "$.event_id", "type": "usage", "subject": "$.account", "data": {"n": "$.n"}}')
    added = runner.invoke(webhooks, ["add", "usage-feed", "--provider", "generic", "--tenant", "acme",
                                     "--secret", "s3cret", "--mapping", str(mapping)], env=env)
    assert added.exit_code == 0 and "/v1/webhooks/generic/usage-feed" in added.output, added.output
    assert runner.invoke(webhooks, ["add", "stripe-acme", "--provider", "stripe", "--tenant", "acme"],
                         input="whsec_x\n", env=env).exit_code == 0  # secret prompted, template mapping
    assert runner.invoke(webhooks, ["add", "usage-feed", "--provider", "generic", "--tenant", "acme",
                                    "--secret", "x"], env=env).exit_code != 0  # exists
    bad = tmp_path / "bad.json"
    bad.write_text('{"type": "$.t"}')
    refused = runner.invoke(webhooks, ["add", "x", "--provider", "generic", "--tenant", "acme",
                                       "--secret", "x", "--mapping", str(bad)], env=env)
    assert refused.exit_code != 0 and "needs id" in refused.output
    listed = runner.invoke(webhooks, ["list"], env=env).output
    assert "usage-feed" in listed and "stripe-acme" in listed and "s3cret" not in listed
    assert '"$.data.object.amount"' in runner.invoke(webhooks, ["template", "stripe"], env=env).output
    assert runner.invoke(webhooks, ["remove", "usage-feed"], env=env).exit_code == 0
    with connect(settings.database_url) as conn:
        assert conn.execute("SELECT name FROM webhook_sources").fetchall() == [("stripe-acme",)]
