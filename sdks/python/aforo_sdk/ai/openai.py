"""`instrument_openai(client)`: every chat completion and response of an `openai` client (sync or
async, streamed or not, including the `.stream()` and `.parse()` helpers) emits `llm.completion`.

A streamed chat completion reports usage only when asked (`stream_options.include_usage`); when
the caller did not ask, the wrapper asks and keeps the extra usage-only chunk to itself, so the
caller sees exactly the chunks it would have seen.
"""

from __future__ import annotations

from typing import Any

from aforo_sdk.ai._common import Call, Handler, LLMMeter, Usage, field, proxy, wrap


def chat_usage(u: Any) -> Usage:
    return Usage(input_tokens=field(u, "prompt_tokens") or 0,
                 output_tokens=field(u, "completion_tokens") or 0,
                 cached_tokens=field(u, "prompt_tokens_details", "cached_tokens") or 0,
                 cache_write_tokens=field(u, "prompt_tokens_details", "cache_write_tokens"),
                 reasoning_tokens=field(u, "completion_tokens_details", "reasoning_tokens"))


def responses_usage(u: Any) -> Usage:
    return Usage(input_tokens=field(u, "input_tokens") or 0, output_tokens=field(u, "output_tokens") or 0,
                 cached_tokens=field(u, "input_tokens_details", "cached_tokens") or 0,
                 cache_write_tokens=field(u, "input_tokens_details", "cache_write_tokens"),
                 reasoning_tokens=field(u, "output_tokens_details", "reasoning_tokens"))


class _Chat(Handler):
    def before(self, kwargs: dict) -> Call:
        call = Call(self.meter, "chat.completions", kwargs.get("model"), bool(kwargs.get("stream")))
        options = kwargs.get("stream_options")
        options = options if isinstance(options, dict) else {}
        if call.streamed and not options.get("include_usage"):
            kwargs["stream_options"] = {**options, "include_usage": True}
            call.injected = True
        return call

    def after(self, result: Any, call: Call, is_async: bool) -> Any:
        if not call.streamed:
            call.response_model = field(result, "model")
            usage = field(result, "usage")
            call.usage = chat_usage(usage) if usage is not None else None
            call.finish()
            return result

        def observe(chunk: Any) -> None:
            call.response_model = field(chunk, "model") or call.response_model
            usage = field(chunk, "usage")
            if usage is not None:
                call.usage = chat_usage(usage)

        def hide(chunk: Any) -> bool:
            return call.injected and field(chunk, "usage") is not None and not field(chunk, "choices")

        return proxy(result, call, is_async, observe, hide)


class _Responses(Handler):
    def before(self, kwargs: dict) -> Call:
        return Call(self.meter, "responses", kwargs.get("model"), bool(kwargs.get("stream")))

    def after(self, result: Any, call: Call, is_async: bool) -> Any:
        if not call.streamed:
            self._record(call, result)
            call.finish()
            return result
        # response.completed (or .incomplete / .failed) carries the whole response with its usage.
        return proxy(result, call, is_async, lambda event: self._record(call, field(event, "response")))

    @staticmethod
    def _record(call: Call, response: Any) -> None:
        usage = field(response, "usage")
        call.response_model = field(response, "model") or call.response_model
        if usage is not None:
            call.usage = responses_usage(usage)


def instrument_openai(client: Any, aforo: Any = None, *, customer: Any = None,
                      agent: str | None = None) -> Any:
    """Meter `client` (openai.OpenAI or openai.AsyncOpenAI) into `aforo` (default: the client
    from aforo_sdk.init()). Returns the same client."""
    from aforo_sdk import default_client
    meter = LLMMeter(aforo or default_client(), "openai", customer, agent)
    chat, responses = _Chat(meter), _Responses(meter)
    for method in ("create", "parse"):
        wrap(client.chat.completions, method, chat)
        wrap(client.responses, method, responses)
    return client
