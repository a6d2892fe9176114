"""The installed-package smoke test: what a user gets from `pip install frontdesk`, not the tree.

Builds the sdist and, from it, the wheel (so both must carry every file the packages read at run
time), installs the wheel into a fresh virtualenv in a temporary folder outside the source tree,
and from another temporary folder runs `<venv>/bin/frontdesk serve --demo`. Against that server:

  1. a signed Twilio voice webhook gets TwiML (200), a forged and an unsigned one get 403;
  2. one ConversationRelay call over the websocket, the agent answering through the scripted
     LLM (tests/fakes/llm_server.py, run here from the source tree: it is a test fake);
  3. `frontdesk users add` makes an owner, who logs in to the dashboard (CSRF token and all)
     and sees /leads.

Each check prints one line; the exit status is non-zero when any fails. Only the folders this
script made with tempfile.mkdtemp are deleted, at the end (`--keep` leaves them for a look).

    .venv/bin/python scripts/smoke_installed.py [--wheel dist/frontdesk-...whl] [--keep]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import date, timedelta
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.fakes.llm_server import Call, FakeLLM, Text, ToolCalls  # noqa: E402
from tests.fakes.twilio_voice import FakeTwilioVoice  # noqa: E402

AUTH_TOKEN = "smoke-test-auth-token"
ACCOUNT_SID = "AC" + "5" * 32
CLINIC = "+12025550100"  # the demo business's number (frontdesk/demo/demo-business.yaml)
CALLER = "+12025550123"
OWNER = "owner@example.com"
PASSWORD = "correct horse battery staple"
SERVER_START_SECONDS = 90


class CheckFailed(Exception):
    pass


def say(text: str) -> None:
    sys.stdout.write(f"smoke: {text}\n")
    sys.stdout.flush()


def run(
    cmd: list[str],
    *,
    cwd: Path,
    env: dict[str, str] | None = None,
    stdin: str | None = None,
    timeout: float = 900,
) -> str:
    """Run a command; its output is shown only when it fails."""
    done = subprocess.run(
        cmd,
        cwd=cwd,
        env=env,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if done.returncode != 0:
        raise CheckFailed(
            f"{' '.join(cmd)} exited {done.returncode}:\n{done.stdout[-4000:]}{done.stderr[-4000:]}"
        )
    return done.stdout


def build_wheel(out: Path) -> Path:
    run([sys.executable, "-m", "build", "--outdir", str(out), str(ROOT)], cwd=out.parent)
    [wheel] = out.glob("frontdesk-*.whl")
    return wheel


def install(wheel: Path, venv: Path) -> None:
    run([sys.executable, "-m", "venv", str(venv)], cwd=venv.parent)
    run(
        [
            str(venv / "bin" / "python"),
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            str(wheel),
        ],
        cwd=venv.parent,
    )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def server_env(base_url: str, llm_url: str, database: Path) -> dict[str, str]:
    """The environment of the installed commands: none of this shell's FRONTDESK_ settings, no
    dotenv file, a fake Twilio REST address (nothing may reach the real one)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("FRONTDESK_")}
    env.pop("PYTHONPATH", None)
    env.update(
        {
            "FRONTDESK_ENV_FILE": "",
            "FRONTDESK_DATABASE_URL": f"sqlite:///{database}",
            "FRONTDESK_PUBLIC_BASE_URL": base_url,
            "FRONTDESK_TWILIO_AUTH_TOKEN": AUTH_TOKEN,
            "FRONTDESK_TWILIO_ACCOUNT_SID": ACCOUNT_SID,
            "FRONTDESK_TWILIO_API_BASE_URL": "http://127.0.0.1:9",
            "FRONTDESK_OPENAI_BASE_URL": llm_url,
            "FRONTDESK_OPENAI_API_KEY": "smoke-test",
            "FRONTDESK_LLM_MODEL": "fake-model",
        }
    )
    return env


