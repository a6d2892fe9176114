"""Turn latency on the ConversationRelay socket: from the caller's final `prompt` arriving at the
server to the first `text` token leaving it, with an instant LLM, at 1, 50 and 200 concurrent calls.

The app runs in a child process under uvicorn, as in production, over a SQLite file; the measuring
happens inside that process, in an ASGI wrapper around the app that timestamps the websocket's
`receive` of a final prompt and the next `send` of a text token (no changes to the app). The
simulated Twilio (signed webhook, signed websocket, setup, prompts) and the fake LLM server (the
tests' Chat Completions fake, answering at once) run in this process.

Calls are paced like phone calls: after the answer's last token a caller waits a random 3-6 s
(listening to the answer being spoken, then talking, then Twilio's end-of-speech detection) before
the next final prompt, so 200 calls means 200 open sockets with turns arriving at random (about 45
turns a second), not 200 prompts in the same millisecond. `--pause LO HI` changes that, to find
where the server saturates; `--quick` runs fewer turns with 0.5-1 s pauses (a heavier load).

    .venv/bin/python bench/turn_latency.py [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import random
import socket
import statistics
import sys
import time
from pathlib import Path
from tempfile import TemporaryDirectory
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # tests.fakes: the fake LLM and the simulated Twilio

import _setup  # noqa: E402
from _setup import Latency  # noqa: E402

TARGET_P99_MS = 20.0
TOKEN = "bench-auth-token"
NUMBER = "+12025550100"
BUSINESS_ID = "bench-turns"
ANSWER = "Sure, I can help with that. What day suits you?"


# ---- the server process -------------------------------------------------------------------


class TurnTimer:
    """ASGI wrapper timing final prompt → first text token per websocket; serves `/_bench`."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.samples: list[float] = []

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["path"] == "/_bench":
            await self._report(scope, send)
            return
        if scope["type"] != "websocket":
            await self.app(scope, receive, send)
            return
        started: list[float] = []

        async def timed_receive() -> Any:
            message = await receive()
            text = message.get("text") or ""
            if '"prompt"' in text and json.loads(text).get("last"):
                started.append(time.perf_counter())
            return message

        async def timed_send(message: Any) -> None:
            await send(message)
            if started and '"text"' in (message.get("text") or ""):
                self.samples.append(time.perf_counter() - started.pop())

        await self.app(scope, timed_receive, timed_send)

    async def _report(self, scope: Any, send: Any) -> None:
        body = json.dumps(self.samples).encode()
        if scope["method"] == "DELETE":
            self.samples = []
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"application/json")],
            }
        )
        await send({"type": "http.response.body", "body": body})


def serve(port: int, database_url: str, llm_url: str) -> None:
    """The child process: the real app, settings passed in, under uvicorn."""
    import logging

    import uvicorn
    from pydantic import SecretStr

    from frontdesk.app import create_app
    from frontdesk.settings import Settings

    logging.disable(logging.WARNING)
    settings = Settings(
        database_url=database_url,
        api_key=SecretStr("bench"),
        openai_base_url=llm_url,
        openai_api_key=SecretStr("bench"),
        llm_model="fake-model",
        twilio_auth_token=SecretStr(TOKEN),
        public_base_url=f"http://127.0.0.1:{port}",
        voice_mode="relay",
    )
    app = TurnTimer(create_app(settings))
    uvicorn.run(
        app, host="127.0.0.1", port=port, log_level="error", ws="websockets-sansio", lifespan="on"
    )


# ---- this process: callers ----------------------------------------------------------------


async def one_call(
    twilio: Any, n: int, turns: int, pause: tuple[float, float], rng: random.Random
) -> None:
    sid = f"CA{n:032d}"
    caller = f"+1718555{n:04d}"
    twiml = await twilio.post(
        "/twilio/voice", CallSid=sid, From=caller, To=NUMBER, CallStatus="ringing"
    )
    assert twiml.status == 200, twiml.xml
    await asyncio.sleep(rng.uniform(*pause))
    async with twilio.relay(
        twiml.relay_url, call_sid=sid, from_number=caller, to_number=NUMBER
    ) as relay:
        for _ in range(turns):
            turn = await relay.say("I'd like to book a consultation.", wait=30)
            assert turn.text, "no answer"
            await asyncio.sleep(rng.uniform(*pause))
    await twilio.post(
        "/twilio/status",
        CallSid=sid,
        From=caller,
        To=NUMBER,
        CallStatus="completed",
        CallDuration="30",
    )


