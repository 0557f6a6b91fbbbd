"""From a provider's payload to CloudEvents, by a per-source mapping of JSONPaths.

A mapping is JSON:

    {"items": "$",                      # which part of the payload is one provider event ($[*]: each)
     "id": "$.id",                      # the provider's event id -> the CloudEvent id
     "type": "$.type", "subject": "$.data.object.customer", "time": "$.created",
     "data": {"quantity": "$.data.object.amount", "currency": "$.data.object.currency"}}

A value is a JSONPath into the item (`$...`, keeping the JSON type, numbers exact), a request
header (`header:X-GitHub-Event`), the SHA-256 of what a path selects (`sha256:$`, hex, of its
canonical JSON), or a string template in which `{$...}`, `{header:Name}` and `{sha256:$...}` are
replaced (`"{$.MessageSid}/{$.MessageStatus}"`; a literal when it has no placeholder; absent when
a placeholder selects nothing). `data` is an object of such values, or one path to an object.
`time` may be Unix seconds or milliseconds; when unmapped or absent, the route gives the event
the time its id was first received, so a redelivery is the same event (see api/webhooks/receipts).

The CloudEvent id is the provider's own event id, and the source is `<provider>/<source name>`,
so a replayed or redelivered provider event has the same idempotency key and the pipeline marks
it a duplicate instead of billing it twice. The id must come from what the provider signs (the
payload), never from a header: no provider signs its headers, so a replayed body under a new
header value would be a new event. Where the provider's own id is only in a header (GitHub's
X-GitHub-Delivery), `sha256:$` derives one from the signed payload.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping as MappingABC
from dataclasses import dataclass
from urllib.parse import parse_qsl

from api.cloudevents import cloudevent, parse_exact
from api.jsonpath import PathError, compile_path, find, first
from schemas import exact_json

FIELDS = ("id", "type", "subject", "time")
HEADER = "header:"
DIGEST = "sha256:"
_PLACEHOLDER = re.compile(r"\{(\$[^{}]*|header:[^{}]*|sha256:\$[^{}]*)\}")


class MappingError(ValueError):
    pass


@dataclass(frozen=True)
class Mapping:
    items: str
    fields: dict[str, str]
    data: dict[str, str] | str | None

    def to_json(self) -> dict:
        return {"items": self.items, **self.fields, **({"data": self.data} if self.data else {})}


def _check_expr(where: str, expr: object) -> str:
    if not isinstance(expr, str) or not expr:
        raise MappingError(f"{where} must be a non-empty string (a JSONPath, header:Name, sha256:$... "
                           "or a literal)")
    pieces = [expr] if expr.startswith(("$", DIGEST)) else _PLACEHOLDER.findall(expr)
    paths = [p.removeprefix(DIGEST) for p in pieces if p.startswith(("$", DIGEST))]
    if expr.startswith(DIGEST) and not paths[0].startswith("$"):
        raise MappingError(f"{where}: {DIGEST} takes a JSONPath, e.g. {DIGEST}$")
    for path in paths:
        try:
            compile_path(path)
        except PathError as exc:
            raise MappingError(f"{where}: {exc}") from None
    return expr


def parse_mapping(doc: object) -> Mapping:
    """A mapping from its JSON form, every path checked; MappingError names the first problem."""
    if not isinstance(doc, dict):
        raise MappingError("a mapping is a JSON object")
    unknown = set(doc) - {"items", "data", *FIELDS}
    if unknown:
        raise MappingError(f"unknown mapping keys: {', '.join(sorted(unknown))}")
    items = _check_expr("items", doc.get("items", "$"))
    if not items.startswith("$"):
        raise MappingError("items must be a JSONPath")
    fields = {name: _check_expr(name, doc[name]) for name in FIELDS if name in doc}
    if "id" not in fields:
        raise MappingError("a mapping needs id: the provider's event id makes replays duplicates")
    if HEADER in fields["id"]:
        raise MappingError("id must come from the signed payload, not a header (headers are not "
                           f"signed: a replay with a new header would be a new event); use {DIGEST}$ "
                           "where the provider's id is only in a header")
    data = doc.get("data")
    if isinstance(data, dict):
        data = {str(k): _check_expr(f"data.{k}", v) for k, v in data.items()}
    elif data is not None:
        data = _check_expr("data", data)
    return Mapping(items, fields, data)


def _value(expr: str, item: object, headers: MappingABC[str, str]) -> object:
    if expr.startswith("$"):
        return first(item, expr)
    if expr.startswith(HEADER):
        return headers.get(expr[len(HEADER):].strip().lower())
    if expr.startswith(DIGEST):
        found = find(item, expr[len(DIGEST):])
        return hashlib.sha256(exact_json.dumps(found[0], sort_keys=True)).hexdigest() if found else None
    parts = []
    for i, piece in enumerate(_PLACEHOLDER.split(expr)):
        if i % 2 == 0:
            parts.append(piece)
            continue
        value = _value(piece, item, headers)
        if value is None or isinstance(value, dict | list):
            return None
        parts.append(str(value))
    return "".join(parts)


def _data(mapping: Mapping, item: object, headers: MappingABC[str, str]) -> dict | None:
    if mapping.data is None:
        return None
    if isinstance(mapping.data, str):
        value = _value(mapping.data, item, headers)
        return value if isinstance(value, dict) else None
    values = {k: _value(expr, item, headers) for k, expr in mapping.data.items()}
    return {k: v for k, v in values.items() if v is not None}


def map_events(mapping: Mapping, payload: object, headers: MappingABC[str, str], *, source: str,
               tenant: str | None, received: str | None) -> list[dict]:
    """The CloudEvents of one webhook request (several when `items` selects a list). An event whose
    payload gives no time gets `received`; with received None it has none yet (the route fills it)."""
    events = []
    for item in find(payload, mapping.items):
        values = {name: _value(expr, item, headers) for name, expr in mapping.fields.items()}
        events.append(cloudevent(
            id=values.get("id"), source=source, type=values.get("type"), subject=values.get("subject"),
            time=values.get("time") or received, tenant=tenant, data=_data(mapping, item, headers)))
    return events


JSON = "application/json"
FORM = "application/x-www-form-urlencoded"


def parse_payload(body: bytes, content_type: str, *, payload_field: bool = False) -> object:
    """A webhook body as data, numbers exact: JSON, or a form post as a dict of its fields (Twilio),
    or the JSON in a form's `payload` field (Slack's interactions; with payload_field, the only
    form there is: GitHub's default). ValueError (a form) or a 400 (JSON) naming the problem."""
    if content_type == FORM:
        fields = dict(parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True))
        if "payload" not in fields:
            if payload_field:
                raise ValueError("a form delivery carries its JSON in a payload field, which this one lacks")
            return fields
        return parse_exact(fields["payload"].encode(), "the form's payload field")
    return parse_exact(body)
