"""The LLM client: the `openai` SDK pointed at any Chat Completions server (`LlmConfig`).

One client per process, shared by every call and every turn: it owns the connection pool, so a
turn goes out on a warm connection instead of opening (and, to a real provider, handshaking TLS
on) a new one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import anyio
import openai
from openai.types.chat import ChatCompletion, ChatCompletionChunk

# A caller's turns are seconds apart (they listen, then speak): longer than httpx's default 5 s
# keep-alive, which would make most turns of a quiet line open a new connection. The limits are
# those of the SDK's own HTTP library (httpx2 from openai 3 on, httpx before).
_Limits = type(openai.DEFAULT_CONNECTION_LIMITS)
POOL = _Limits(max_connections=1000, max_keepalive_connections=200, keepalive_expiry=30.0)


@dataclass(frozen=True)
class LlmConfig:
    """Which Chat Completions server and model the agent talks to, and how long it waits."""

    model: str = "gpt-4o-mini"
    api_key: str | None = None
    base_url: str | None = None  # None: OpenAI itself
    timeout: float = 8.0

    @property
    def configured(self) -> bool:
        """Whether an LLM is set up: an API key, or the address of a compatible server."""
        return bool(self.api_key or self.base_url)


def make_llm(config: LlmConfig) -> openai.AsyncOpenAI:
    """An async client for `config.base_url` (OpenAI itself when unset).

    No SDK retries: on a live call a retry with back-off costs seconds of silence, so the
    conversation engine falls back to taking a message instead.
    """
    return openai.AsyncOpenAI(
        # Local servers (Ollama, vLLM) ignore the key, but the SDK insists on one.
        api_key=config.api_key or "not-set",
        base_url=config.base_url,
        timeout=config.timeout,
        max_retries=0,
        http_client=openai.DefaultAsyncHttpxClient(limits=POOL),
    )


async def stream_chat(
    llm: openai.AsyncOpenAI,
    *,
    model: str,
    messages: list[dict[str, Any]],
    tools: list[dict[str, Any]],
) -> openai.AsyncStream[ChatCompletionChunk]:
    """Start a streamed Chat Completion: the request `chat.completions.create(stream=True)` sends.

    It goes through the SDK's own `post` (auth, base URL, timeout, errors, server-sent events
    parsed into `ChatCompletionChunk`s), but skips `create`'s walk of every argument against the
    SDK's TypedDict unions, which only renames and reformats fields these plain dicts do not
    have. That walk costs about 0.2 ms per message, on every turn, and the history grows with
    the call: it was the largest cost between a caller's words and our first token.
    """
    body = {"model": model, "messages": messages, "tools": tools, "stream": True}
    return await llm.post(
        "/chat/completions",
        body=body,
        cast_to=ChatCompletion,
        stream=True,
        stream_cls=openai.AsyncStream[ChatCompletionChunk],
    )


async def warm_up(llm: openai.AsyncOpenAI) -> None:
    """Pay the SDK's one-time costs at start-up rather than on the first caller's first turn:
    lazy imports (the client's resources, anyio's asyncio backend) and the chunk model that
    pydantic builds on first use. No request is made."""
    resources = llm.chat.completions  # the first look-up imports the chat resources
    del resources
    anyio.Event()
    ChatCompletionChunk.model_rebuild()
    ChatCompletionChunk.construct(
        id="warm-up", choices=[], created=0, model="", object="chat.completion.chunk"
    )
