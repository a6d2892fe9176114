"""SQLite writers in one process queue on one writer thread, and readers never wait behind them."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import pytest
from sqlmodel import Session

from booking.db import in_session, make_engine, migrate, session_scope


@pytest.fixture
def engine(tmp_path: Path):
    engine = make_engine(f"sqlite:///{tmp_path / 'writers.db'}")
    migrate(engine)
    yield engine
    engine.dispose()


async def test_async_writes_run_one_at_a_time_on_one_thread(engine) -> None:
    active, most, threads = 0, 0, set()
    guard = threading.Lock()

    def write(_: Session) -> None:
        nonlocal active, most
        with guard:
            active += 1
            most = max(most, active)
            threads.add(threading.current_thread().name)
        threading.Event().wait(0.002)
        with guard:
            active -= 1

    await asyncio.gather(*(in_session(engine, write, write=True) for _ in range(20)))
    assert most == 1
    assert len(threads) == 1 and next(iter(threads)).startswith("sqlite-writer")


async def test_a_read_does_not_wait_for_a_write_in_progress(engine) -> None:
    started, release = threading.Event(), threading.Event()

    def slow_write(_: Session) -> None:
        started.set()
        release.wait(10)

    writing = asyncio.ensure_future(in_session(engine, slow_write, write=True))
    await asyncio.to_thread(started.wait, 10)
    try:
        value = await asyncio.wait_for(
            in_session(engine, lambda s: s.connection().exec_driver_sql("SELECT 7").scalar()), 5
        )
        assert value == 7
        assert not writing.done()
    finally:
        release.set()
        await writing


def test_threads_writing_directly_take_turns(engine) -> None:
    active, most = 0, 0
    guard = threading.Lock()

    def worker() -> None:
        nonlocal active, most
        for _ in range(5):
            with session_scope(engine, write=True):
                with guard:
                    active += 1
                    most = max(most, active)
                threading.Event().wait(0.001)
                with guard:
                    active -= 1

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert most == 1


def test_a_failed_write_releases_the_turn(engine) -> None:
    with pytest.raises(RuntimeError), session_scope(engine, write=True):
        raise RuntimeError("boom")
    done = threading.Event()

    def other() -> None:
        with session_scope(engine, write=True):
            done.set()

    t = threading.Thread(target=other)
    t.start()
    t.join(5)
    assert done.is_set()
