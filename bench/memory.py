"""Memory: what a live ConversationRelay call costs the server, and that nothing grows as calls
come and go.

The app runs as shipped (durable calls, SQLite) in a child process under uvicorn, with the tests'
fake Chat Completions server in another; the simulated Twilio (signed webhook, signed relay
socket) in this one. The server's resident memory (VmRSS from /proc) is read:
- idle, after a warm-up of 20 calls;
- with `--live` calls (200) connected at once, each after one answered turn: the footprint per
  live call is the difference over the count;
- after those hang up, and after each wave of `--live` calls that come, take two turns and go,
  until `--calls` (1,000) have: the RSS and the Python heap's live blocks after a full
  collection (`sys.getallocatedblocks()`, read through the bench wrapper). Targets from the
  first wave to the last: the heap grows by under 2 blocks a call (a call left behind keeps
  hundreds: its session, history, locks), the RSS by under 10 MB, and no call is still active
  (`frontdesk_active_calls` in /metrics is 0). The RSS also holds what is not Python's: each
  pooled SQLite connection's page cache (2 MB at most by SQLite's default) fills as the
  database file grows with every call's lead and transcript, so it creeps towards a bound.

    .venv/bin/python bench/memory.py [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import sys
from pathlib import Path
from tempfile import TemporaryDirectory
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # tests.fakes: the fake LLM and the simulated Twilio

import _setup  # noqa: E402
import turn_latency  # noqa: E402
from turn_latency import BUSINESS_ID, NUMBER, TOKEN, fake_llm, free_port, serve  # noqa: E402

GROWTH_TARGET_MB = 10.0
BLOCKS_PER_CALL_TARGET = 2.0
SAY = "I'd like to book a consultation."


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for {pid}")


async def one_call(twilio: Any, n: int, *, turns: int, hold: asyncio.Event | None) -> None:
    sid, caller, twiml = await turn_latency.ring(twilio, n)
    async with twilio.relay(
        twiml.relay_url, call_sid=sid, from_number=caller, to_number=NUMBER
    ) as relay:
        for _ in range(turns):
            turn = await relay.say(SAY, wait=60)
            assert turn.text, "no answer"
        if hold is not None:
            await hold.wait()
    await twilio.post("/twilio/status", CallSid=sid, From=caller, To=NUMBER, CallStatus="completed")


async def active_calls(twilio: Any) -> float:
    page = await twilio.http.get("/metrics", headers={"Authorization": "Bearer bench"})
    for line in page.text.splitlines():
        if line.startswith("frontdesk_active_calls "):
            return float(line.split()[1])
    return 0.0


async def heap_blocks(twilio: Any) -> int:
    """Live Python heap blocks in the server after a full collection; clears the turn samples
    the bench wrapper keeps, which would otherwise grow with every turn."""
    response = await twilio.http.delete("/_bench")
    return int(response.json()["blocks"])


async def drive(port: int, pid: int, live: int, calls: int) -> bool:
    from tests.fakes.twilio_voice import FakeTwilioVoice

    twilio = FakeTwilioVoice(
        app_url=f"http://127.0.0.1:{port}", public_url=f"http://127.0.0.1:{port}", auth_token=TOKEN
    )
    try:
        await turn_latency._wait_until_up(twilio)
        n = 0
        for _ in range(20):  # warm-up: imports, caches, pools
            await one_call(twilio, n, turns=1, hold=None)
            n += 1
        await asyncio.sleep(1)
        idle = rss_mb(pid)
        hold = asyncio.Event()
        waiting = [
            asyncio.create_task(one_call(twilio, n + i, turns=1, hold=hold)) for i in range(live)
        ]
        n += live
        for _ in range(600):  # until every socket is open and past its turn (2 min at most)
            if await active_calls(twilio) >= live:
                break
            await asyncio.sleep(0.2)
        await asyncio.sleep(1)
        with_live = rss_mb(pid)
        hold.set()
        await asyncio.gather(*waiting)
        per_call_kb = (with_live - idle) * 1024 / live
        print(f"server RSS idle {idle:.1f} MB; with {live} live calls {with_live:.1f} MB")
        print(f"a live call's footprint: {per_call_kb:.0f} KB")
        waves: list[float] = []
        blocks: list[int] = []
        done = live
        while done < calls:
            size = min(live, calls - done)
            await asyncio.gather(
                *(one_call(twilio, n + i, turns=2, hold=None) for i in range(size))
            )
            n += size
            done += size
            await asyncio.sleep(1)
            blocks.append(await heap_blocks(twilio))
            waves.append(rss_mb(pid))
            print(
                f"  after {done:5d} calls: RSS {waves[-1]:.1f} MB, "
                f"Python heap {blocks[-1]:,} blocks"
            )
        left = await active_calls(twilio)
        growth = waves[-1] - waves[0]
        between = max(done - live - min(live, calls - live), 1)  # calls from the first wave on
        per_call = (blocks[-1] - blocks[0]) / between
        ok = growth < GROWTH_TARGET_MB and per_call < BLOCKS_PER_CALL_TARGET and left == 0
        print(
            f"from the first wave to the last ({between} calls): Python heap "
            f"{blocks[-1] - blocks[0]:+,} blocks, {per_call:+.2f} a call (target < "
            f"{BLOCKS_PER_CALL_TARGET:g}); RSS {growth:+.1f} MB (target < "
            f"{GROWTH_TARGET_MB:.0f} MB); calls still active: {left:.0f} (target 0): "
            f"{'ok' if ok else 'MISSED'}"
        )
        return ok
    finally:
        await twilio.aclose()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="50 live calls, 300 in all")
    parser.add_argument("--live", type=int, default=200)
    parser.add_argument("--calls", type=int, default=1000)
    args = parser.parse_args()
    live, calls = (50, 300) if args.quick else (args.live, args.calls)

    from booking.db import make_engine, migrate

    spawn = multiprocessing.get_context("spawn")
    with TemporaryDirectory(prefix="frontdesk-bench-") as tmp:
        url = f"sqlite:///{Path(tmp) / 'bench-memory.db'}"
        engine = make_engine(url)
        migrate(engine)
        _setup.seed_business(engine, BUSINESS_ID, staff_count=3)
        engine.dispose()
        llm_end, child_end = spawn.Pipe()
        llm = spawn.Process(target=fake_llm, args=(child_end, (calls + 40) * 3), daemon=True)
        llm.start()
        llm_url = llm_end.recv()
        port = free_port()
        server = spawn.Process(target=serve, args=(port, url, llm_url, "durable"), daemon=True)
        server.start()
        try:
            assert server.pid is not None
            ok = asyncio.run(drive(port, server.pid, live, calls))
        finally:
            server.terminate()
            server.join(10)
            llm_end.send("stop")
            llm.join(10)
    if not ok:
        print("a target was missed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
