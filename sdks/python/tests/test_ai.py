"""instrument_openai / instrument_anthropic with the real client packages, pointed at a local
server that answers with the providers' documented response shapes (streamed and not)."""

from __future__ import annotations

import asyncio
from decimal import Decimal

import anthropic
import openai
import pytest
from conftest import money

from aforo_sdk import Aforo, context, instrument_anthropic, instrument_openai

MESSAGES = [{"role": "user", "content": "Hello"}]
# The fixtures' usage (tests/fixtures/llm), as the event reports it.
CHAT = {"input_tokens": 1200, "cached_tokens": 200, "output_tokens": 300, "tokens": 1500,
        "reasoning_tokens": 0}
RESPONSES = {"input_tokens": 2000, "cached_tokens": 500, "output_tokens": 800, "tokens": 2800,
             "reasoning_tokens": 100}
# Anthropic's input_tokens (1000) excludes cache reads (400) and writes (100): the event adds them back.
MESSAGES_USAGE = {"input_tokens": 1500, "cached_tokens": 400, "cache_write_tokens": 100, "output_tokens": 500,
                  "tokens": 2000}


@pytest.fixture
def aforo(harness, source):
    client = Aforo(harness.proxy, harness.ai_key, source=source, linger_s=3600)
    yield client
    client.close()


def _llm_events(harness, source: str) -> list[dict]:
    return [e for e in harness.sent(source) if e["type"] == "llm.completion"]


def _tokens(event: dict) -> dict:
    keys = ("input_tokens", "cached_tokens", "cache_write_tokens", "output_tokens", "tokens",
            "reasoning_tokens")
    return {k: event["data"][k] for k in keys if k in event["data"]}


def test_openai_completions_streamed_or_not_are_metered(harness, source, aforo):
    client = instrument_openai(openai.OpenAI(base_url=harness.llm + "/v1", api_key="sk-test", max_retries=0),
                               aforo)
    with context(customer="ai-cust-1", agent="support-bot"):
        completion = client.chat.completions.create(model="gpt-4o", messages=MESSAGES)
        assert completion.choices[0].message.content.startswith("Hello")

        chunks = list(client.chat.completions.create(model="gpt-4o", messages=MESSAGES, stream=True))
        # The wrapper asked for usage; the caller, who did not, sees no usage-only chunk.
        assert chunks and all(c.choices for c in chunks)
        assert "".join(c.choices[0].delta.content or "" for c in chunks) == "Hello there"

        with client.chat.completions.create(model="gpt-4o", messages=MESSAGES, stream=True,
                                            stream_options={"include_usage": True}) as stream:
            asked = list(stream)
        assert asked[-1].usage.prompt_tokens == 1200 and asked[-1].choices == []  # asked for: delivered

        with client.chat.completions.stream(model="gpt-4o", messages=MESSAGES) as helper:
            final = helper.get_final_completion()
        assert final.choices[0].message.content == "Hello there"

        response = client.responses.create(model="gpt-4o-mini", input="Tell me a story")
        assert response.output_text.startswith("In a peaceful grove")
        streamed = [e.type for e in client.responses.create(model="gpt-4o-mini", input="Hi", stream=True)]
        assert streamed[-1] == "response.completed"
    aforo.flush()

    sent = harness.http.get(harness.llm).json()
    assert [r["body"].get("stream_options") for r in sent if r["body"].get("stream")][:3] == [
        {"include_usage": True}, {"include_usage": True}, {"include_usage": True}]

    events = _llm_events(harness, source)
    assert [(e["data"]["operation"], e["data"]["streamed"]) for e in events] == [
        ("chat.completions", False), ("chat.completions", True), ("chat.completions", True),
        ("chat.completions", True), ("responses", False), ("responses", True)]
    for e in events[:4]:
        assert _tokens(e) == CHAT
        assert (e["data"]["model"], e["data"]["response_model"]) == ("gpt-4o", "gpt-4o-2024-08-06")
    for e in events[4:]:
        assert _tokens(e) == RESPONSES and e["data"]["model"] == "gpt-4o-mini"
    assert {(e["subject"], e["data"]["agent"], e["data"]["provider"]) for e in events} == {
        ("ai-cust-1", "support-bot", "openai")}

    # nimbus bills gpt-4o at 0.000005 per input and 0.00002 per output token; costs 0.0000025 / 0.00001
    record = harness.ledger(source, events[0]["id"], harness.ai_key)["records"][0]
    assert (record["status"], record["tier"]) == ("accepted", "sdk")
    assert (money(record["revenue"]), money(record["cost"]), money(record["margin"])) == (
        Decimal("0.012"), Decimal("0.006"), Decimal("0.006"))


