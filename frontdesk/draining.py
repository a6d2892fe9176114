"""A graceful stop: on SIGTERM a worker stops being ready, lets the turns in flight finish, then
stops the way uvicorn does.

uvicorn alone, on SIGTERM, at once stops listening and closes every open websocket (close code
1012, "service restart"), cutting a ConversationRelay answer mid-sentence. So the app's lifespan
puts this handler in front of uvicorn's: the first SIGTERM marks the worker draining (`/readyz`
answers 503, so a load balancer sends new calls elsewhere) and waits, at most `grace` seconds,
until no relay turn is running; then it hands the signal to uvicorn. uvicorn closes the relay
sockets (each saves its call on the way out, and Twilio reconnects to another worker), waits for
requests in flight and runs the lifespan's shutdown, which saves the calls still held. A second
signal skips the wait.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import threading
from collections.abc import Callable
from types import FrameType
from typing import Any

log = logging.getLogger(__name__)

RELAY_TURN = "relay turn"  # the name `telephony.relay` gives each turn's task


def relay_turns() -> set[asyncio.Task[Any]]:
    """This process's ConversationRelay turns in flight."""
    return {t for t in asyncio.all_tasks() if t.get_name() == RELAY_TURN and not t.done()}


class Drain:
    """The SIGTERM handler in front of uvicorn's (installed only from the main thread)."""

    def __init__(
        self,
        *,
        grace: float,
        on_drain: Callable[[], None],
        busy: Callable[[], set[asyncio.Task[Any]]] = relay_turns,
    ) -> None:
        self.grace = grace
        self.on_drain = on_drain
        self.busy = busy
        self.draining = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._previous: Any = None
        self._task: asyncio.Task[None] | None = None

    def install(self) -> bool:
        if threading.current_thread() is not threading.main_thread():
            return False  # signals are the main thread's (a server run in a test's thread)
        self._loop = asyncio.get_running_loop()
        self._previous = signal.signal(signal.SIGTERM, self._handle)
        return True

    def uninstall(self) -> None:
        if self._previous is not None and signal.getsignal(signal.SIGTERM) == self._handle:
            signal.signal(signal.SIGTERM, self._previous)
        self._previous = None
        if self._task is not None:
            self._task.cancel()

    def _handle(self, sig: int, frame: FrameType | None) -> None:
        if self.draining or self._loop is None:
            self._pass_on(sig, frame)  # a second signal: stop now
            return
        self.draining = True
        log.info("SIGTERM: draining (no new calls; waiting up to %ss for turns)", self.grace)
        self.on_drain()
        self._loop.call_soon_threadsafe(self._start, sig)

    def _start(self, sig: int) -> None:
        self._task = asyncio.ensure_future(self._drain(sig))

    async def _drain(self, sig: int) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.grace
        # Wait for the turns running, then for any that started meanwhile, until the deadline.
        while (turns := self.busy()) and (left := deadline - loop.time()) > 0:
            await asyncio.wait(turns, timeout=left)
        if self.busy():
            log.warning("turns still running after %ss; stopping anyway", self.grace)
        self._pass_on(sig, None)

    def _pass_on(self, sig: int, frame: FrameType | None) -> None:
        previous = self._previous
        if callable(previous):
            previous(sig, frame)
            return
        self.uninstall()  # no server handler before ours: the signal's default (exit)
        signal.raise_signal(sig)