async def run_level(
    twilio: Any, calls: int, turns: int, pause: tuple[float, float], first: int
) -> list[float]:
    await twilio.http.delete("/_bench")
    rng = random.Random(calls)
    await asyncio.gather(*(one_call(twilio, first + i, turns, pause, rng) for i in range(calls)))
    response = await twilio.http.delete("/_bench")
    samples: list[float] = response.json()
    return samples


async def drive(port: int, levels: list[int], turns: int, pause: tuple[float, float]) -> bool:
    from tests.fakes.twilio_voice import FakeTwilioVoice

    url = f"http://127.0.0.1:{port}"
    twilio = FakeTwilioVoice(app_url=url, public_url=url, auth_token=TOKEN)
    ok = True
    try:
        await _wait_until_up(twilio)
        first = 0
        for calls in levels:
            samples = await run_level(twilio, calls, turns, pause, first)
            first += calls
            latency = Latency(samples)
            met = latency.pct(99) < TARGET_P99_MS
            ok = ok and (met or calls != max(levels))
            rate = calls / statistics.fmean(pause)
            print(
                f"{calls:4d} calls (~{rate:3.0f} turns/s)  {latency.line()}"
                + ("" if calls != max(levels) else ("  ok" if met else "  ABOVE TARGET"))
            )
    finally:
        await twilio.aclose()
    return ok


def fake_llm(port_out: Any, answers: int) -> None:
    """A child process: the tests' fake Chat Completions server, answering at once."""
    from tests.fakes.llm_server import FakeLLM, Text

    llm = FakeLLM().start()
    llm.script(*[Text(ANSWER)] * answers)
    port_out.send(llm.base_url)
    port_out.recv()  # until the parent is done
    llm.stop()


async def _wait_until_up(twilio: Any) -> None:
    import httpx

    deadline = time.monotonic() + 20
    while True:
        try:
            await twilio.http.get("/_bench")
            return
        except httpx.TransportError:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.05)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a few seconds, for CI")
    parser.add_argument(
        "--pause",
        nargs=2,
        type=float,
        metavar=("LO", "HI"),
        help="seconds between a caller's turns (default 3 6; 0.5 1 with --quick)",
    )
    args = parser.parse_args()
    levels = [1, 50, 200]
    turns, pause = (2, (0.5, 1.0)) if args.quick else (4, (3.0, 6.0))
    if args.pause:
        pause = (args.pause[0], args.pause[1])

    from booking.db import make_engine, migrate

    spawn = multiprocessing.get_context("spawn")
    with TemporaryDirectory(prefix="frontdesk-bench-") as tmp:
        database_url = f"sqlite:///{Path(tmp) / 'bench.db'}"
        engine = make_engine(database_url)
        migrate(engine)
        _setup.seed_business(engine, BUSINESS_ID, staff_count=3)
        engine.dispose()
        # The fake LLM in a process of its own, so its work does not count as the server's.
        llm_end, child_end = spawn.Pipe()
        llm = spawn.Process(target=fake_llm, args=(child_end, sum(levels) * turns * 2), daemon=True)
        llm.start()
        llm_url = llm_end.recv()
        port = free_port()
        server = spawn.Process(target=serve, args=(port, database_url, llm_url), daemon=True)
        server.start()
        try:
            print(
                f"turn latency, final prompt → first text token, measured in the server; "
                f"{turns} turns per call, {pause[0]:g}-{pause[1]:g} s apart; "
                f"target p99 < {TARGET_P99_MS:.0f} ms at 200 calls"
            )
            ok = asyncio.run(drive(port, levels, turns, pause))
        finally:
            server.terminate()
            server.join(10)
            llm_end.send("stop")
            llm.join(10)
    if not ok:
        print("p99 above target")
    return 0


if __name__ == "__main__":
    sys.exit(main())
