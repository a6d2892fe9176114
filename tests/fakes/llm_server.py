"""A local OpenAI-compatible Chat Completions server, scripted per scenario.

It follows the public API reference for `POST /v1/chat/completions`: with `"stream": true` the
answer is `text/event-stream`, one `data: {chat.completion.chunk}` event per delta and a final
`data: [DONE]`; tool calls arrive as `delta.tool_calls` entries keyed by `index`, the first carrying
`id`, `type` and `function.name`, the rest only fragments of `function.arguments`. Without
`stream` it answers one `chat.completion` object.

A script is a list of responses served in order, one per request: `Text`, `ToolCalls`, a `Fault`,
or a function of the request's `messages` returning one of those (so a script can book the
`slot_id` that an earlier tool result offered). Every request body is kept in `requests`, its
headers in `headers`.

    server = FakeLLM().start()
    server.script(ToolCalls(Call("check_availability", {...})), Text("How about 9?"))
    client = openai.AsyncOpenAI(base_url=server.base_url, api_key="test")
    ...
    server.stop()
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route

from tests.fakes.loopback import LoopbackServer


@dataclass(frozen=True)
class Text:
    """An assistant answer; `pieces` are streamed as separate chunks (words if only one).

    With `gate`, the server sends the first piece, then waits for the gate before the rest.
    """

    pieces: tuple[str, ...]
    gate: threading.Event | None = None

    def __init__(self, *pieces: str, gate: threading.Event | None = None) -> None:
        if len(pieces) == 1:
            words = pieces[0].split(" ")
            pieces = tuple(w + " " for w in words[:-1]) + (words[-1],)
        object.__setattr__(self, "pieces", pieces)
        object.__setattr__(self, "gate", gate)


@dataclass(frozen=True)
class Call:
    """One tool call; `arguments` is a dict (sent as JSON) or a raw string (sent as is)."""

    name: str
    arguments: dict[str, Any] | str = field(default_factory=dict)

    @property
    def raw_arguments(self) -> str:
        if isinstance(self.arguments, str):
            return self.arguments
        return json.dumps(self.arguments)


@dataclass(frozen=True)
class ToolCalls:
    """An assistant turn that calls tools, optionally saying `text` first."""

    calls: tuple[Call, ...]
    text: str = ""

    def __init__(self, *calls: Call, text: str = "") -> None:
        object.__setattr__(self, "calls", calls)
        object.__setattr__(self, "text", text)


@dataclass(frozen=True)
class Fault:
    """A broken answer: an HTTP `status`, a `hang` until the server stops, or `garbage` bytes."""

    kind: str
    status: int = 500

    @classmethod
    def error(cls, status: int = 500) -> Fault:
        return cls("status", status)

    @classmethod
    def hang(cls) -> Fault:
        return cls("hang")

    @classmethod
    def garbage(cls) -> Fault:
        return cls("garbage")


Answer = Text | ToolCalls | Fault
Scripted = Answer | Callable[[list[dict[str, Any]]], Answer]


class FakeLLM:
    """The server; runs uvicorn in a background thread on 127.0.0.1 and a free port."""

    def __init__(self, *, model: str = "fake-model") -> None:
        self.model = model
        self.requests: list[dict[str, Any]] = []
        self.headers: list[dict[str, str]] = []  # each request's headers, names in lower case
        self._script: list[Scripted] = []
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        app = Starlette(routes=[Route("/v1/chat/completions", self._completions, methods=["POST"])])
        self._loop_server = LoopbackServer(app, name="fake LLM server")
        _no_nagle(self._loop_server)
        self.port = self._loop_server.port

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self) -> FakeLLM:
        self._loop_server.start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        self._loop_server.stop()

    def script(self, *responses: Scripted) -> None:
        """Replace the script: the next requests get these responses, in order."""
        with self._lock:
            self._script = list(responses)

    @property
    def remaining(self) -> int:
        with self._lock:
            return len(self._script)

    # ---- what the tests inspect -------------------------------------------------------------

    def system_prompt(self, request: int = 0) -> str:
        return str(self.requests[request]["messages"][0]["content"])

    def tool_results(self, request: int = -1) -> list[dict[str, Any]]:
        """The tool messages of a request, their `content` parsed as JSON."""
        return [
            json.loads(m["content"])
            for m in self.requests[request]["messages"]
            if m["role"] == "tool"
        ]

    # ---- the endpoint -----------------------------------------------------------------------

    async def _completions(self, request: Request) -> Response:
        body = await request.json()
        with self._lock:
            self.requests.append(body)
            self.headers.append(dict(request.headers))
            scripted = self._script.pop(0) if self._script else None
        if scripted is None:
            return _error(500, "the fake LLM's script is exhausted")
        answer = scripted(body["messages"]) if callable(scripted) else scripted
        if isinstance(answer, Fault):
            return await self._fault(answer)
        if body.get("stream"):
            return StreamingResponse(self._chunks(answer), media_type="text/event-stream")
        return JSONResponse(self._completion(answer))

    async def _fault(self, fault: Fault) -> Response:
        if fault.kind == "status":
            return _error(fault.status, "the server had an error while processing your request")
        if fault.kind == "hang":
            await asyncio.to_thread(self._stopping.wait, 30)
            return _error(503, "hung")
        return PlainTextResponse("data: {not json at all\n\n", media_type="text/event-stream")

    def _chunk(self, delta: dict[str, Any], finish: str | None = None) -> str:
        chunk = {
            "id": "chatcmpl-fake",
            "object": "chat.completion.chunk",
            "created": int(time.time()),
            "model": self.model,
            "system_fingerprint": None,
            "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
        }
        return f"data: {json.dumps(chunk)}\n\n"

    async def _chunks(self, answer: Text | ToolCalls) -> AsyncIterator[str]:
        yield self._chunk({"role": "assistant", "content": ""})
        if isinstance(answer, Text):
            for i, piece in enumerate(answer.pieces):
                yield self._chunk({"content": piece})
                if i == 0 and answer.gate is not None:
                    await asyncio.to_thread(answer.gate.wait, 10)
            yield self._chunk({}, "stop")
        else:
            if answer.text:
                yield self._chunk({"content": answer.text})
            for index, call in enumerate(answer.calls):
                yield self._chunk(
                    {
                        "tool_calls": [
                            {
                                "index": index,
                                "id": f"call_{len(self.requests)}_{index}",
                                "type": "function",
                                "function": {"name": call.name, "arguments": ""},
                            }
                        ]
                    }
                )
                raw = call.raw_arguments
                step = max(1, len(raw) // 3)
                for start in range(0, len(raw), step):
                    yield self._chunk(
                        {
                            "tool_calls": [
                                {
                                    "index": index,
                                    "function": {"arguments": raw[start : start + step]},
                                }
                            ]
                        }
                    )
            yield self._chunk({}, "tool_calls")
        yield "data: [DONE]\n\n"

    def _completion(self, answer: Text | ToolCalls) -> dict[str, Any]:
        message: dict[str, Any] = {"role": "assistant", "content": None, "refusal": None}
        if isinstance(answer, Text):
            message["content"] = "".join(answer.pieces)
            finish = "stop"
        else:
            message["content"] = answer.text or None
            message["tool_calls"] = [
                {
                    "id": f"call_{len(self.requests)}_{i}",
                    "type": "function",
                    "function": {"name": c.name, "arguments": c.raw_arguments},
                }
                for i, c in enumerate(answer.calls)
            ]
            finish = "tool_calls"
        return {
            "id": "chatcmpl-fake",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": self.model,
            "choices": [
                {"index": 0, "message": message, "logprobs": None, "finish_reason": finish}
            ],
            "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
        }


def _no_nagle(server: LoopbackServer) -> None:
    """Send each streamed chunk at once, as an instant LLM would.

    asyncio only sets TCP_NODELAY on sockets whose `proto` is IPPROTO_TCP, and the loopback
    server's socket is made with proto 0; without it, Nagle's algorithm holds every chunk after
    the first until the client's delayed ACK (40 ms on Linux). Accepted connections inherit the
    option from the listening socket.
    """
    server._sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse(
        {"error": {"message": message, "type": "server_error", "param": None, "code": None}},
        status_code=status,
    )
