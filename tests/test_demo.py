"""The README's main command runs end to end."""

from __future__ import annotations

import subprocess


def test_demo_runs_and_stock_git_reads_the_result(tmp_path, cli):
    r = cli("demo", str(tmp_path / "demo"), "--size", "tiny", check=True)
    out = r.stdout
    for step in ("mrepo init", "mrepo add", "mrepo commit", "mrepo log", "mrepo show", "mrepo diff", "mrepo export", "mrepo fsck"):
        assert f"$ {step}" in out, step
    assert "1 of 4 chunks changed" in out
    assert "matches the input" in out
    log = subprocess.run(["git", "-C", str(tmp_path / "demo"), "log", "--format=%s"], capture_output=True, text=True, check=True)
    assert "Shift frames 3-4" in log.stdout
    again = cli("demo", str(tmp_path / "demo"), "--size", "tiny")
    assert again.returncode == 1 and "already holds a repository" in again.stderr
