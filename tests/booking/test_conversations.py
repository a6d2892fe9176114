"""The conversation store: compare-and-set saves, idle listing and a once-only end, on SQLite and
PostgreSQL, also with two workers racing."""

from __future__ import annotations

import asyncio
import multiprocessing as mp
import threading
from datetime import timedelta

import pytest
from sqlalchemy.engine import Engine

from booking.clock import FixedClock
from booking.conversations import (
    ConversationStore,
    StaleConversation,
    call_key,
    chat_key,
)
from booking.db import make_engine, session_scope
from booking.models import Call
from tests.conftest import NOW


def _call(engine: Engine) -> str:
    with session_scope(engine, write=True) as s:
        row = Call(business_id="clinic", call_sid="CA-conv", started_at=NOW)
        s.add(row)
        s.flush()
        return row.id


def _store(engine: Engine, at=NOW) -> ConversationStore:  # type: ignore[no-untyped-def]
    return ConversationStore.over(engine, FixedClock(at))


async def _save(store: ConversationStore, key: str, version: int, **state: object) -> int:
    return await store.save(
        key, business_id="clinic", call_id=None, channel="web", state=dict(state), version=version
    )


def test_keys() -> None:
    assert call_key("call_1") == "call:call_1"
    assert chat_key("abc") == "web:abc"


async def test_save_and_load_round_trip(clinic: Engine) -> None:
    store = _store(clinic)
    assert await store.load("web:x") is None
    assert await store.version("web:x") is None
    state = {"messages": [{"role": "user", "content": "hé"}], "n": 1, "none": None}
    assert await _save(store, "web:x", 0, **state) == 1
    got = await store.load("web:x")
    assert got is not None
    assert (got.key, got.business_id, got.call_id, got.channel) == ("web:x", "clinic", None, "web")
    assert got.version == 1 and got.state == state
    assert got.updated_at == NOW and got.ended_at is None
    assert await _save(store, "web:x", 1, n=2) == 2
    assert await store.version("web:x") == 2
    got = await store.load("web:x")
    assert got is not None and got.state == {"n": 2}


async def test_a_stale_version_is_refused(clinic: Engine) -> None:
    store = _store(clinic)
    await _save(store, "web:x", 0, n=1)
    await _save(store, "web:x", 1, n=2)
    with pytest.raises(StaleConversation):
        await _save(store, "web:x", 1, n=99)  # another worker already wrote version 2
    with pytest.raises(StaleConversation):
        await _save(store, "web:x", 0, n=99)  # a second "first" save
    with pytest.raises(StaleConversation):
        await _save(store, "web:missing", 3, n=1)  # no such row
    got = await store.load("web:x")
    assert got is not None and got.version == 2 and got.state == {"n": 2}


async def test_two_concurrent_first_saves_one_wins(clinic: Engine, db_url: str) -> None:
    other = make_engine(db_url)
    try:
        a, b = _store(clinic), _store(other)
        for i in range(10):
            key = f"web:race{i}"
            results = await asyncio.gather(
                _save(a, key, 0, who="a"), _save(b, key, 0, who="b"), return_exceptions=True
            )
            assert sorted(type(r).__name__ for r in results) == ["StaleConversation", "int"]
            winner = "a" if results[0] == 1 else "b"
            got = await a.load(key)
            assert got is not None and got.version == 1 and got.state == {"who": winner}
    finally:
        other.dispose()


async def test_two_concurrent_updates_of_one_version_one_wins(clinic: Engine, db_url: str) -> None:
    other = make_engine(db_url)
    try:
        a, b = _store(clinic), _store(other)
        await _save(a, "web:u", 0, n=0)
        results = await asyncio.gather(
            _save(a, "web:u", 1, who="a"), _save(b, "web:u", 1, who="b"), return_exceptions=True
        )
        assert sorted(type(r).__name__ for r in results) == ["StaleConversation", "int"]
        assert await a.version("web:u") == 2
    finally:
        other.dispose()


