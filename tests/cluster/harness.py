"""Real `frontdesk serve` worker processes over one PostgreSQL database, behind a loopback proxy
that sends each new connection to the worker the test chooses (as a load balancer would), with
the fake LLM, the fake Twilio REST API and the simulated Twilio voice side in the test process.

Killing a worker (`Worker.kill`, SIGKILL) drops every connection the proxy carried to it, which
is what Twilio sees when the server behind its websocket dies.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from tests.fakes.llm_server import FakeLLM
from tests.fakes.twilio_rest import FakeTwilioRest
from tests.fakes.twilio_voice import FakeTwilioVoice

ACCOUNT_SID = "AC" + "1" * 32
TOKEN = "cluster-auth-token"
API_KEY = "cluster-api-key"
CLINIC = "+12025550100"
CALLER = "+12025554321"
SERVE = "from frontdesk.cli import main; raise SystemExit(main())"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Proxy:
    """A TCP proxy on 127.0.0.1: each accepted connection goes to `route()`'s worker port."""

    def __init__(self, route: Callable[[], int]) -> None:
        self.route = route
        self.port = 0
        self._server: asyncio.Server | None = None
        self._pipes: set[asyncio.Task[None]] = set()
        self.connections: list[int] = []  # the worker port of each connection, in order

    async def start(self) -> Proxy:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        port = self.route()
        self.connections.append(port)
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            writer.close()
            return
        for src, dst in ((reader, up_writer), (up_reader, writer)):
            task = asyncio.create_task(self._pipe(src, dst))
            self._pipes.add(task)
            task.add_done_callback(self._pipes.discard)

    @staticmethod
    async def _pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
        try:
            while data := await src.read(65536):
                dst.write(data)
                await dst.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            with contextlib.suppress(Exception):
                dst.close()

    async def aclose(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._pipes):
            task.cancel()
        await asyncio.gather(*self._pipes, return_exceptions=True)


@dataclass
class Worker:
    """One `frontdesk serve` process."""

    name: str
    env: dict[str, str]
    logs: Path
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None

    def start(self) -> Worker:
        log = (self.logs / f"{self.name}.log").open("ab")
        self.process = subprocess.Popen(
            [sys.executable, "-c", SERVE, "serve", "--port", str(self.port)],
            env=self.env,
            stdout=log,
            stderr=log,
        )
        log.close()
        return self

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def wait_ready(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.alive:
                raise AssertionError(f"{self.name} exited:\n{self.log_text()[-3000:]}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"http://127.0.0.1:{self.port}/readyz", timeout=1).status_code == 200:
                    return
            time.sleep(0.1)
        raise AssertionError(f"{self.name} not ready:\n{self.log_text()[-3000:]}")

    def kill(self) -> None:
        """kill -9: nothing in the process gets to run."""
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=10)

    def terminate(self, timeout: float = 30) -> int:
        """SIGTERM, as a deploy stops a worker; its exit code."""
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=timeout)

    def log_text(self) -> str:
        path = self.logs / f"{self.name}.log"
        return path.read_text(errors="replace") if path.exists() else ""


class Cluster:
    """Workers over one database behind the proxy; `target` names the worker new connections
    reach (None: round robin over the live ones)."""

    def __init__(self, env: dict[str, str], logs: Path, llm: FakeLLM, rest: FakeTwilioRest):
        self.base_env = env
        self.logs = logs
        self.llm = llm
        self.rest = rest
        self.workers: dict[str, Worker] = {}
        self.target: str | None = None
        self._turn = 0
        self.proxy = Proxy(self._route)
        self.twilio: FakeTwilioVoice | None = None

    def _route(self) -> int:
        if self.target is not None:
            return self.workers[self.target].port
        live = [w for w in self.workers.values() if w.alive]
        self._turn += 1
        return live[self._turn % len(live)].port

    async def start(self, names: list[str]) -> Cluster:
        await self.proxy.start()
        for name in names:
            self.add(name)
        await asyncio.gather(*(asyncio.to_thread(w.wait_ready) for w in self.workers.values()))
        self.twilio = FakeTwilioVoice(
            app_url=self.proxy.url, public_url=self.proxy.url, auth_token=TOKEN
        )
        # One connection per request, as Twilio's webhooks arrive: each may reach any worker.
        await self.twilio.http.aclose()
        self.twilio.http = httpx.AsyncClient(
            base_url=self.proxy.url,
            timeout=30,
            limits=httpx.Limits(max_keepalive_connections=0),
        )
        return self

    def env(self) -> dict[str, str]:
        return {
            **self.base_env,
            "FRONTDESK_PUBLIC_BASE_URL": self.proxy.url,
            "FRONTDESK_ALLOWED_HOSTS": "*",
            "FRONTDESK_API_KEY": API_KEY,
            "FRONTDESK_OPENAI_BASE_URL": self.llm.base_url,
            "FRONTDESK_OPENAI_API_KEY": "test",
            "FRONTDESK_LLM_MODEL": self.llm.model,
            "FRONTDESK_TWILIO_ACCOUNT_SID": ACCOUNT_SID,
            "FRONTDESK_TWILIO_AUTH_TOKEN": TOKEN,
            "FRONTDESK_TWILIO_API_BASE_URL": self.rest.base_url,
            "FRONTDESK_CALENDAR_SYNC_SECONDS": "0",
            "FRONTDESK_SHUTDOWN_GRACE_SECONDS": "10",
            "FRONTDESK_ENV_FILE": "",
        }

    def add(self, name: str) -> Worker:
        worker = Worker(name=name, env=self.env(), logs=self.logs).start()
        self.workers[name] = worker
        return worker

    def restart(self, name: str) -> Worker:
        old = self.workers[name]
        worker = Worker(name=name, env=old.env, logs=self.logs, port=old.port).start()
        self.workers[name] = worker
        return worker

    async def aclose(self) -> None:
        if self.twilio is not None:
            await self.twilio.aclose()
        for worker in self.workers.values():
            if worker.alive:
                with contextlib.suppress(Exception):
                    worker.terminate(timeout=15)
            if worker.alive:
                worker.kill()
        await self.proxy.aclose()

    def logs_text(self) -> str:
        return "\n".join(f"--- {n}\n{w.log_text()[-4000:]}" for n, w in self.workers.items())


def call_form(sid: str, **extra: str) -> dict[str, Any]:
    return {
        "CallSid": sid,
        "AccountSid": ACCOUNT_SID,
        "From": CALLER,
        "To": CLINIC,
        "CallStatus": "in-progress",
        **extra,
    }


def env_without_frontdesk() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("FRONTDESK_")}