def test_async_openai_is_metered(harness, source, aforo):
    client = instrument_openai(openai.AsyncOpenAI(base_url=harness.llm + "/v1", api_key="sk-test",
                                                  max_retries=0), aforo, customer="ai-cust-2")

    async def main() -> None:
        await client.chat.completions.create(model="gpt-4o", messages=MESSAGES)
        stream = await client.chat.completions.create(model="gpt-4o", messages=MESSAGES, stream=True)
        assert [c async for c in stream][-1].choices[0].finish_reason == "stop"
        async with client.chat.completions.stream(model="gpt-4o", messages=MESSAGES) as helper:
            await helper.get_final_completion()
        stream = await client.responses.create(model="gpt-4o-mini", input="Hi", stream=True)
        async for _ in stream:
            pass

    asyncio.run(main())
    aforo.flush()
    events = _llm_events(harness, source)
    assert [_tokens(e) for e in events] == [CHAT, CHAT, CHAT, RESPONSES]
    assert {e["subject"] for e in events} == {"ai-cust-2"}  # the instrument's default customer


def test_anthropic_messages_streamed_or_not_are_metered(harness, source, aforo):
    provider = anthropic.Anthropic(base_url=harness.llm, api_key="sk-ant-test", max_retries=0)
    client = instrument_anthropic(provider, aforo)
    with context(customer="ai-cust-2"):
        message = client.messages.create(model="claude-sonnet-4-5", max_tokens=1024, messages=MESSAGES)
        assert message.content[0].text.startswith("Hi!")
        events = list(client.messages.create(model="claude-sonnet-4-5", max_tokens=1024, messages=MESSAGES,
                                             stream=True))
        assert events[0].type == "message_start" and events[-1].type == "message_stop"
        with client.messages.stream(model="claude-sonnet-4-5", max_tokens=1024, messages=MESSAGES) as stream:
            assert "".join(stream.text_stream) == "Hello!"
    aforo.flush()

    metered = _llm_events(harness, source)
    assert [(e["data"]["streamed"], _tokens(e)) for e in metered] == [
        (False, MESSAGES_USAGE), (True, MESSAGES_USAGE), (True, MESSAGES_USAGE)]
    assert {(e["subject"], e["data"]["provider"], e["data"]["model"], e["data"]["response_model"])
            for e in metered} == {
        ("ai-cust-2", "anthropic", "claude-sonnet-4-5", "claude-sonnet-4-5-20250929")}
    # claude-sonnet-4-5: 0.000006 / 0.00003 per input / output token; cost 0.000003 / 0.000015
    record = harness.ledger(source, metered[1]["id"], harness.ai_key)["records"][0]
    assert (money(record["revenue"]), money(record["cost"])) == (Decimal("0.024"), Decimal("0.012"))


def test_async_anthropic_is_metered(harness, source, aforo):
    client = instrument_anthropic(anthropic.AsyncAnthropic(base_url=harness.llm, api_key="sk-ant-test",
                                                           max_retries=0), aforo)

    async def main() -> None:
        with context(customer="ai-cust-1"):
            await client.messages.create(model="claude-sonnet-4-5", max_tokens=64, messages=MESSAGES)
            stream = await client.messages.create(model="claude-sonnet-4-5", max_tokens=64, messages=MESSAGES,
                                                  stream=True)
            async for _ in stream:
                pass
            async with client.messages.stream(model="claude-sonnet-4-5", max_tokens=64,
                                              messages=MESSAGES) as helper:
                await helper.get_final_message()

    asyncio.run(main())
    aforo.flush()
    assert [_tokens(e) for e in _llm_events(harness, source)] == [MESSAGES_USAGE] * 3


def test_a_completion_without_a_customer_is_counted_not_sent(harness, source, aforo):
    client = instrument_openai(openai.OpenAI(base_url=harness.llm + "/v1", api_key="sk-test", max_retries=0),
                               aforo)
    instrument_openai(client, aforo)  # twice: still metered once
    client.chat.completions.create(model="gpt-4o", messages=MESSAGES)
    aforo.flush()
    assert _llm_events(harness, source) == [] and aforo.stats.unattributed == 1
