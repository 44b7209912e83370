"""Benchmark: `mrepo add` + `mrepo commit` of a big float32 stack, against its limits.

Prints, for a generated stack of SIZE GiB (default 1):
- mrepo add+commit throughput (GB/s), run as a user would (the CLI, in a subprocess);
- the limit: the slower of multithreaded BLAKE3 over the same bytes in memory
  and a sequential write + fsync of the same bytes, measured in the same run;
- `git add` + `git commit` of the same bytes as a plain file with real git;
- `dvc add` if DVC is installed;
- bytes added to the store by re-committing after changing 1% of the chunks.

Usage: python benchmarks/bench_store.py [--size-gib 1] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import blake3
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mrepo.io.mrc import write_mrc  # noqa: E402

GB = 1e9


def du(path: Path) -> int:
    total = 0
    for root, _dirs, files in os.walk(path):
        for f in files:
            try:
                total += os.path.getsize(os.path.join(root, f))
            except OSError:
                pass
    return total


def timed(cmd: list[str], cwd: Path | None = None) -> float:
    t0 = time.perf_counter()
    subprocess.run(cmd, cwd=cwd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    return time.perf_counter() - t0


def settle() -> None:
    """Flush what earlier steps left dirty in the page cache, so that each
    timed step pays for its own writes only (the disk is shared)."""
    os.sync()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size-gib", type=float, default=1.0)
    ap.add_argument("--workdir", type=Path, default=None)
    ap.add_argument("--dvc", default=shutil.which("dvc"), help="dvc executable to compare with (default: on PATH)")
    args = ap.parse_args()
    work = Path(args.workdir or tempfile.mkdtemp(prefix="mrepo-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    mrepo_cmd = [sys.executable, "-m", "mrepo"]
    nbytes = int(args.size_gib * (1 << 30))
    frame = 1024 * 1024 * 4  # 1024 x 1024 float32
    nframes = max(1, nbytes // frame)
    nbytes = nframes * frame
    print(f"mrepo store benchmark: {nframes} frames of 1024x1024 float32 = {nbytes / GB:.2f} GB, {os.cpu_count()} cores, in {work}")

    rng = np.random.default_rng(0)
    stack = rng.normal(size=(nframes, 1024, 1024)).astype(np.float32)
    src = work / "stack.mrcs"
    write_mrc(src, stack, 1.0, stack=True)
    raw = stack.tobytes()

    # --- the limit -----------------------------------------------------------
    settle()
    t0 = time.perf_counter()
    blake3.blake3(raw, max_threads=blake3.blake3.AUTO).hexdigest()
    t_hash = time.perf_counter() - t0
    settle()
    t0 = time.perf_counter()
    with open(work / "fsync-probe.bin", "wb") as f:
        f.write(raw)
        f.flush()
        os.fsync(f.fileno())
    t_write = time.perf_counter() - t0
    os.unlink(work / "fsync-probe.bin")
    limit = min(nbytes / t_hash, nbytes / t_write)
    print(f"  BLAKE3 (multithreaded, in memory): {nbytes / t_hash / GB:6.2f} GB/s")
    print(f"  sequential write + fsync:          {nbytes / t_write / GB:6.2f} GB/s")
    print(f"  limit (slower of the two):         {limit / GB:6.2f} GB/s")

    # --- mrepo ----------------------------------------------------------------
    repo = work / "repo"
    subprocess.run([*mrepo_cmd, "init", str(repo)], check=True, stdout=subprocess.DEVNULL)
    settle()
    t_add = timed([*mrepo_cmd, "add", str(src), "--as", "frames", "--chunks", "1,1024,1024"], cwd=repo)
    t_commit = timed([*mrepo_cmd, "commit", "-m", "frames"], cwd=repo)
    t_mrepo = t_add + t_commit
    print(f"  mrepo add + commit:                {nbytes / t_mrepo / GB:6.2f} GB/s  ({t_add:.2f} s + {t_commit:.2f} s)"
          f"  = {nbytes / t_mrepo / limit:.2f} x the limit")

    # --- 1% of chunks changed --------------------------------------------------
    before = du(repo / ".git")
    nchg = max(1, round(nframes / 100))  # 1% of the chunks (one chunk per frame)
    idx = rng.choice(nframes, size=nchg, replace=False)
    stack[idx] += 1.0
    write_mrc(src, stack, 1.0, stack=True)
    settle()
    t_re = timed([*mrepo_cmd, "add", str(src), "--as", "frames", "--chunks", "1,1024,1024"], cwd=repo)
    t_re += timed([*mrepo_cmd, "commit", "-m", "1% changed"], cwd=repo)
    added = du(repo / ".git") - before
    print(f"  re-commit with {nchg} of {nframes} chunks changed ({100 * nchg / nframes:.1f}%): "
          f"added {added / 1e6:.1f} MB = {100 * added / nbytes:.2f}% of the array, in {t_re:.2f} s")

    # --- git -------------------------------------------------------------------
    if shutil.which("git"):
        g = work / "gitrepo"
        g.mkdir()
        subprocess.run(["git", "init", "-q", str(g)], check=True)
        shutil.copy(src, g / "stack.mrcs")
        settle()
        env_git = ["git", "-C", str(g), "-c", "user.name=bench", "-c", "user.email=bench@localhost"]
        t_git = timed([*env_git, "add", "stack.mrcs"]) + timed([*env_git, "commit", "-qm", "stack"])
        print(f"  git add + commit (plain file):     {nbytes / t_git / GB:6.2f} GB/s  ({t_git:.1f} s)"
              f"  -> mrepo is {t_git / t_mrepo:.1f}x faster")
    else:
        print("  git: not installed")

    # --- dvc -------------------------------------------------------------------
    if args.dvc:
        dv = work / "dvcrepo"
        dv.mkdir()
        subprocess.run(["git", "init", "-q", str(dv)], check=True)
        subprocess.run([args.dvc, "init", "-q"], cwd=dv, check=True)
        shutil.copy(src, dv / "stack.mrcs")
        settle()
        t_dvc = timed([args.dvc, "add", "-q", "stack.mrcs"], cwd=dv)
        print(f"  dvc add:                           {nbytes / t_dvc / GB:6.2f} GB/s  ({t_dvc:.1f} s)"
              f"  -> mrepo is {t_dvc / t_mrepo:.1f}x faster")
    else:
        print("  dvc: not installed (pip install dvc to compare)")
    if args.workdir is None:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
