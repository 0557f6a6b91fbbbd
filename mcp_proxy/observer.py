"""Pure observer of one MCP session: fed copies of the JSON-RPC messages each way, it returns the
metering events they complete. The relays forward the original bytes before calling it, so
nothing here can alter or delay what the client and the server see."""

from __future__ import annotations

import uuid
from collections import Counter
from dataclasses import dataclass, field

import orjson

from mcp_proxy.events import SESSION_END, SESSION_START, TOOL_CALL, Identity, cloudevent, jsonrpc_id_key
from observe.metrics import MCP_SESSIONS, MCP_TOOL_CALLS
from schemas import exact_json

OUTCOMES = ("ok", "tool_error", "protocol_error", "cancelled", "timeout")


def _float_id(doc: object) -> bool:
    """Whether a message's id (or the request id it cancels) was read as a binary float: orjson
    reads a number with a fraction or an exponent, or beyond 64 bits, that way, so two ids could
    become one (2**64 and 2**64 + 1) and the event id would not be the one sent."""
    for msg in doc if isinstance(doc, list) else [doc]:
        if isinstance(msg, dict):
            params = msg.get("params")
            if isinstance(msg.get("id"), float) or (
                    isinstance(params, dict) and isinstance(params.get("requestId"), float)):
                return True
    return False


def parse_messages(raw: bytes) -> list[tuple[dict, int]]:
    """The JSON-RPC messages in one frame with their sizes in bytes. A batch (JSON array) is
    metered per element; an element's size is that of its compact JSON, the frame itself being
    forwarded unchanged. Unparsable frames yield nothing: they are relayed, not metered. A frame
    with a numeric id orjson cannot hold exactly is read again with each number as written."""
    try:
        doc = orjson.loads(raw)
        if _float_id(doc):
            doc = exact_json.loads(raw, as_written=True)
    except orjson.JSONDecodeError:
        try:  # maybe JSON orjson cannot hold at all (an id of 1e400)
            doc = exact_json.loads(raw, as_written=True)
        except exact_json.JsonError:
            return []
    if isinstance(doc, dict):
        return [(doc, len(raw))]
    if isinstance(doc, list):
        return [(m, len(exact_json.dumps(m))) for m in doc if isinstance(m, dict)]
    return []


def _agent_info(params: dict) -> tuple[str | None, str | None]:
    """clientInfo of `initialize`, or the `_meta` of a request where newer revisions carry it."""
    for info in (params.get("clientInfo"), (params.get("_meta") or {}).get("clientInfo")):
        if isinstance(info, dict) and info.get("name"):
            return str(info["name"]), str(info["version"]) if info.get("version") else None
    return None, None


@dataclass
class _Call:
    tool: str
    wall_s: float
    mono_s: float
    request_bytes: int


