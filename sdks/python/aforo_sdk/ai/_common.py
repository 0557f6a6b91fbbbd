"""What the OpenAI and Anthropic wrappers share: one `llm.completion` event per completion, with
the tokens the provider's own `usage` reported, and stream proxies that watch the chunks go by.

data: provider, model (as requested: the name a price list uses), response_model (the snapshot
that answered), operation, input_tokens (every input token, cached ones included), cached_tokens
(of those, read from the prompt cache), cache_write_tokens (when reported), output_tokens
(reasoning included), reasoning_tokens (when reported), tokens (input + output), latency_ms,
streamed, agent (when known). The subject is the customer from aforo_sdk.context(), else the
`customer` given when instrumenting.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from aforo_sdk import _context

log = logging.getLogger("aforo_sdk")

EVENT_TYPE = "llm.completion"


@dataclass
class Usage:
    input_tokens: int = 0
    output_tokens: int = 0
    cached_tokens: int = 0
    cache_write_tokens: int | None = None
    reasoning_tokens: int | None = None


def field(obj: Any, *path: str) -> Any:
    """obj.a.b, None when any step is missing (usage objects vary across API versions)."""
    for name in path:
        if obj is None:
            return None
        obj = obj.get(name) if isinstance(obj, dict) else getattr(obj, name, None)
    return obj


class Call:
    """One completion call: who it is for (fixed when the call is made, since a stream may be
    read after the caller's context is gone), when it started, and what its usage was."""

    def __init__(self, meter: LLMMeter, operation: str, model: Any, streamed: bool):
        scope = _context.current()
        self.meter = meter
        self.customer = scope.customer or meter.default_customer()
        self.agent = scope.agent or meter.agent
        self.operation = operation
        self.model = model if isinstance(model, str) else None
        self.response_model: str | None = None
        self.streamed = streamed
        self.started = time.perf_counter()
        self.usage: Usage | None = None
        self.injected = False  # the wrapper asked for usage the caller did not (OpenAI streams)
        self.raw: dict[str, int] = {}  # usage fields as a stream reports them (Anthropic)
        self._done = False

    def finish(self) -> None:
        if self._done:
            return
        self._done = True
        if self.usage is None:
            log.debug("%s %s: no usage reported, nothing metered", self.meter.provider, self.operation)
            return
        self.meter.emit(self)


class LLMMeter:
    def __init__(self, client: Any, provider: str, customer: str | Callable[[], str | None] | None,
                 agent: str | None):
        self.client = client
        self.provider = provider
        self._customer = customer
        self.agent = agent

    def default_customer(self) -> str | None:
        return self._customer() if callable(self._customer) else self._customer

    def emit(self, call: Call) -> None:
        u = call.usage
        model = call.model or call.response_model
        what = f"{self.provider} {call.operation} {model}"
        if not call.customer:
            self.client._unattributed(what)
            return
        data: dict[str, Any] = {
            "provider": self.provider, "model": model, "response_model": call.response_model or model,
            "operation": call.operation, "input_tokens": u.input_tokens, "cached_tokens": u.cached_tokens,
            "output_tokens": u.output_tokens, "tokens": u.input_tokens + u.output_tokens,
            "latency_ms": round((time.perf_counter() - call.started) * 1000, 3), "streamed": call.streamed}
        if u.cache_write_tokens is not None:
            data["cache_write_tokens"] = u.cache_write_tokens
        if u.reasoning_tokens is not None:
            data["reasoning_tokens"] = u.reasoning_tokens
        if call.agent:
            data["agent"] = call.agent
        try:
            self.client.meter(EVENT_TYPE, call.customer, data)
        except (ValueError, RuntimeError) as exc:  # metering never breaks the completion
            log.error("could not meter %s: %s", what, exc)


class _Proxy:
    """Stands in for a provider's stream: yields its items (minus those `hide` says the caller
    did not ask for), lets `observe` see each one, and finishes the call when the stream ends,
    fails or is closed. Anything else is the stream's own."""

    def __init__(self, stream: Any, call: Call, observe: Callable[[Any], None], hide: Callable[[Any], bool]):
        self._stream = stream
        self._call = call
        self._observe = observe
        self._hide = hide
        self._iter: Any = None

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)

    @contextlib.contextmanager
    def _finishing_on_error(self) -> Iterator[None]:
        """A stream that ends (StopIteration too) or fails finishes the call."""
        try:
            yield
        except BaseException:
            self._call.finish()
            raise

    def _passes(self, item: Any) -> bool:
        self._observe(item)
        return not self._hide(item)


class StreamProxy(_Proxy):
    def __iter__(self) -> StreamProxy:
        return self

    def __next__(self) -> Any:
        if self._iter is None:
            self._iter = iter(self._stream)
        while True:
            with self._finishing_on_error():
                item = next(self._iter)
            if self._passes(item):
                return item

    def __enter__(self) -> StreamProxy:
        return self

    def __exit__(self, *exc: Any) -> Any:
        self._call.finish()
        return self._stream.__exit__(*exc)

    def close(self) -> None:
        self._call.finish()
        self._stream.close()


class AsyncStreamProxy(_Proxy):
    def __aiter__(self) -> AsyncStreamProxy:
        return self

    async def __anext__(self) -> Any:
        if self._iter is None:
            self._iter = self._stream.__aiter__()
        while True:
            with self._finishing_on_error():
                item = await self._iter.__anext__()
            if self._passes(item):
                return item

    async def __aenter__(self) -> AsyncStreamProxy:
        return self

    async def __aexit__(self, *exc: Any) -> Any:
        self._call.finish()
        return await self._stream.__aexit__(*exc)

    async def close(self) -> None:
        self._call.finish()
        await self._stream.close()


class Handler:
    """How one client method is metered: `before` opens the Call (and may adjust the request),
    `after` records usage from the result, or returns a proxy that records it as a stream is read."""

    def __init__(self, meter: LLMMeter):
        self.meter = meter

    def before(self, kwargs: dict) -> Call:
        raise NotImplementedError

    def after(self, result: Any, call: Call, is_async: bool) -> Any:
        raise NotImplementedError


def wrap(resource: Any, method: str, handler: Handler) -> None:
    """Replace `resource.method` on this instance only (the client object, never the library's
    classes), for a sync or an async client alike."""
    original = getattr(resource, method, None)
    if original is None or getattr(original, "__aforo__", False):
        return

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        call = handler.before(kwargs)
        result = original(*args, **kwargs)
        if inspect.isawaitable(result):
            async def finished() -> Any:
                return handler.after(await result, call, True)
            return finished()
        return handler.after(result, call, False)

    wrapper.__aforo__ = True  # instrumenting twice wraps once
    wrapper.__wrapped__ = original
    wrapper.__doc__ = original.__doc__
    setattr(resource, method, wrapper)


def proxy(stream: Any, call: Call, is_async: bool, observe: Callable[[Any], None],
          hide: Callable[[Any], bool] = lambda _item: False) -> Any:
    return (AsyncStreamProxy if is_async else StreamProxy)(stream, call, observe, hide)
