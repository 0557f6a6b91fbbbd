"""Token usage of AI provider clients, metered as `llm.completion` events."""

from aforo_sdk.ai.anthropic import instrument_anthropic
from aforo_sdk.ai.openai import instrument_openai

__all__ = ["instrument_anthropic", "instrument_openai"]
