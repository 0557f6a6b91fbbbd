"""From a provider's payload to CloudEvents, by a per-source mapping of JSONPaths.

A mapping is JSON:

    {"items": "$",                      # which part of the payload is one provider event ($[*]: each)
     "id": "$.id",                      # the provider's event id -> the CloudEvent id
     "type": "$.type", "subject": "$.data.object.customer", "time": "$.created",
     "data": {"quantity": "$.data.object.amount", "currency": "$.data.object.currency"}}

A value is a JSONPath into the item (`$...`, keeping the JSON type), a request header
(`header:X-GitHub-Delivery`), or a string template in which `{$...}` and `{header:Name}` are
replaced (`"{$.MessageSid}/{$.MessageStatus}"`; a literal when it has no placeholder; absent when
a placeholder selects nothing). `data` is an object of such values, or one path to an object.
`time` may be Unix seconds or milliseconds; when unmapped or absent the time of receipt is used.

The CloudEvent id is the provider's own event id, and the source is `<provider>/<source name>`,
so a replayed or redelivered provider event has the same idempotency key and the pipeline marks
it a duplicate instead of billing it twice.
"""

from __future__ import annotations

import re
from collections.abc import Mapping as MappingABC
from dataclasses import dataclass
from urllib.parse import parse_qsl

import orjson

from api.cloudevents import cloudevent
from api.jsonpath import PathError, compile_path, find, first
from api.limits import check_depth

FIELDS = ("id", "type", "subject", "time")
HEADER = "header:"
_PLACEHOLDER = re.compile(r"\{(\$[^{}]*|header:[^{}]*)\}")


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
        raise MappingError(f"{where} must be a non-empty string (a JSONPath, header:Name or a literal)")
    paths = [expr] if expr.startswith("$") else [p for p in _PLACEHOLDER.findall(expr) if p.startswith("$")]
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
               tenant: str | None, received: str) -> list[dict]:
    """The CloudEvents of one webhook request (several when `items` selects a list)."""
    events = []
    for item in find(payload, mapping.items):
        values = {name: _value(expr, item, headers) for name, expr in mapping.fields.items()}
        events.append(cloudevent(
            id=values.get("id"), source=source, type=values.get("type"), subject=values.get("subject"),
            time=values.get("time") or received, tenant=tenant, data=_data(mapping, item, headers)))
    return events


FORM = "application/x-www-form-urlencoded"


def parse_payload(body: bytes, content_type: str) -> object:
    """A webhook body as data: form posts (Twilio, Slack commands) as a dict of fields, else JSON.
    ValueError naming the problem."""
    if content_type == FORM:
        return dict(parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True))
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise ValueError(f"body is not valid JSON: {exc}") from None
    check_depth(doc)
    return doc