async def test_idle_lists_unended_oldest_first_up_to_limit(clinic: Engine) -> None:
    for minutes, key in [(30, "web:c"), (10, "web:a"), (20, "web:b"), (50, "web:new")]:
        await _save(_store(clinic, NOW + timedelta(minutes=minutes)), key, 0, k=key)
    store = _store(clinic)
    await _save(_store(clinic, NOW), "web:ended", 0)
    assert await store.end("web:ended")
    before = NOW + timedelta(minutes=40)
    idle = await store.idle(before=before)
    assert [c.key for c in idle] == ["web:a", "web:b", "web:c"]
    assert idle[0].state == {"k": "web:a"}
    assert [c.key for c in await store.idle(before=before, limit=2)] == ["web:a", "web:b"]
    assert await store.idle(before=NOW) == []


async def test_end_is_true_exactly_once(clinic: Engine) -> None:
    store = _store(clinic)
    assert not await store.end("web:never-saved")
    await _save(store, "web:e", 0)
    assert await store.end("web:e")
    assert not await store.end("web:e")
    got = await store.load("web:e")
    assert got is not None and got.ended_at == NOW


def test_end_racing_from_two_threads_claims_once(clinic: Engine, db_url: str) -> None:
    keys = [f"web:end{i}" for i in range(20)]

    async def seed() -> None:
        for key in keys:
            await _save(_store(clinic), key, 0)

    asyncio.run(seed())
    wins: list[str] = []
    lock = threading.Lock()
    barrier = threading.Barrier(2)

    def worker() -> None:
        engine = make_engine(db_url)
        store = _store(engine)
        try:
            for key in keys:
                barrier.wait(timeout=30)
                if asyncio.run(store.end(key)):
                    with lock:
                        wins.append(key)
        finally:
            engine.dispose()

    threads = [threading.Thread(target=worker) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert sorted(wins) == sorted(keys)


def _end_all(url: str, barrier, keys: list[str], results) -> None:  # type: ignore[no-untyped-def]
    """One worker process: try to end every conversation, at the same moment as the other."""
    engine = make_engine(url)
    store = _store(engine)
    try:
        won = []
        for key in keys:
            barrier.wait(timeout=60)
            if asyncio.run(store.end(key)):
                won.append(key)
        results.put(won)
    except Exception as exc:  # reported to the test, which fails on it
        results.put(f"error: {type(exc).__name__}: {exc}")
    finally:
        engine.dispose()


def test_end_racing_from_two_processes_claims_once(clinic: Engine, db_url: str) -> None:
    keys = [f"call:proc{i}" for i in range(15)]

    async def seed() -> None:
        for key in keys:
            await _save(_store(clinic), key, 0)

    asyncio.run(seed())
    ctx = mp.get_context("spawn")
    barrier, results = ctx.Barrier(2), ctx.Queue()
    procs = [ctx.Process(target=_end_all, args=(db_url, barrier, keys, results)) for _ in range(2)]
    for p in procs:
        p.start()
    reports = [results.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(timeout=30)
    assert all(isinstance(r, list) for r in reports), reports
    won = [key for report in reports for key in report]
    assert sorted(won) == sorted(keys)  # every conversation ended, each by exactly one process


async def test_idle_chats_are_ended_and_old_ended_conversations_purged(clinic: Engine) -> None:
    early = _store(clinic, NOW - timedelta(hours=3))
    await _save(early, "web:old", 0, n=1)
    await _save(early, "web:50%_x", 0, n=1)
    await _save(early, "call:c1", 0, n=1)
    store = _store(clinic)
    await _save(store, "web:new", 0, n=1)
    before = NOW - timedelta(hours=2)
    assert await store.end_idle(prefix="web:5_%", before=before) == 0  # not a LIKE pattern
    assert await store.end_idle(prefix="web:", before=before) == 2
    assert (await store.load("web:old")).ended_at == NOW  # type: ignore[union-attr]
    assert (await store.load("web:new")).ended_at is None  # type: ignore[union-attr]
    assert (await store.load("call:c1")).ended_at is None  # type: ignore[union-attr]
    later = _store(clinic, NOW + timedelta(days=8))
    assert await later.purge(ended_before=NOW + timedelta(days=1)) == 2
    assert await store.load("web:old") is None
    assert await store.load("web:new") is not None and await store.load("call:c1") is not None
