"""The container files, read as text (there is no Docker here to build the image): compose.yaml's
services and settings, the Dockerfile's stages, user, health check, wheel install (the same
commands CI builds and installs the wheel with) and command, and what .dockerignore keeps out of
the build context. The health check's command itself is run against a local server."""

from __future__ import annotations

import ast
import json
import os
import re
import shlex
import subprocess
import sys
import threading
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from frontdesk.cli import parser
from frontdesk.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
BASE = "python:3.12-slim"


# ---- compose.yaml --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    loaded = yaml.safe_load((ROOT / "compose.yaml").read_text())
    assert isinstance(loaded, dict)
    return loaded


def service(compose: dict[str, Any], name: str) -> dict[str, Any]:
    found = compose["services"][name]
    assert isinstance(found, dict)
    return found


def seconds(duration: str) -> float:
    """A compose duration such as 30s, 1m30s or 1h."""
    parts = re.fullmatch(r"(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?", duration)
    assert parts and duration, f"not a duration: {duration!r}"
    hours, minutes, secs = (int(p or 0) for p in parts.groups())
    return hours * 3600 + minutes * 60 + secs


def test_compose_runs_postgres_the_app_and_a_worker(compose: dict[str, Any]) -> None:
    assert set(compose["services"]) == {"postgres", "frontdesk", "worker"}


def test_postgres_is_16_checked_with_pg_isready_on_a_volume(compose: dict[str, Any]) -> None:
    pg = service(compose, "postgres")
    assert pg["image"] == "postgres:16"
    test = pg["healthcheck"]["test"]
    assert test[0] in ("CMD", "CMD-SHELL") and "pg_isready" in " ".join(test[1:])
    [mount] = pg["volumes"]
    volume, target = mount.split(":", 1)
    assert target == "/var/lib/postgresql/data"
    assert volume in compose["volumes"]  # a named volume: the data outlives the container


def test_the_app_and_the_worker_reach_the_postgres_service(compose: dict[str, Any]) -> None:
    pg = service(compose, "postgres")["environment"]
    for name in ("frontdesk", "worker"):
        app = service(compose, name)
        url = app["environment"]["FRONTDESK_DATABASE_URL"]
        assert url == "postgresql://frontdesk:frontdesk@postgres:5432/frontdesk"
        parts = urlsplit(url)
        assert parts.hostname in compose["services"] and parts.port == 5432
        assert (parts.username, parts.password, parts.path.lstrip("/")) == (
            pg["POSTGRES_USER"],
            pg["POSTGRES_PASSWORD"],
            pg["POSTGRES_DB"],
        )
        assert app["depends_on"] == {"postgres": {"condition": "service_healthy"}}
        # Secrets come from an optional .env, never from this file.
        assert app["env_file"] == [{"path": ".env", "required": False}]
        for key in app["environment"]:
            assert not re.search(r"KEY|TOKEN|SECRET|PASSWORD", key), key


def test_the_app_serves_two_workers_without_the_jobs(
    compose: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    app = service(compose, "frontdesk")
    assert app["build"] == "."
    env = app["environment"]
    assert env["FRONTDESK_WORKERS"] == "2"
    assert env["FRONTDESK_RUN_JOBS"] == "false"
    assert env["PROMETHEUS_MULTIPROC_DIR"] == "/tmp/metrics"
    # The metrics directory is emptied at every start: a tmpfs, not a volume.
    assert env["PROMETHEUS_MULTIPROC_DIR"] in app["tmpfs"]
    assert "8000:8000" in app["ports"]
    assert "command" not in app  # the image's: frontdesk serve --host 0.0.0.0
    # The settings read these names as meant.
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    settings = Settings(_env_file=None)
    assert (settings.workers, settings.run_jobs, settings.port) == (2, False, 8000)
    assert settings.database_url == env["FRONTDESK_DATABASE_URL"]
    # docker stop waits longer than the drain of calls in flight.
    assert seconds(app["stop_grace_period"]) > settings.shutdown_grace_seconds


def test_the_worker_is_the_same_image_running_the_jobs(compose: dict[str, Any]) -> None:
    app, worker = service(compose, "frontdesk"), service(compose, "worker")
    assert (worker["build"], worker["image"]) == (app["build"], app["image"])
    assert worker["command"] == ["frontdesk", "worker"]
    assert parser().parse_args(worker["command"][1:]).command == "worker"
    assert "ports" not in worker
    # Its own small server (/healthz, /metrics) on the port its health check asks.
    env = worker["environment"]
    port = int(env["FRONTDESK_WORKER_METRICS_PORT"])
    assert f"http://127.0.0.1:{port}/healthz" in " ".join(worker["healthcheck"]["test"])
    assert env["FRONTDESK_HOST"] == "0.0.0.0"  # reachable from the scraper's container
    assert seconds(worker["stop_grace_period"]) > Settings.model_fields[
        "shutdown_grace_seconds"
    ].get_default(call_default_factory=True)


# ---- Dockerfile ----------------------------------------------------------------------------


@dataclass
class Stage:
    image: str
    name: str | None
    steps: list[tuple[str, str]] = field(default_factory=list)  # (INSTRUCTION, arguments)

    def all(self, instruction: str) -> list[str]:
        return [args for name, args in self.steps if name == instruction]

    def one(self, instruction: str) -> str:
        [args] = self.all(instruction)
        return args

    def runs(self) -> str:
        return "\n".join(self.all("RUN"))


def dockerfile_stages(text: str) -> list[Stage]:
    """The Dockerfile's stages, each a list of instructions with their continued lines joined
    (comments and blank lines dropped)."""
    lines: list[str] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):
            continue  # a comment inside a continued instruction
        if line.endswith("\\"):
            pending += line[:-1].strip() + " "
            continue
        lines.append(pending + line)
        pending = ""
    assert not pending, "the Dockerfile ends inside a continued line"
    stages: list[Stage] = []
    for line in lines:
        instruction, _, args = line.partition(" ")
        instruction, args = instruction.upper(), args.strip()
        if instruction == "FROM":
            words = args.split()
            name = words[2] if len(words) == 3 and words[1].upper() == "AS" else None
            stages.append(Stage(image=words[0], name=name))
        else:
            assert stages, f"{instruction} before any FROM"
            stages[-1].steps.append((instruction, args))
    return stages


