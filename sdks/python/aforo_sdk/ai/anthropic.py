"""`instrument_anthropic(client)`: every `messages.create` (streamed or not), `messages.parse`
and `messages.stream` of an `anthropic` client (sync or async) emits `llm.completion`.

Anthropic reports input tokens without the cached ones; the event's input_tokens adds
cache_read_input_tokens and cache_creation_input_tokens back, so input_tokens means the same
for every provider, and cached_tokens is the cache reads.
"""

from __future__ import annotations

import contextlib
from typing import Any

from aforo_sdk.ai._common import Call, Handler, LLMMeter, Usage, field, proxy, wrap

_FIELDS = ("input_tokens", "output_tokens", "cache_read_input_tokens", "cache_creation_input_tokens")


def message_usage(u: Any) -> Usage:
    read = field(u, "cache_read_input_tokens") or 0
    written = field(u, "cache_creation_input_tokens")
    return Usage(input_tokens=(field(u, "input_tokens") or 0) + read + (written or 0),
                 output_tokens=field(u, "output_tokens") or 0, cached_tokens=read, cache_write_tokens=written)


class _Messages(Handler):
    def before(self, kwargs: dict) -> Call:
        return Call(self.meter, "messages", kwargs.get("model"), bool(kwargs.get("stream")))

    def after(self, result: Any, call: Call, is_async: bool) -> Any:
        if not call.streamed:
            record(call, result)
            call.finish()
            return result

        def observe(event: Any) -> None:
            # message_start carries the input side; each message_delta the running totals.
            kind = field(event, "type")
            usage = field(event, "message", "usage") if kind == "message_start" else field(event, "usage")
            if kind == "message_start":
                call.response_model = field(event, "message", "model")
            if usage is not None and kind in ("message_start", "message_delta"):
                call.raw.update({k: v for k in _FIELDS if (v := field(usage, k)) is not None})
                call.usage = message_usage(call.raw)

        return proxy(result, call, is_async, observe)


def record(call: Call, message: Any) -> None:
    call.response_model = field(message, "model") or call.response_model
    usage = field(message, "usage")
    if usage is not None:
        call.usage = message_usage(usage)


class _StreamHelper(Handler):
    """messages.stream() returns a manager; its stream's message snapshot holds the usage."""

    def before(self, kwargs: dict) -> Call:
        return Call(self.meter, "messages", kwargs.get("model"), True)

    def after(self, result: Any, call: Call, is_async: bool) -> Any:
        return _Manager(result, call)


class _Manager:
    def __init__(self, manager: Any, call: Call):
        self._manager = manager
        self._call = call
        self._stream: Any = None

    def _finish(self) -> None:
        if self._stream is not None:
            with contextlib.suppress(AssertionError):  # no snapshot: no event arrived
                record(self._call, self._stream.current_message_snapshot)
        self._call.finish()

    def __enter__(self) -> Any:
        self._stream = self._manager.__enter__()
        return self._stream

    def __exit__(self, *exc: Any) -> Any:
        self._finish()
        return self._manager.__exit__(*exc)

    async def __aenter__(self) -> Any:
        self._stream = await self._manager.__aenter__()
        return self._stream

    async def __aexit__(self, *exc: Any) -> Any:
        self._finish()
        return await self._manager.__aexit__(*exc)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._manager, name)


def instrument_anthropic(client: Any, aforo: Any = None, *, customer: Any = None,
                         agent: str | None = None) -> Any:
    """Meter `client` (anthropic.Anthropic or anthropic.AsyncAnthropic) into `aforo` (default:
    the client from aforo_sdk.init()). Returns the same client."""
    from aforo_sdk import default_client
    meter = LLMMeter(aforo or default_client(), "anthropic", customer, agent)
    messages = _Messages(meter)
    wrap(client.messages, "create", messages)
    wrap(client.messages, "parse", messages)
    wrap(client.messages, "stream", _StreamHelper(meter))
    return client
