"""The README's main command runs end to end."""

from __future__ import annotations

import subprocess


def test_store_tour_runs_and_stock_git_reads_the_result(tmp_path, cli):
    r = cli("demo", "--tour", str(tmp_path / "demo"), "--preset", "tiny", check=True)
    out = r.stdout
    for step in ("mrepo init", "mrepo add", "mrepo commit", "mrepo log", "mrepo show", "mrepo diff", "mrepo export", "mrepo fsck"):
        assert f"$ {step}" in out, step
    assert "1 of 4 chunks changed" in out
    assert "matches the input" in out
    log = subprocess.run(["git", "-C", str(tmp_path / "demo"), "log", "--format=%s"], capture_output=True, text=True, check=True)
    assert "Shift frames 3-4" in log.stdout
    again = cli("demo", "--tour", str(tmp_path / "demo"), "--preset", "tiny")
    assert again.returncode == 1 and "already holds a repository" in again.stderr


def test_demo_simulates_refines_and_compares_with_the_truth(tmp_path, cli):
    d = tmp_path / "demo"
    r = cli("demo", str(d), "--preset", "tiny", "--iterations", "1", check=True)
    out = r.stdout
    assert "Simulating a 'tiny' population" in out and "Reconstructing with the true parameters" in out
    rows = [ln.split() for ln in out.splitlines() if ln.split()[:1] in (["large"], ["small"])]
    assert {row[0] for row in rows} == {"large", "small"}
    for row in rows:
        start, refined, oracle, m0, m1, p0, p1 = (float(v) for v in row[2:9])
        assert all(v > 0 for v in (start, refined, oracle, m0, m1, p0, p1))
    assert (d / "demo_fsc.png").stat().st_size > 10_000 and (d / "demo_motion.png").stat().st_size > 10_000
    log = subprocess.run(["git", "-C", str(d), "log", "--format=%s"], capture_output=True, text=True, check=True).stdout
    assert log.splitlines()[0].startswith("Refine motion+poses, 1 iterations") and "Simulated population (tiny, 0)" in log
    assert cli("verify", cwd=d, check=True).returncode == 0
