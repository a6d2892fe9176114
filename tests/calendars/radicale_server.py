"""A real Radicale CalDAV server on loopback, for tests of the CalDAV provider.

Runs `python -m radicale` in a subprocess with its own config: storage under a temporary
folder, htpasswd logins in plain text (so a wrong password is really refused) and `owner_only`
rights. `start_radicale` waits until the port accepts connections; `RadicaleServer.stop` kills
the process.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

USERNAME = "lee"
PASSWORD = "s3cret-app-password"


@dataclass
class RadicaleServer:
    process: subprocess.Popen[bytes]
    port: int
    log: Path

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def principal_url(self) -> str:
        return f"{self.base_url}/{USERNAME}/"

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(timeout=10)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_radicale(folder: Path, *, timeout: float = 20.0) -> RadicaleServer:
    """Start Radicale with its storage and config in `folder`; wait until it listens."""
    folder.mkdir(parents=True, exist_ok=True)
    users = folder / "users"
    users.write_text(f"{USERNAME}:{PASSWORD}\n")
    port = free_port()
    config = folder / "config"
    config.write_text(
        "\n".join(
            [
                "[server]",
                f"hosts = 127.0.0.1:{port}",
                "[auth]",
                "type = htpasswd",
                f"htpasswd_filename = {users}",
                "htpasswd_encryption = plain",
                # Radicale waits a second after a refused login by default; tests need no delay.
                "delay = 0",
                "[rights]",
                "type = owner_only",
                "[storage]",
                f"filesystem_folder = {folder / 'collections'}",
                "[logging]",
                "level = warning",
                "mask_passwords = True",
                "",
            ]
        )
    )
    log = folder / "radicale.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "radicale", "--config", str(config)],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    server = RadicaleServer(process=process, port=port, log=log)
    try:
        _wait_for_port(server, timeout)
    except BaseException:
        server.stop()
        raise
    return server


def _wait_for_port(server: RadicaleServer, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if server.process.poll() is not None:
            raise RuntimeError(f"Radicale exited early:\n{server.log.read_text()}")
        try:
            with socket.create_connection(("127.0.0.1", server.port), timeout=0.5):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"Radicale did not listen within {timeout:g} s:\n{server.log.read_text()}"
                ) from None
            # Polling the port: a refused connection returns at once, so pause between tries.
            time.sleep(0.05)