@pytest.fixture(scope="module")
def stages() -> list[Stage]:
    return dockerfile_stages((ROOT / "Dockerfile").read_text())


def ci_command(function: str, first: str) -> str:
    """The command a function of scripts/smoke_installed.py (CI's wheel build and install,
    run by .ci/run) passes to `run`, as `python ...`: its literal arguments, from the first
    literal `first` on (the interpreter and the paths are the script's own)."""
    tree = ast.parse((ROOT / "scripts" / "smoke_installed.py").read_text())
    [body] = [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == function]
    for node in ast.walk(body):
        if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "run":
            command = node.args[0]
            assert isinstance(command, ast.List)
            words = [
                e.value
                for e in command.elts
                if isinstance(e, ast.Constant) and isinstance(e.value, str)
            ]
            if first in words[:2]:
                return "python " + " ".join(words)
    raise AssertionError(f"{function} runs no command with {first!r}")


def test_ci_builds_and_installs_the_wheel_with_the_smoke_script() -> None:
    assert "scripts/smoke_installed.py" in (ROOT / ".ci" / "run").read_text()
    assert ci_command("build_wheel", "-m") == "python -m build --outdir"
    assert ci_command("install", "-m").startswith("python -m venv")


def test_a_build_stage_builds_the_wheel_as_ci_does(stages: list[Stage]) -> None:
    assert [s.image for s in stages] == [BASE, BASE]
    build = stages[0]
    assert build.name == "build"
    assert "COPY . ." in [f"COPY {args}" for args in build.all("COPY")]
    command = ci_command("build_wheel", "-m")
    [step] = [run for run in build.all("RUN") if command in run]
    assert shlex.split(step)[-3:] == ["--outdir", "/dist", "."]
    assert '"build>=1.2"' in build.runs()  # the version pyproject's test extra asks for


def test_the_runtime_stage_installs_only_the_wheel_into_a_venv(stages: list[Stage]) -> None:
    runtime = stages[-1]
    copies = runtime.all("COPY")
    assert copies == ["--from=build /dist/*.whl /dist/"]  # the wheel, no source tree
    runs = runtime.runs()
    # The same steps as CI's install: a fresh venv, then its pip installs the wheel.
    install = ci_command("install", "pip")
    assert install == "python -m pip install --quiet --disable-pip-version-check"
    assert ci_command("install", "venv") in runs  # python -m venv ...
    venv_pip = install.replace("python ", "/opt/frontdesk/bin/python ", 1)
    assert f'{venv_pip} "$(ls /dist/frontdesk-*.whl)[postgres]"' in runs
    assert "/opt/frontdesk/bin" in runtime.one("ENV").split("PATH=", 1)[1]
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"][
        "optional-dependencies"
    ]
    assert any(dep.startswith("psycopg") for dep in extras["postgres"])


def test_the_runtime_runs_as_a_user_it_created_not_root(stages: list[Stage]) -> None:
    runtime = stages[-1]
    steps = [name for name, _ in runtime.steps]
    user = runtime.one("USER")
    uid, _, gid = user.partition(":")
    assert uid not in ("", "0", "root") and gid not in ("0", "root")
    assert f"--uid {uid}" in runtime.runs() and "useradd" in runtime.runs()
    # Nothing runs as root after the switch.
    assert "RUN" not in steps[steps.index("USER") :]


