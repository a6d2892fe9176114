"""The LLM client: the `openai` SDK pointed at any Chat Completions server named in settings."""

from __future__ import annotations

import openai

from frontdesk.settings import Settings


def make_llm(settings: Settings) -> openai.AsyncOpenAI:
    """An async client for `settings.openai_base_url` (OpenAI itself when unset).

    No SDK retries: on a live call a retry with back-off costs seconds of silence, so the
    conversation engine falls back to taking a message instead.
    """
    key = settings.openai_api_key.get_secret_value() if settings.openai_api_key else None
    return openai.AsyncOpenAI(
        # Local servers (Ollama, vLLM) ignore the key, but the SDK insists on one.
        api_key=key or "not-set",
        base_url=settings.openai_base_url,
        timeout=settings.llm_timeout_seconds,
        max_retries=0,
    )