@dataclass
class SessionMeter:
    ident: Identity
    # The server's session id where it gives one, else minted here.
    session_id: str = field(default_factory=lambda: f"mcpx-{uuid.uuid4().hex}")
    call_timeout_s: float = 300.0
    agent: str | None = None
    agent_version: str | None = None
    protocol_version: str | None = None
    started: tuple[float, float] | None = None  # (wall, monotonic) when the server accepted initialize
    ended: bool = False
    requests: int = 0
    outcomes: Counter = field(default_factory=Counter)
    _pending: dict[str, _Call] = field(default_factory=dict)
    _init_id: str | None = None
    _init_at: tuple[float, float] | None = None

    @property
    def awaiting_server(self) -> bool:
        """Whether a server message can complete anything: lets relays skip parsing large
        server payloads (notifications, other responses) nobody meters."""
        return bool(self._pending) or self._init_id is not None

    # --- client -> server ---------------------------------------------------------------
    def from_client(self, raw: bytes, wall_s: float, mono_s: float) -> list[bytes]:
        out: list[bytes] = []
        for msg, size in parse_messages(raw):
            out += self._client_message(msg, size, wall_s, mono_s)
        return out

    def _client_message(self, msg: dict, size: int, wall_s: float, mono_s: float) -> list[bytes]:
        method = msg.get("method")
        params = msg.get("params") if isinstance(msg.get("params"), dict) else {}
        if method == "notifications/cancelled":
            key = jsonrpc_id_key(params.get("requestId"))
            call = self._pending.pop(key, None)
            return [self._tool_event(key, call, "cancelled", mono_s, 0, {})] if call else []
        if method is None or "id" not in msg:
            return []  # a response to a server request, or another notification
        self.requests += 1
        if self.agent is None:
            self.agent, self.agent_version = _agent_info(params)
        key = jsonrpc_id_key(msg["id"])
        if method == "initialize":
            self._init_id, self._init_at = key, (wall_s, mono_s)
            self.protocol_version = params.get("protocolVersion")
        elif method == "tools/call":
            self._pending[key] = _Call(str(params.get("name")), wall_s, mono_s, size)
        return []

    # --- server -> client ---------------------------------------------------------------
    def from_server(self, raw: bytes, wall_s: float, mono_s: float) -> list[bytes]:
        out: list[bytes] = []
        for msg, size in parse_messages(raw):
            out += self._server_message(msg, size, wall_s, mono_s)
        return out

    def _server_message(self, msg: dict, size: int, wall_s: float, mono_s: float) -> list[bytes]:
        if "method" in msg or "id" not in msg:
            return []  # a server request or notification
        key = jsonrpc_id_key(msg["id"])
        if key == self._init_id:
            return self._initialized(msg)
        call = self._pending.pop(key, None)
        if call is None:
            return []
        if "error" in msg:
            err = msg["error"] if isinstance(msg["error"], dict) else {}
            code = {"error_code": err.get("code")}
            return [self._tool_event(key, call, "protocol_error", mono_s, size, code)]
        result = msg.get("result") if isinstance(msg.get("result"), dict) else {}
        outcome = "tool_error" if result.get("isError") is True else "ok"
        return [self._tool_event(key, call, outcome, mono_s, size, {})]

    def _initialized(self, msg: dict) -> list[bytes]:
        self._init_id = None
        if "error" in msg or self.started is not None:
            return []
        self.started = self._init_at
        result = msg.get("result") if isinstance(msg.get("result"), dict) else {}
        server = result.get("serverInfo") if isinstance(result.get("serverInfo"), dict) else {}
        self.protocol_version = result.get("protocolVersion") or self.protocol_version
        MCP_SESSIONS.inc()
        return [self._event(SESSION_START, "start", self.started[0], {
            "protocol_version": self.protocol_version, "server": server.get("name"),
            "server_version": server.get("version")})]

    def refused(self, raw: bytes, http_status: int, wall_s: float, mono_s: float) -> list[bytes]:
        """The transport refused the frame carrying these requests (an HTTP error status): calls
        still open from it end as `protocol_error`, as no JSON-RPC answer will come."""
        out = []
        for msg, _size in parse_messages(raw):
            key = jsonrpc_id_key(msg.get("id"))
            if msg.get("method") == "tools/call" and key in self._pending:
                out.append(self._tool_event(key, self._pending.pop(key), "protocol_error", mono_s, 0,
                                            {"http_status": http_status}))
        return out

    # --- time and end -------------------------------------------------------------------
    def expire(self, wall_s: float, mono_s: float) -> list[bytes]:
        """Calls without an answer for call_timeout_s end as `timeout` (a late answer is ignored)."""
        late = [k for k, c in self._pending.items() if mono_s - c.mono_s >= self.call_timeout_s]
        return [self._tool_event(k, self._pending.pop(k), "timeout", mono_s, 0, {}) for k in late]

    def close(self, wall_s: float, mono_s: float) -> list[bytes]:
        """The session is over: calls still open never got an answer (`timeout`), then the end."""
        if self.ended:
            return []
        self.ended = True
        out = [self._tool_event(k, c, "timeout", mono_s, 0, {}) for k, c in self._pending.items()]
        self._pending.clear()
        if self.started is None:
            return out
        return [*out, self._event(SESSION_END, "end", wall_s, {
            "duration_ms": round((mono_s - self.started[1]) * 1000, 3), "requests": self.requests,
            "tool_calls": sum(self.outcomes.values()),
            **{f"tool_calls_{o}": self.outcomes[o] for o in OUTCOMES},
            "protocol_version": self.protocol_version})]

    # --- builders -----------------------------------------------------------------------
    def _tool_event(self, key: str, call: _Call, outcome: str, mono_s: float, response_bytes: int,
                    extra: dict) -> bytes:
        self.outcomes[outcome] += 1
        MCP_TOOL_CALLS.labels(outcome).inc()
        return cloudevent(self.ident, TOOL_CALL, f"{self.session_id}/{key}", self.agent, call.wall_s, {
            "tool": call.tool, "outcome": outcome, "session": self.session_id, "agent": self.agent,
            "agent_version": self.agent_version, "jsonrpc_id": key,
            "latency_ms": round((mono_s - call.mono_s) * 1000, 3),
            "request_bytes": call.request_bytes, "response_bytes": response_bytes, **extra})

    def _event(self, event_type: str, suffix: str, at_s: float, data: dict) -> bytes:
        return cloudevent(self.ident, event_type, f"{self.session_id}/{suffix}", self.agent, at_s, {
            "session": self.session_id, "agent": self.agent, "agent_version": self.agent_version, **data})
