"""JSON read and written without losing what a number says, or what a client wrote.

orjson (fast, used wherever numbers are Aforo's own) reads integers beyond 64 bits and every number
with a fraction or an exponent as a binary float: 2**70 becomes 1.1805916207174113e+21 and
12345678901234567.89 becomes 1.2345678901234568e16. Where a number may be a client's quantity it
is read here instead: integers as int (as Decimal from 19 digits on, which orjson could not
write), every other number as Decimal, and written back with orjson, each Decimal as a JSON number
with its exact digits. Doors that build events from a provider's payload read it `as_written`,
so each number also keeps the text it was sent as (a numeric id `1e400` stays `1e400`). NaN and
Infinity are not JSON and are refused; so is a `\\ud800` escape of a lone UTF-16 surrogate, which
is no Unicode text (orjson and I-JSON refuse it too, and a string holding one cannot be encoded
again, by orjson or for Postgres). `loads_with_text` also gives each array element's own text, so
a door can produce each event of a batch as exactly the bytes the client sent for it.
"""

from __future__ import annotations

import json
import re
from decimal import Decimal

import orjson


class JsonError(ValueError):
    """Not JSON (the message says where)."""


def _not_json(name: str) -> object:
    raise JsonError(f"{name} is not a JSON value")


def _integer(text: str) -> int | Decimal:
    return int(text) if len(text) < 19 else Decimal(text)  # up to 18 digits fits in 64 bits


class Number(Decimal):
    """A JSON number as a Decimal that is written, and printed, as it was sent (`1e400`, where a
    Decimal prints `1E+400`): a provider's numeric id stays the text the provider signed."""

    __slots__ = ("text",)

    def __new__(cls, text: str) -> Number:
        number = super().__new__(cls, text)
        number.text = text
        return number

    def __str__(self) -> str:
        return self.text


def _integer_as_written(text: str) -> int | Number:
    return int(text) if len(text) < 19 and text != "-0" else Number(text)  # str(int("-0")) is "0"


_DECODER = json.JSONDecoder(parse_float=Decimal, parse_int=_integer, parse_constant=_not_json)
_AS_WRITTEN = json.JSONDecoder(parse_float=Number, parse_int=_integer_as_written, parse_constant=_not_json)
_WS = re.compile(r"[ \t\r\n]*")
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")  # a valid pair decodes to one code point
_SURROGATE = re.compile("[\ud800-\udfff]")
_BYTES_WS = b" \t\r\n"


def _text(raw: bytes | str) -> str:
    try:
        return raw.decode("utf-8") if isinstance(raw, bytes) else raw
    except UnicodeDecodeError as exc:
        raise JsonError(f"not valid UTF-8: {exc}") from None


def _unicode(doc: object, text: str) -> object:
    """`doc`, unless one of its strings holds a lone surrogate (only an escape can write one)."""
    if _SURROGATE_ESCAPE.search(text) is None:
        return doc
    nodes = [doc]
    while nodes:
        node = nodes.pop()
        if isinstance(node, dict):
            nodes.extend(node)
            nodes.extend(node.values())
        elif isinstance(node, list):
            nodes.extend(node)
        elif isinstance(node, str) and _SURROGATE.search(node) is not None:
            raise JsonError(f"not valid JSON: the string {node[:40]!a} holds a lone UTF-16 "
                            "surrogate, which is not Unicode text")
    return doc


def loads(raw: bytes | str, *, as_written: bool = False) -> object:
    """One JSON document, numbers exact (as_written: each prints as its own text, see Number);
    JsonError when it is not JSON."""
    text = _text(raw)
    try:
        return _unicode((_AS_WRITTEN if as_written else _DECODER).decode(text), text)
    except json.JSONDecodeError as exc:
        raise JsonError(f"not valid JSON: {exc}") from None
    except RecursionError:
        raise JsonError("JSON nests too deep") from None


def loads_with_text(raw: bytes) -> tuple[object, list[bytes]]:
    """The document, numbers exact, and the exact bytes of each of its values: each element's
    when it is an array, else the whole document's (surrounding whitespace left out)."""
    text = _text(raw)
    try:
        start = _WS.match(text).end()
        if text.startswith("[", start):
            doc, texts, end = _array(text, start + 1)
        else:
            doc, end = _DECODER.raw_decode(text, start)
            texts = [raw.strip(_BYTES_WS)]
        if _WS.match(text, end).end() != len(text):
            raise json.JSONDecodeError("Extra data", text, end)
    except json.JSONDecodeError as exc:
        raise JsonError(f"not valid JSON: {exc}") from None
    except RecursionError:
        raise JsonError("JSON nests too deep") from None
    return _unicode(doc, text), texts


def _array(text: str, pos: int) -> tuple[list, list[bytes], int]:
    """The elements of the array whose `[` is just before pos, their texts, and where it ends."""
    values: list = []
    texts: list[bytes] = []
    pos = _WS.match(text, pos).end()
    if text.startswith("]", pos):
        return values, texts, pos + 1
    while True:
        value, end = _DECODER.raw_decode(text, pos)
        values.append(value)
        texts.append(text[pos:end].encode())  # valid UTF-8 decoded and encoded again: the same bytes
        pos = _WS.match(text, end).end()
        if text.startswith("]", pos):
            return values, texts, pos + 1
        if not text.startswith(",", pos):
            raise json.JSONDecodeError("Expecting ',' delimiter", text, pos)
        pos = _WS.match(text, pos + 1).end()


def _exact(value: object) -> orjson.Fragment:
    if isinstance(value, Decimal) and value.is_finite():
        return orjson.Fragment(str(value).encode())
    raise TypeError(f"{type(value).__name__} {value!r} is not JSON")


def dumps(value: object, *, sort_keys: bool = False) -> bytes:
    """orjson's encoding, each Decimal written as a JSON number with its exact digits."""
    return orjson.dumps(value, default=_exact, option=orjson.OPT_SORT_KEYS if sort_keys else 0)
