"""Shared fixtures: fresh repositories, the fixtures folder, a CLI runner."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = (ROOT / ".." / "shared" / "fixtures").resolve()


@pytest.fixture
def fixtures() -> Path:
    if not FIXTURES.exists():
        pytest.skip(f"shared fixtures not found at {FIXTURES}")
    return FIXTURES


@pytest.fixture
def repo(tmp_path):
    import mrepo

    return mrepo.init_repo(tmp_path / "repo")


def run_cli(*args: str, cwd: str | os.PathLike[str] | None = None, check: bool = False, env: dict | None = None, timeout: float = 600):
    """Run the real ``mrepo`` command in a subprocess; returns CompletedProcess."""
    e = dict(os.environ)
    if env:
        e.update(env)
    res = subprocess.run(
        [sys.executable, "-m", "mrepo", *args], cwd=cwd, capture_output=True, text=True, env=e, timeout=timeout
    )
    if check and res.returncode != 0:
        raise AssertionError(f"mrepo {' '.join(args)} failed ({res.returncode}):\n{res.stdout}\n{res.stderr}")
    return res


@pytest.fixture
def cli():
    return run_cli