def test_the_image_serves_on_8000_with_the_workers_from_the_environment(
    stages: list[Stage],
) -> None:
    runtime = stages[-1]
    assert runtime.one("EXPOSE") == "8000"
    assert re.search(r"(^|\s)FRONTDESK_WORKERS=1(\s|$)", runtime.one("ENV"))
    command = json.loads(runtime.one("CMD"))  # exec form: a JSON list
    assert command == ["frontdesk", "serve", "--host", "0.0.0.0"]
    args = parser().parse_args(command[1:])
    assert (args.command, args.host, args.workers) == ("serve", "0.0.0.0", None)


def healthcheck_command(stages: list[Stage]) -> list[str]:
    check = stages[-1].one("HEALTHCHECK")
    options, _, command = check.partition("CMD ")
    for option in ("--interval=", "--timeout=", "--start-period=", "--retries="):
        assert option in options
    parsed = json.loads(command)  # exec form
    assert isinstance(parsed, list) and parsed[:2] == ["python", "-c"]
    assert "urllib" in parsed[2] and "127.0.0.1" in parsed[2] and "/healthz" in parsed[2]
    return [sys.executable, *parsed[1:]]


@pytest.fixture
def health_server() -> Iterator[tuple[int, list[int]]]:
    """A local server answering GET /healthz with the status the test puts in the list."""
    status = [200]
    seen: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802
            seen.append(self.path)
            code = status[0] if self.path == "/healthz" else 404
            self.send_response(code)
            self.send_header("content-length", "0")
            self.end_headers()

        def log_message(self, *_: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield server.server_address[1], status
    finally:
        server.shutdown()
        server.server_close()
    assert set(seen) <= {"/healthz"}


def test_the_health_check_passes_only_while_healthz_answers_200(
    stages: list[Stage], health_server: tuple[int, list[int]]
) -> None:
    command = healthcheck_command(stages)
    port, status = health_server
    env = {**os.environ, "FRONTDESK_PORT": str(port)}

    def exit_code() -> int:
        return subprocess.run(command, env=env, capture_output=True, timeout=30).returncode

    assert exit_code() == 0
    status[0] = 503
    assert exit_code() != 0
    with ThreadingHTTPServer(("127.0.0.1", 0), BaseHTTPRequestHandler) as closed:
        free = closed.server_address[1]
    env["FRONTDESK_PORT"] = str(free)  # nothing listens there now
    assert exit_code() != 0


# ---- .dockerignore -------------------------------------------------------------------------


def _regex(glob: str) -> re.Pattern[str]:
    """Docker's pattern syntax (Go's filepath.Match, plus `**`): `*` and `?` stay within one
    folder name, `**` spans folders."""
    out, i = "", 0
    while i < len(glob):
        if glob.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif glob.startswith("**", i):
            out, i = out + ".*", i + 2
        elif glob[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif glob[i] == "?":
            out, i = out + "[^/]", i + 1
        else:
            out, i = out + re.escape(glob[i]), i + 1
    return re.compile(out)


def ignored(patterns: list[str], path: str) -> bool:
    """Whether Docker leaves `path` out of the build context: the last pattern matching the
    path or a folder above it decides (`!` keeps it)."""
    parts = path.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    verdict = False
    for pattern in patterns:
        keep = pattern.startswith("!")
        regex = _regex(pattern[1:] if keep else pattern)
        if any(regex.fullmatch(prefix) for prefix in prefixes):
            verdict = not keep
    return verdict


@pytest.fixture(scope="module")
def dockerignore() -> list[str]:
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


def test_the_matcher_reads_patterns_as_docker_does() -> None:
    assert ignored(["*.db"], "frontdesk.db") and not ignored(["*.db"], "data/frontdesk.db")
    assert ignored(["**/__pycache__"], "a/b/__pycache__/x.pyc")
    assert ignored([".env.*", "!.env.example"], ".env.local")
    assert not ignored([".env.*", "!.env.example"], ".env.example")
    assert ignored(["tests"], "tests/frontdesk/test_x.py")


def test_the_build_context_keeps_the_package_and_drops_secrets_and_clutter(
    dockerignore: list[str],
) -> None:
    for secret in (".env", ".env.production", "frontdesk.db", "frontdesk.db-wal"):
        assert ignored(dockerignore, secret), secret
    for clutter in (
        ".git/config",
        ".venv/bin/python",
        "frontdesk/__pycache__/app.cpython-312.pyc",
        "frontdesk.egg-info/PKG-INFO",
        "dist/frontdesk-0.1.0-py3-none-any.whl",
    ):
        assert ignored(dockerignore, clutter), clutter
    # What `python -m build` reads: pyproject.toml, the readme, every package and its data.
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    needed = ["pyproject.toml", project["project"]["readme"]]
    for include in project["tool"]["setuptools"]["packages"]["find"]["include"]:
        package = include.rstrip("*")
        needed += [
            str(p.relative_to(ROOT))
            for p in (ROOT / package).rglob("*")
            if p.is_file() and "__pycache__" not in p.parts
        ]
    assert len(needed) > 50
    kept_out = [path for path in needed if ignored(dockerignore, path)]
    assert kept_out == []
