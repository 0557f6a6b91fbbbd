"""What the SDK suites (sdks/*) run against: a real `aforo serve` and `aforo run` on the test's own
stack, a fault-injecting HTTP proxy in front of it, and a local server that answers like the
OpenAI and Anthropic APIs (their documented response shapes, streamed and not). The suites get
them through environment variables (see `suite_env`). (No tests here.)

The fault proxy forwards `POST /v1/events` to the real server unless told otherwise:
`POST /_faults {"faults": [...], "retry_after": "1"}` queues one action per coming request:
`503` / `429` (answer without forwarding, with Retry-After), `400` (a refusal), `drop` (close the
connection unanswered), `ack_lost` (forward, then answer 503: the events are in Aforo but the
client does not know, so its retry must be a duplicate). `GET /_log` lists each request: when,
the action, the answer, its Aforo-SDK header and its events; `POST /_reset` clears both.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import ClassVar

import httpx
from integration import env_of

import config
from api.keys import create_key
from sinks.kafka import ensure_topics
from sinks.postgres import connect

LLM_FIXTURES = Path(__file__).parent / "fixtures" / "llm"
BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args: object) -> None:  # quiet: pytest shows what matters
        pass

    def _body(self) -> bytes:
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _answer(self, status: int, body: bytes, headers: dict[str, str] | None = None,
                content_type: str = "application/json") -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)


# --- the fault proxy ------------------------------------------------------------------------------

class FaultProxy(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, upstream: str):
        super().__init__(("127.0.0.1", free_port()), _ProxyHandler)
        self.upstream = upstream
        self.http = httpx.Client(timeout=60)
        self.lock = threading.Lock()
        self.faults: list[str] = []
        self.retry_after = "1"
        self.log: list[dict] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _ProxyHandler(_Handler):
    server: FaultProxy

    def do_GET(self) -> None:
        if self.path == "/_log":
            with self.server.lock:
                self._answer(200, json.dumps(self.server.log).encode())
            return
        self._forward(b"")

    def do_POST(self) -> None:
        body = self._body()
        s = self.server
        if self.path == "/_faults":
            doc = json.loads(body)
            with s.lock:
                s.faults = list(doc.get("faults", []))
                s.retry_after = str(doc.get("retry_after", "1"))
            self._answer(200, b"{}")
            return
        if self.path == "/_reset":
            with s.lock:
                s.faults, s.log = [], []
            self._answer(200, b"{}")
            return
        with s.lock:
            fault = s.faults.pop(0) if s.faults and self.path == "/v1/events" else "pass"
            entry = {"t": time.time(), "fault": fault, "sdk": self.headers.get("Aforo-SDK"),
                     "user_agent": self.headers.get("User-Agent"), "events": _events(body)}
            s.log.append(entry)
        if fault == "drop":
            entry["status"] = None
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)
            return
        if fault in ("503", "429", "400"):
            entry["status"] = int(fault)
            retry = {"Retry-After": s.retry_after} if fault != "400" else {}
            self._answer(int(fault), json.dumps({"error": "injected", "message": f"fault {fault}"}).encode(),
                         retry)
            return
        status = self._forward(body, lost=fault == "ack_lost")
        entry["status"] = status

    def _forward(self, body: bytes, lost: bool = False) -> int:
        headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "content-length")}
        r = self.server.http.request(self.command, self.server.upstream + self.path, content=body,
                                     headers=headers)
        if lost and r.status_code == 202:
            self._answer(503, b'{"error":"injected","message":"acknowledged, answer lost"}',
                         {"Retry-After": self.server.retry_after})
            return 503
        self._answer(r.status_code, r.content, content_type=r.headers.get("content-type", "application/json"))
        return r.status_code


def _events(body: bytes) -> list[dict]:
    try:
        doc = json.loads(body)
    except ValueError:
        return []
    return doc if isinstance(doc, list) else [doc]


# --- the LLM provider stand-in ----------------------------------------------------------------------

class FakeLLM(ThreadingHTTPServer):
    """OpenAI's /v1/chat/completions and /v1/responses, Anthropic's /v1/messages, answered from
    tests/fixtures/llm (documented shapes); a chat stream ends with the usage chunk only when the
    request asked for it, as OpenAI does. `GET /_requests` lists the request bodies."""

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", free_port()), _LLMHandler)
        self.requests: list[dict] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _LLMHandler(_Handler):
    server: FakeLLM
    FILES: ClassVar[dict[str, str]] = {
        "/v1/chat/completions": "openai_chat", "/v1/responses": "openai_responses",
        "/v1/messages": "anthropic_messages"}

    def do_GET(self) -> None:
        self._answer(200, json.dumps(self.server.requests).encode())

    def do_POST(self) -> None:
        request = json.loads(self._body() or b"{}")
        self.server.requests.append({"path": self.path, "body": request})
        name = self.FILES.get(self.path.split("?")[0])
        if name is None:
            self._answer(404, b'{"error": {"message": "no such route"}}')
            return
        if not request.get("stream"):
            self._answer(200, (LLM_FIXTURES / f"{name}.json").read_bytes())
            return
        frames = (LLM_FIXTURES / f"{name}.sse").read_text().split("\n\n")
        if name == "openai_chat" and not (request.get("stream_options") or {}).get("include_usage"):
            frames = [f for f in frames if '"choices":[]' not in f]
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Connection", "close")
        self.end_headers()
        for frame in frames:
            if frame.strip():
                self.wfile.write(frame.strip().encode() + b"\n\n")
                self.wfile.flush()
        self.close_connection = True


@contextmanager
def background(server: ThreadingHTTPServer) -> Iterator[ThreadingHTTPServer]:
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


# --- a real Aforo ---------------------------------------------------------------------------------

@dataclass
class Aforo:
    settings: config.Settings
    url: str
    key: str  # tenant acme
    ai_key: str  # tenant nimbus (the AI plan)
    proxy: FaultProxy
    llm: FakeLLM

    def suite_env(self, **extra: str) -> dict[str, str]:
        return {**os.environ, "AFORO_TEST_ENDPOINT": self.url, "AFORO_TEST_API_KEY": self.key,
                "AFORO_TEST_AI_API_KEY": self.ai_key, "AFORO_TEST_PROXY": self.proxy.url,
                "AFORO_TEST_LLM": self.llm.url, **extra}


def _wait_until_up(url: str, proc: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"aforo serve exited ({proc.returncode}):\n{log.read_text()[-3000:]}")
        try:
            if httpx.get(url + "/openapi.json", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"aforo serve did not answer within 90 s:\n{log.read_text()[-3000:]}")


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


@contextmanager
def running_aforo(settings: config.Settings, logs: Path) -> Iterator[Aforo]:
    """`aforo serve` and `aforo run` as processes on the test's topics and database, an API key
    per tenant, the fault proxy and the LLM stand-in."""
    ensure_topics(settings)
    with connect(settings.database_url) as conn:
        key = create_key(conn, "acme")[1]
        ai_key = create_key(conn, "nimbus")[1]
    env = env_of(settings)
    port = free_port()
    logs.mkdir(parents=True, exist_ok=True)
    with open(logs / "serve.log", "wb") as serve_log, open(logs / "run.log", "wb") as run_log:
        serve = subprocess.Popen([str(BIN / "aforo"), "serve", "--port", str(port), "--rate", "100000",
                                  "--burst", "100000"], env=env, stdout=serve_log, stderr=subprocess.STDOUT)
        flow = subprocess.Popen([str(BIN / "aforo"), "run"], env=env, stdout=run_log,
                                stderr=subprocess.STDOUT)
        try:
            url = f"http://127.0.0.1:{port}"
            _wait_until_up(url, serve, logs / "serve.log")
            with background(FaultProxy(url)) as proxy, background(FakeLLM()) as llm:
                yield Aforo(settings, url, key, ai_key, proxy, llm)
        finally:
            _stop(serve)
            _stop(flow)


def run_suite(argv: list[str], cwd: Path, env: dict[str, str], timeout_s: float = 900) -> str:
    """Run a language's test command; its output is the assertion message when it fails."""
    done = subprocess.run(argv, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          timeout=timeout_s, check=False)
    output = done.stdout.decode(errors="replace")
    assert done.returncode == 0, f"{' '.join(argv)} failed ({done.returncode}):\n{output[-20000:]}"
    return output


def main() -> None:
    """`python tests/sdk_harness.py`: a throwaway stack with all of the above, for working on an
    SDK's tests directly; prints the variables to export, runs until interrupted."""
    import tempfile

    from cli.demo import demo_catalog
    from schemas.catalog import Catalog
    from sinks.catalog import apply_catalog
    from sinks.postgres import migrate
    from stack.embedded import temporary

    home = Path(tempfile.mkdtemp(prefix="aforo-sdk-harness-"))
    with temporary(config.load(), home) as settings:
        migrate(settings.database_url)
        with connect(settings.database_url) as conn:
            apply_catalog(conn, Catalog.model_validate(demo_catalog()))
        with running_aforo(settings, home / "logs") as aforo:
            for k, v in aforo.suite_env().items():
                if k.startswith("AFORO_TEST_"):
                    print(f"export {k}={v}", flush=True)
            with contextlib.suppress(KeyboardInterrupt):
                threading.Event().wait()


if __name__ == "__main__":
    main()
