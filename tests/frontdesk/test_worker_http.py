"""`frontdesk worker --metrics-port`: the job worker's own /healthz, /readyz and /metrics (behind
the API key), in a real process that SIGTERM stops cleanly."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from booking.db import make_engine, migrate
from frontdesk.cli import main

KEY = "worker-metrics-key"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_up(url: str, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        assert proc.poll() is None, log.read_text()
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise AssertionError(f"the worker did not come up:\n{log.read_text()}")


def test_the_worker_serves_its_job_metrics_behind_the_key_and_stops_on_sigterm(
    tmp_path: Path,
) -> None:
    db = tmp_path / "worker.db"
    engine = make_engine(f"sqlite:///{db}")
    migrate(engine)
    engine.dispose()
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("FRONTDESK_")}
    env |= {
        "FRONTDESK_ENV_FILE": "",
        "FRONTDESK_DATABASE_URL": f"sqlite:///{db}",
        "FRONTDESK_API_KEY": KEY,
        "FRONTDESK_WORKER_METRICS_PORT": str(port),
    }
    log = tmp_path / "worker.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-c",
                "from frontdesk.cli import main; raise SystemExit(main())",
                "worker",
            ],
            env=env,
            cwd=tmp_path,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        base = f"http://127.0.0.1:{port}"
        _wait_up(f"{base}/healthz", proc, log)
        assert httpx.get(f"{base}/readyz", timeout=5).json() == {"status": "ready"}
        assert httpx.get(f"{base}/metrics", timeout=5).status_code == 401
        wrong = httpx.get(f"{base}/metrics", headers={"Authorization": "Bearer nope"}, timeout=5)
        assert wrong.status_code == 401
        deadline = time.monotonic() + 20
        while True:  # the jobs' first passes record their lag
            page = httpx.get(f"{base}/metrics", headers={"Authorization": f"Bearer {KEY}"})
            assert page.status_code == 200
            if "frontdesk_job_lag_seconds" in page.text and 'job="' in page.text:
                break
            assert time.monotonic() < deadline, page.text[:2000]
            time.sleep(0.2)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0, log.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_the_worker_needs_an_api_key_to_serve_metrics(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    db = tmp_path / "worker.db"
    monkeypatch.setenv("FRONTDESK_DATABASE_URL", f"sqlite:///{db}")
    monkeypatch.setenv("FRONTDESK_WORKER_METRICS_PORT", str(_free_port()))
    monkeypatch.chdir(tmp_path)
    assert main(["worker"]) != 0
    assert "FRONTDESK_API_KEY" in capsys.readouterr().err