@contextmanager
def serving(
    frontdesk: Path, port: int, env: dict[str, str], cwd: Path, *extra: str
) -> Iterator[Path]:
    """`frontdesk serve --demo` until the block ends; yields the server's log file."""
    log = cwd / "server.log"
    with log.open("w") as out:
        server = subprocess.Popen(
            [str(frontdesk), "serve", "--demo", "--port", str(port), *extra],
            cwd=cwd,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    try:
        deadline = time.monotonic() + SERVER_START_SECONDS
        while True:
            if server.poll() is not None:
                raise CheckFailed(f"the server exited {server.returncode}:\n{log.read_text()}")
            try:
                if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise CheckFailed(
                    f"the server did not answer /healthz in "
                    f"{SERVER_START_SECONDS} s:\n{log.read_text()}"
                )
            time.sleep(0.2)
        yield log
    finally:
        server.terminate()
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait(timeout=10)


def check_installed(venv: Path, cwd: Path, env: dict[str, str]) -> None:
    """The packages import from the venv's site-packages, not from the source tree."""
    where = run(
        [
            str(venv / "bin" / "python"),
            "-c",
            "import dashboard, frontdesk; print(frontdesk.__file__); print(dashboard.__file__)",
        ],
        cwd=cwd,
        env=env,
    ).split()
    for path in where:
        if not Path(path).resolve().is_relative_to(venv.resolve()):
            raise CheckFailed(f"{path} is not inside the fresh venv {venv}")


async def check_voice(twilio: FakeTwilioVoice) -> str:
    form = {
        "CallSid": "CA" + "1" * 32,
        "From": CALLER,
        "To": CLINIC,
        "CallStatus": "ringing",
        "AccountSid": ACCOUNT_SID,
    }
    signed = await twilio.post("/twilio/voice", **form)
    if signed.status != 200 or signed.root is None:
        raise CheckFailed(f"signed POST /twilio/voice gave {signed.status}: {signed.xml[:500]}")
    relay_url = signed.relay_url
    forged = await twilio.post("/twilio/voice", signature="bm90IGEgc2lnbmF0dXJl", **form)
    unsigned = await twilio.post("/twilio/voice", signature=None, **form)
    if (forged.status, unsigned.status) != (403, 403):
        raise CheckFailed(
            f"forged and unsigned POST /twilio/voice gave {forged.status} and "
            f"{unsigned.status}, not 403"
        )
    return relay_url


async def check_relay(twilio: FakeTwilioVoice, llm: FakeLLM, relay_url: str) -> None:
    sid = "CA" + "2" * 32
    answer = await twilio.post(
        "/twilio/voice",
        CallSid=sid,
        From=CALLER,
        To=CLINIC,
        CallStatus="ringing",
        AccountSid=ACCOUNT_SID,
    )
    if answer.status != 200:
        raise CheckFailed(f"POST /twilio/voice for the relay call gave {answer.status}")
    monday = date.today() + timedelta(days=7 - date.today().weekday())
    llm.script(
        ToolCalls(Call("check_availability", {"service": "cleaning", "date": monday.isoformat()})),
        Text("Dr. Lee has an opening on Monday morning. Shall I book it?"),
    )
    async with twilio.relay(
        answer.relay_url, call_sid=sid, from_number=CALLER, to_number=CLINIC
    ) as relay:
        turn = await relay.say("Do you have a cleaning next Monday?", wait=30)
    if "opening on Monday" not in turn.text:
        raise CheckFailed(f"the relay call's answer was {turn.text!r} (end: {turn.end})")
    results = llm.tool_results(-1)
    if not results:
        raise CheckFailed("the agent did not send the availability tool result to the LLM")
    status = await twilio.post(
        "/twilio/status",
        CallSid=sid,
        From=CALLER,
        To=CLINIC,
        CallStatus="completed",
        CallDuration="20",
        AccountSid=ACCOUNT_SID,
    )
    if status.status != 204:
        raise CheckFailed(f"POST /twilio/status gave {status.status}: {status.xml[:300]}")


def check_workers(frontdesk: Path, env: dict[str, str], cwd: Path) -> None:
    """Two worker processes from the installed package (each imports `frontdesk.asgi`)."""
    port = free_port()
    env = {**env, "FRONTDESK_PUBLIC_BASE_URL": f"http://127.0.0.1:{port}"}
    with serving(frontdesk, port, env, cwd, "--workers", "2") as log:
        for _ in range(6):
            answer = httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=5)
            if answer.status_code != 200:
                raise CheckFailed(f"/readyz answered {answer.status_code}: {answer.text}")
        # uvicorn starts its workers one after another: the first may answer before the
        # second has finished importing on a slow machine, so wait for both.
        deadline = time.monotonic() + SERVER_START_SECONDS
        while len(set(re.findall(r"Started server process \[(\d+)\]", log.read_text()))) < 2:
            if time.monotonic() > deadline:
                text = log.read_text()
                raise CheckFailed(f"two worker processes did not start:\n{text[-3000:]}")
            time.sleep(0.2)


