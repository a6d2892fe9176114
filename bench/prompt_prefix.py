"""How much of each model request a prompt cache can serve: the common prefix, in tokens.

OpenAI, and llama.cpp and vLLM servers, serve the longest prompt prefix they have seen from
cache, so the share of a request's tokens that repeats an earlier request's opening is time the
model does not spend. This runs the real agent (the engine, its tools, the demo business on
SQLite) against the fake OpenAI server, records the requests it sends, and prints:

- between two turns of one call (the second turn's request against the first's),
- between two calls of the business (another caller, 17 minutes later: prompt caches keep a
  prefix for minutes, up to an hour),

the share of the later request's tokens that is a common prefix with the earlier one. Targets:
above 90% for both. Tokens are OpenAI's o200k_base encoding (`bpe-openai`, tiktoken-compatible,
with its tables bundled, so it runs offline). A request is tokenized in the order a chat template
lays it out: the tool schemas, then each message's role, content and tool calls.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from tempfile import TemporaryDirectory
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

TARGET = 0.90
NOW = datetime(2026, 12, 7, 14, 5, tzinfo=UTC)  # a Monday, 09:05 in New York


def rendered(request: dict[str, Any]) -> str:
    """The request as a chat template lays it out before tokenizing."""
    parts = [json.dumps(request.get("tools") or [], separators=(",", ":"), sort_keys=False)]
    for message in request["messages"]:
        parts.append(f"<|{message['role']}|>")
        parts.append(str(message.get("content") or ""))
        if message.get("tool_calls"):
            parts.append(json.dumps(message["tool_calls"], separators=(",", ":")))
    return "\n".join(parts)


def prefix_share(earlier: list[int], later: list[int]) -> float:
    """The share of `later` that is a common prefix with `earlier`."""
    same = 0
    for a, b in zip(earlier, later, strict=False):
        if a != b:
            break
        same += 1
    return same / len(later)


async def record_requests(database_url: str) -> list[dict[str, Any]]:
    """Two turns of one call (the first with a round of slot search), then another caller's
    first turn 17 minutes later; the requests the agent sent, in order."""
    import openai

    from agent.engine import CallContext, Conversation
    from booking.business_file import import_business, load_business_file
    from booking.clock import FixedClock
    from booking.db import make_engine, migrate
    from booking.scheduler import Scheduler
    from frontdesk.cli import DEMO_BUSINESS
    from tests.fakes.llm_server import Call, FakeLLM, Text, ToolCalls

    engine = make_engine(database_url)
    migrate(engine)
    business_id = import_business(engine, load_business_file(DEMO_BUSINESS)).business_id
    llm = FakeLLM().start()
    client = openai.AsyncOpenAI(base_url=llm.base_url, api_key="bench", max_retries=0)
    try:
        day = (NOW + timedelta(days=2)).date().isoformat()
        llm.script(
            ToolCalls(Call("check_availability", {"service": "cleaning", "date": day})),
            Text("I have 9 AM or 10:30 AM on Wednesday. Which suits you?"),
            Text("Great. Can I have your name?"),
            Text("Hello! How can I help?"),
        )

        def conversation(caller: str | None, now: datetime) -> Conversation:
            return Conversation(
                scheduler=Scheduler(engine=engine, clock=FixedClock(now)),
                llm=client,
                model="fake-model",
                clock=FixedClock(now),
                context=CallContext(
                    business_id=business_id, caller_phone=caller, call_id=None, channel="relay"
                ),
            )

        first = conversation("+12025550123", NOW)
        async for _ in first.reply("Hi, I'd like a cleaning on Wednesday."):
            pass
        async for _ in first.reply("10:30 please."):
            pass
        other = conversation("+13125550199", NOW + timedelta(minutes=17))
        async for _ in other.reply("Hi, do you do whitening?"):
            pass
        return list(llm.requests)
    finally:
        await client.close()
        llm.stop()
        engine.dispose()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="the same run (it takes a second)")
    parser.parse_args()
    import bpe_openai

    encoding = bpe_openai.get_encoding("o200k_base")
    with TemporaryDirectory(prefix="frontdesk-bench-") as tmp:
        requests = asyncio.run(record_requests(f"sqlite:///{Path(tmp) / 'prefix.db'}"))
    tokens = [encoding.encode(rendered(r)) for r in requests]
    # requests: call 1 turn 1 (before and after its tool round), call 1 turn 2, call 2 turn 1.
    turn_one, turn_two, other_call = tokens[1], tokens[2], tokens[3]
    within = prefix_share(turn_one, turn_two)
    across = prefix_share(tokens[0], other_call)
    print(
        "prompt tokens (o200k_base) a prefix cache can serve, the real engine and the demo "
        "business, tool schemas then messages"
    )
    print(f"request sizes (tokens): {', '.join(f'{len(t):,}' for t in tokens)}")
    ok = True
    for name, share in (
        ("two turns of one call", within),
        ("two calls of one business", across),
    ):
        met = share > TARGET
        ok = ok and met
        print(
            f"{name:28s} {share * 100:5.1f}% common prefix "
            f"(target > {TARGET * 100:.0f}%): {'ok' if met else 'BELOW TARGET'}"
        )
    if not ok:
        print("a target was missed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
