"""Pure CloudEvent builders for MCP metering: no I/O, no clock of their own."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

import orjson

from schemas import exact_json

TOOL_CALL = "mcp.tool.call"
SESSION_START = "mcp.session.start"
SESSION_END = "mcp.session.end"


@dataclass(frozen=True)
class Identity:
    """Who the events are about and where they come from (fixed for one proxy process)."""

    tenant: str
    product: str
    instance: str
    customer: str | None = None  # the subject; None: the agent mapping, else the agent's name
    agent_customers: tuple[tuple[str, str], ...] = ()  # agent name -> customer

    @property
    def source(self) -> str:
        return f"mcp-proxy/{self.product}/{self.instance}"

    def subject(self, agent: str | None) -> str:
        if self.customer:
            return self.customer
        mapped = dict(self.agent_customers).get(agent or "")
        return mapped or agent or "unknown-agent"


def rfc3339(epoch_s: float) -> str:
    return datetime.fromtimestamp(epoch_s, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def jsonrpc_id_key(rpc_id: object) -> str:
    """A request id as text that keeps 1 and "1" apart (JSON-RPC treats them as different ids); a
    number read as written (schemas.exact_json) is its own text."""
    return exact_json.dumps(rpc_id).decode()


def cloudevent(ident: Identity, event_type: str, event_id: str, agent: str | None, at_s: float,
               data: dict) -> bytes:
    """One CloudEvent 1.0 as a JSON line. The id is deterministic (session id and JSON-RPC id),
    so a retried delivery is a duplicate in Aforo's ledger, never a second charge."""
    return orjson.dumps({
        "specversion": "1.0", "id": event_id, "source": ident.source, "type": event_type,
        "subject": ident.subject(agent), "time": rfc3339(at_s), "tenantid": ident.tenant,
        "data": {"product": ident.product, **data},
    })