def check_login(frontdesk: Path, base_url: str, env: dict[str, str], cwd: Path) -> None:
    run(
        [
            str(frontdesk),
            "users",
            "add",
            "--business",
            "bright-smile",
            "--email",
            OWNER,
            "--role",
            "owner",
            "--password-stdin",
        ],
        cwd=cwd,
        env=env,
        stdin=PASSWORD + "\n",
        timeout=120,
    )
    with httpx.Client(base_url=base_url, timeout=30) as web:
        page = web.get("/login")
        token = re.search(r'name="csrf_token" value="([^"]+)"', page.text)
        if page.status_code != 200 or token is None:
            raise CheckFailed(f"GET /login gave {page.status_code} without a CSRF token")
        for asset in re.findall(r'(?:src|href)="([^"]*/static/[^"]+)"', page.text):
            got = web.get(asset)
            if got.status_code != 200:
                raise CheckFailed(f"the login page's {asset} gave {got.status_code}")
        login = web.post(
            "/login",
            data={
                "csrf_token": token.group(1),
                "next": "/leads",
                "email": OWNER,
                "password": PASSWORD,
            },
        )
        if login.status_code not in (302, 303):
            raise CheckFailed(f"POST /login gave {login.status_code}: {login.text[:300]}")
        leads = web.get("/leads")
        if leads.status_code != 200 or "Log in" in leads.text:
            raise CheckFailed(f"GET /leads after logging in gave {leads.status_code}")


def step(name: str, action: Callable[[], object]) -> None:
    started = time.monotonic()
    action()
    say(f"ok   {name} ({time.monotonic() - started:.1f} s)")


def smoke(work: Path, wheel: Path | None) -> None:
    started = time.monotonic()
    if wheel is None:
        (work / "dist").mkdir()
        wheel = build_wheel(work / "dist")
        say(f"ok   built {wheel.name} ({time.monotonic() - started:.1f} s)")
    venv, cwd = work / "venv", work / "run"
    cwd.mkdir()
    installing = time.monotonic()
    install(wheel, venv)
    install_seconds = time.monotonic() - installing
    say(f"ok   installed into a fresh venv outside the source tree ({install_seconds:.1f} s)")

    checking = time.monotonic()
    port = free_port()
    base_url = f"http://127.0.0.1:{port}"
    frontdesk = venv / "bin" / "frontdesk"
    llm = FakeLLM().start()
    try:
        env = server_env(base_url, llm.base_url, cwd / "frontdesk.db")
        step("the packages import from the fresh venv", lambda: check_installed(venv, cwd, env))
        with serving(frontdesk, port, env, cwd) as log:
            say(
                f"ok   frontdesk serve --demo answers /healthz ({time.monotonic() - checking:.1f}"
                " s)"
            )
            twilio = FakeTwilioVoice(app_url=base_url, public_url=base_url, auth_token=AUTH_TOKEN)

            async def voice() -> None:
                try:
                    relay_url = await check_voice(twilio)
                    say("ok   signed POST /twilio/voice: TwiML 200; forged, unsigned: 403")
                    await check_relay(twilio, llm, relay_url)
                finally:
                    await twilio.aclose()

            try:
                step("one relay call with the scripted LLM", lambda: asyncio.run(voice()))
                step(
                    "frontdesk users add, then log in to the dashboard and see /leads",
                    lambda: check_login(frontdesk, base_url, env, cwd),
                )
            except CheckFailed:
                say(f"server log:\n{log.read_text()[-4000:]}")
                raise
        step(
            "frontdesk serve --workers 2 starts two workers that answer /readyz",
            lambda: check_workers(frontdesk, env, cwd),
        )
    finally:
        llm.stop()
    checks_seconds = time.monotonic() - checking
    say(
        f"passed: install {install_seconds:.1f} s, checks {checks_seconds:.1f} s, "
        f"total {time.monotonic() - started:.1f} s"
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--wheel", type=Path, help="install this wheel instead of building one")
    p.add_argument("--keep", action="store_true", help="leave the temporary folder in place")
    args = p.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="frontdesk-smoke-"))
    if work.resolve().is_relative_to(ROOT):
        raise SystemExit(f"smoke: the temporary folder {work} is inside the source tree")
    try:
        smoke(work, args.wheel.resolve() if args.wheel else None)
    except (CheckFailed, subprocess.TimeoutExpired) as exc:
        say(f"FAIL {exc}")
        return 1
    finally:
        if args.keep:
            say(f"kept {work}")
        else:
            shutil.rmtree(work)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
