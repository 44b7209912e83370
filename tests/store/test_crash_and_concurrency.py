"""Crash safety (SIGKILL at many instants) and concurrent committers."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

import mrepo

N_FRAMES = 64  # 64 x 1024 x 1024 float32 = 256 MiB

WRITER = textwrap.dedent(
    """
    import sys, numpy as np, mrepo
    from mrepo.store import write_array
    repo = mrepo.open_repo(sys.argv[1])
    seed = int(sys.argv[2])
    a = (np.arange({n} * 1024 * 1024, dtype=np.int64) % 65521).astype(np.float32).reshape({n}, 1024, 1024)
    a += seed
    write_array(repo.index, "big", a, chunks=(1, 1024, 1024))
    print(repo.index.commit(f"seed {{seed}}"), flush=True)
    """
).format(n=N_FRAMES)


def _expected(start: int, stop: int, seed: int) -> np.ndarray:
    return (np.arange(start, stop, dtype=np.int64) % 65521).astype(np.float32) + seed


def _run_writer(repo_path: Path, seed: int, env: dict | None = None) -> subprocess.Popen:
    e = dict(os.environ)
    e.update(env or {})
    return subprocess.Popen([sys.executable, "-c", WRITER, str(repo_path), str(seed)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=e)


def _check(repo_path: Path, allowed: dict[str, int]) -> str:
    """fsck clean, HEAD is one of the allowed commits, its array reads back right."""
    repo = mrepo.open_repo(repo_path)
    rep = repo.fsck()
    assert rep.ok, [str(p) for p in rep.problems]
    head = repo.head().commit
    assert head in allowed, "HEAD points to an unexpected commit"
    z = repo.open_array(head, "big")
    n = N_FRAMES * 1024 * 1024
    np.testing.assert_array_equal(z[0, 0, :16], _expected(0, 16, allowed[head]))
    np.testing.assert_array_equal(z[N_FRAMES - 1, 1023, 1008:], _expected(n - 16, n, allowed[head]))
    return head


@pytest.fixture(scope="module")
def base_repo(tmp_path_factory):
    d = tmp_path_factory.mktemp("crash") / "base"
    mrepo.init_repo(d)
    p = _run_writer(d, 0)
    out, err = p.communicate(timeout=300)
    assert p.returncode == 0, err.decode()
    t0 = time.perf_counter()
    p = _run_writer(d, 1)
    out, err = p.communicate(timeout=300)
    duration = time.perf_counter() - t0
    assert p.returncode == 0, err.decode()
    return d, out.decode().strip(), duration


INSTANTS = 21
CRASHPOINTS = ["before-tree", "after-tree", "before-ref", "before-reflog", "after-ref"]


@pytest.mark.parametrize("case", [f"t{i}" for i in range(INSTANTS)] + CRASHPOINTS)
def test_sigkill_during_commit_leaves_previous_commit_and_fsck_clean(base_repo, tmp_path, case):
    src, prev_commit, duration = base_repo
    d = tmp_path / "r"

    def link_or_copy(a: str, b: str) -> None:
        # chunk and object files are immutable: hard links make the copy cheap
        if "/chunks/" in a or "/objects/" in a:
            os.link(a, b)
        else:
            shutil.copy2(a, b)

    shutil.copytree(src, d, symlinks=True, copy_function=link_or_copy)
    if case.startswith("t"):
        i = int(case[1:])
        p = _run_writer(d, 7)
        time.sleep(duration * (i + 0.5) / INSTANTS)
        p.send_signal(signal.SIGKILL)
        p.wait(timeout=60)
    else:
        p = _run_writer(d, 7, {"MREPO_CRASHPOINT": case})
        p.wait(timeout=300)
        assert p.returncode == -signal.SIGKILL, "the crash point was not reached"
    repo = mrepo.open_repo(d)
    new_commits = [c.id for c in repo.log("HEAD") if c.message.startswith("seed 7")]
    allowed = {prev_commit: 1, **{c: 7 for c in new_commits}}
    head = _check(d, allowed)
    if case in ("before-tree", "after-tree", "before-ref"):
        assert head == prev_commit
    if case in ("before-reflog", "after-ref"):
        assert head != prev_commit
    # the next commit succeeds
    p = _run_writer(d, 9)
    out, err = p.communicate(timeout=300)
    assert p.returncode == 0, err.decode()
    new = out.decode().strip()
    head = _check(d, {new: 9})
    assert head == new
    assert repo.gc(grace_seconds=0).removed_chunks >= 0


RACER = textwrap.dedent(
    """
    import os, sys, time, numpy as np, mrepo
    from mrepo.store import write_array
    repo = mrepo.open_repo(sys.argv[1])
    name, value, go = sys.argv[2], float(sys.argv[3]), sys.argv[4]
    txn = repo.transaction("main")
    write_array(txn, name, np.full((4, 64, 64), value, np.float32))
    while not os.path.exists(go):
        time.sleep(0.001)
    try:
        print(txn.commit(f"{name}={value}"), flush=True)
    except mrepo.ConflictError as e:
        print(f"conflict: {e}", file=sys.stderr, flush=True)
        sys.exit(3)
    """
)


def _race(repo_path: Path, jobs: list[tuple[str, float]], go: Path) -> list[subprocess.CompletedProcess]:
    procs = [
        subprocess.Popen([sys.executable, "-c", RACER, str(repo_path), n, str(v), str(go)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for n, v in jobs
    ]
    time.sleep(1.5)  # let both stage their data
    go.touch()
    out = []
    for p in procs:
        o, e = p.communicate(timeout=120)
        out.append(subprocess.CompletedProcess(p.args, p.returncode, o, e))
    go.unlink()
    return out


def test_two_processes_commit_different_arrays_both_survive(tmp_path):
    repo = mrepo.init_repo(tmp_path / "r")
    for round_ in range(5):
        res = _race(repo.path, [(f"a{round_}", 1.0), (f"b{round_}", 2.0)], tmp_path / "go")
        assert all(r.returncode == 0 for r in res), [r.stderr for r in res]
        commits = {r.stdout.strip() for r in res}
        history = {c.id for c in repo.log("HEAD")}
        assert commits <= history, "a commit was lost"
        np.testing.assert_array_equal(repo.open_array("HEAD", f"a{round_}")[:], 1.0)
        np.testing.assert_array_equal(repo.open_array("HEAD", f"b{round_}")[:], 2.0)
    assert repo.fsck().ok


def test_two_processes_commit_the_same_array_one_gets_a_retryable_error(tmp_path):
    repo = mrepo.init_repo(tmp_path / "r")
    for round_ in range(3):
        res = _race(repo.path, [("same", 1.0 + round_), ("same", 10.0 + round_)], tmp_path / "go")
        codes = sorted(r.returncode for r in res)
        assert codes == [0, 3], [(r.returncode, r.stderr) for r in res]
        loser = next(r for r in res if r.returncode == 3)
        assert "moved" in loser.stderr and "try" in loser.stderr.lower() or "re-run" in loser.stderr
        winner = next(r for r in res if r.returncode == 0)
        head = repo.head().commit
        assert head == winner.stdout.strip()
        val = repo.open_array("HEAD", "same")[0, 0, 0]
        assert val in (1.0 + round_, 10.0 + round_)
    assert repo.fsck().ok


def test_new_fan_out_directories_are_made_durable(tmp_path, monkeypatch):
    """Power loss, not only SIGKILL: a chunk or object written into a new
    fan-out directory is reachable only if that directory's own entry is
    durable, so its parent is fsynced when it is created (once)."""
    from mrepo.store import chunks as chunks_mod
    from mrepo.store import objects as objects_mod

    repo = mrepo.init_repo(tmp_path / "r")
    synced: list[Path] = []

    def record(path):
        synced.append(Path(path))

    monkeypatch.setattr(chunks_mod, "fsync_dir", record)
    monkeypatch.setattr(objects_mod, "fsync_dir", record)
    for d in [*repo.chunks.root.iterdir(), *(repo.gitdir / "objects").iterdir()]:
        if len(d.name) == 2:
            shutil.rmtree(d)
    ref = repo.chunks.put(b"chunk bytes")
    assert synced == [repo.chunks.root]
    repo.chunks.put(b"chunk bytes")  # exists: nothing to sync
    assert synced == [repo.chunks.root]
    sha = repo.objects.write_blob(b"a blob")
    assert synced == [repo.chunks.root, repo.gitdir / "objects"]
    repo.chunks.sync_dirs([ref.digest])
    repo.objects.sync()
    assert synced[2:] == [repo.chunks.root / ref.digest[:2], repo.gitdir / "objects" / sha[:2]]
