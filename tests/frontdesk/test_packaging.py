"""What the wheel carries: every file a package reads at run time, the demo business, and a
declared distribution for every third-party import. The end-to-end proof, a wheel installed in a
fresh venv and driven, is scripts/smoke_installed.py (run by .ci/run)."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
import tomllib
from importlib import metadata
from pathlib import Path

import pytest

from booking.business_file import load_business_file
from frontdesk.cli import DEMO_BUSINESS

ROOT = Path(__file__).resolve().parents[2]
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
PACKAGES = [p.rstrip("*") for p in PROJECT["tool"]["setuptools"]["packages"]["find"]["include"]]


def _tracked(package: str) -> list[Path]:
    if not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    listed = (
        subprocess.run(
            ["git", "ls-files", "-z", "--", package], cwd=ROOT, check=True, capture_output=True
        )
        .stdout.decode()
        .split("\0")
    )
    return [ROOT / name for name in listed if name]


def _normal(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def test_every_data_file_of_a_package_is_package_data() -> None:
    shipped: set[Path] = set()
    for package, patterns in PROJECT["tool"]["setuptools"]["package-data"].items():
        for pattern in patterns:
            shipped.update((ROOT / package.replace(".", "/")).glob(pattern))
    data = [f for p in PACKAGES for f in _tracked(p) if f.suffix != ".py"]
    assert any(f.name == "htmx.min.js" for f in data) and any(f.suffix == ".ics" for f in data)
    missing = sorted(str(f.relative_to(ROOT)) for f in data if f not in shipped)
    assert not missing, f"not in [tool.setuptools.package-data]: {missing}"


def test_the_demo_business_ships_inside_the_package() -> None:
    assert DEMO_BUSINESS.is_relative_to(ROOT / "frontdesk")
    data = load_business_file(DEMO_BUSINESS)  # its calendars/*.ics are found beside it
    assert data.business.id == "bright-smile"
    # The README's paths still work in the source tree.
    assert (ROOT / "examples" / "demo-business.yaml").resolve() == DEMO_BUSINESS.resolve()


def test_every_third_party_import_is_a_declared_dependency() -> None:
    declared = {
        _normal(re.split(r"[<>=!~\[; ]", d, maxsplit=1)[0])
        for d in PROJECT["project"]["dependencies"]
        + PROJECT["project"]["optional-dependencies"]["postgres"]
    }
    owners = metadata.packages_distributions()
    undeclared: dict[str, str] = {}
    for package in PACKAGES:
        for path in _tracked(package):
            if path.suffix != ".py" or not path.exists():
                continue
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if isinstance(node, ast.Import):
                    modules = [alias.name for alias in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    modules = [node.module]
                else:
                    continue
                for module in modules:
                    top = module.split(".")[0]
                    if top in sys.stdlib_module_names or top in PACKAGES:
                        continue
                    if not {_normal(d) for d in owners.get(top, [top])} & declared:
                        undeclared[top] = str(path.relative_to(ROOT))
    assert not undeclared, f"imported but not in [project] dependencies: {undeclared}"
