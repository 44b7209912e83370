"""Benchmark: push and clone of populations over a local path and over S3 (loopback).

Two repositories are generated:

- **big**: one array of SIZE GiB of random bytes in 4 MiB chunks;
- **small**: N small chunks (default 200,000 of 2 KiB) in 200 arrays, where
  per-object overhead dominates.

For each, measured in this run:

- ``mrepo push`` to a fresh path repository and ``mrepo clone`` from it
  (chunks travel in packs; the files each chunk store ends with are counted);
- ``mrepo push`` to a repository whose chunks live in an S3-compatible
  server on 127.0.0.1 (moto, started here) and ``mrepo clone`` from it;
- bytes sent by a push after a refinement that changed 5% of the chunks
  (whole arrays for the small set; for the big set 5% of its chunks,
  spread out), against the changed bytes (target: at most ~1.2x);
- baselines on the same bytes as plain files (one file per chunk):
  ``git push`` to a bare repository and ``git clone --no-local`` from it,
  bytes added by ``git push`` after the same 5% change; ``dvc push`` to a
  local remote (DVC from ``--dvc``, default /tmp/dvcenv/bin/dvc, when it runs).

Usage: python benchmarks/bench_transfer.py [--size-gib 2] [--small-chunks 200000]
       [--small-bytes 2048] [--dvc PATH] [--workdir DIR] [--only big|small]
       [--skip-s3] [--skip-git] [--skip-dvc]
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import mrepo  # noqa: E402
from mrepo.collab import add_remote, clone, push  # noqa: E402
from mrepo.store import write_array  # noqa: E402

MB = 1e6


def du(path: Path) -> int:
    total = 0
    for root, _dirs, files in os.walk(path):
        for f in files:
            try:
                total += os.path.getsize(os.path.join(root, f))
            except OSError:
                pass
    return total


def run(cmd: list[str], cwd: Path | None = None, env: dict | None = None) -> float:
    t0 = time.perf_counter()
    subprocess.run(cmd, cwd=cwd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    return time.perf_counter() - t0


def free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def start_s3() -> tuple[subprocess.Popen, str]:
    """moto's standalone S3 server in its own process (so that it does not
    share this process's interpreter lock), on 127.0.0.1."""
    import boto3

    port = free_port()
    exe = Path(sys.executable).with_name("moto_server")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "moto.server"]
    srv = subprocess.Popen([*cmd, "-H", "127.0.0.1", "-p", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            break
        except OSError:
            if time.monotonic() > deadline or srv.poll() is not None:
                srv.kill()
                raise SystemExit("moto_server did not start")
            time.sleep(0.1)
    endpoint = f"http://127.0.0.1:{port}"
    os.environ.update(AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench", AWS_REGION="us-east-1", AWS_ENDPOINT_URL=endpoint)
    boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket="mrepo-bench")
    return srv, endpoint


# ---------------------------------------------------------------------------
# datasets
# ---------------------------------------------------------------------------
def make_dataset(work: Path, kind: str, args) -> tuple[mrepo.Repository, Path, list[tuple[str, int]], int]:
    """Seed repository, plain-file copy, list of (array name, chunk count), chunk bytes."""
    seed = mrepo.init_repo(work / "seed")
    plain = work / "plain"
    plain.mkdir()
    rng = np.random.default_rng(1)
    txn = seed.transaction()
    arrays: list[tuple[str, int]] = []
    if kind == "big":
        chunk = 4 << 20
        n = max(1, int(args.size_gib * (1 << 30)) // chunk)
        data = rng.integers(0, 256, size=(n, chunk), dtype=np.uint8)
        write_array(txn, "big/data", data, chunks=(1, chunk))
        arrays.append(("big/data", n))
        for i in range(n):
            (plain / f"c{i:06d}").write_bytes(data[i].tobytes())
        total = n * chunk
    else:
        per = max(1, args.small_chunks // 200)
        n_arr = max(1, args.small_chunks // per)
        total = 0
        for a in range(n_arr):
            data = rng.integers(0, 256, size=(per, args.small_bytes), dtype=np.uint8)
            write_array(txn, f"small/a{a:03d}", data, chunks=(1, args.small_bytes))
            arrays.append((f"small/a{a:03d}", per))
            d = plain / f"a{a:03d}"
            d.mkdir()
            for i in range(per):
                (d / f"c{i:05d}").write_bytes(data[i].tobytes())
            total += data.nbytes
    seed_commit = txn.commit(f"{kind} dataset")
    txn.discard()
    assert seed_commit
    return seed, plain, arrays, total


def refine(seed: mrepo.Repository, plain: Path, kind: str, arrays, args) -> int:
    """Change 5% of the chunks (same change in the plain copy); returns the changed bytes."""
    rng = np.random.default_rng(2)
    txn = seed.transaction()
    changed = 0
    if kind == "big":
        name, n = arrays[0]
        pick = sorted(rng.choice(n, size=max(1, round(0.05 * n)), replace=False))
        for i in pick:
            data = rng.integers(0, 256, size=4 << 20, dtype=np.uint8).tobytes()
            txn.set(f"data/{name}/c/{i}/0", data)
            p = plain / f"c{i:06d}"
            p.write_bytes(data)
            changed += len(data)
    else:
        k = max(1, round(0.05 * len(arrays)))
        for name, n in arrays[:k]:
            for i in range(n):
                data = rng.integers(0, 256, size=args.small_bytes, dtype=np.uint8).tobytes()
                txn.set(f"data/{name}/c/{i}/0", data)
                (plain / name.split("/")[1] / f"c{i:05d}").write_bytes(data)
                changed += len(data)
    txn.commit("refine 5% of the chunks")
    txn.discard()
    return changed


# ---------------------------------------------------------------------------
# measurements
# ---------------------------------------------------------------------------
def bench_mrepo(work: Path, seed, total: int, label: str, chunk_url: str | None) -> dict:
    hub = mrepo.init_repo(work / f"hub-{label}")
    add_remote(seed, label, str(hub.path), chunks=chunk_url)
    t0 = time.perf_counter()
    res = push(seed, label, force=True)
    t_push = time.perf_counter() - t0
    t0 = time.perf_counter()
    c = clone(str(hub.path), work / f"clone-{label}", chunks=chunk_url)
    t_clone = time.perf_counter() - t0
    cs = c._clone_result.chunks
    assert cs.bytes == res.chunks.bytes == total, (cs.bytes, res.chunks.bytes, total)
    t0 = time.perf_counter()
    lazy = clone(str(hub.path), work / f"lazy-{label}", chunks=chunk_url, lazy=True)
    t_lazy = time.perf_counter() - t0
    return {"push_s": t_push, "clone_s": t_clone, "push": res.chunks, "clone": cs, "hub": hub,
            "lazy_s": t_lazy, "lazy_bytes": du(lazy.gitdir), "full_bytes": du(c.gitdir),
            "hub_files": count_files(hub.chunks.root), "clone_files": count_files(c.chunks.root)}


def count_files(root: Path) -> int:
    """Files of a chunk store (loose chunks, packs and their indexes; not tmp/)."""
    return sum(len(files) for d, _dirs, files in os.walk(root) if Path(d).name != "tmp")


def bench_git(work: Path, plain: Path) -> dict:
    repo = work / "git-work"
    shutil.copytree(plain, repo / "data")
    env = {**os.environ, "GIT_AUTHOR_NAME": "b", "GIT_AUTHOR_EMAIL": "b@b", "GIT_COMMITTER_NAME": "b", "GIT_COMMITTER_EMAIL": "b@b"}
    run(["git", "init", "-q", "-b", "main"], repo, env)
    t_add = run(["git", "add", "-A"], repo, env) + run(["git", "commit", "-q", "-m", "data"], repo, env)
    bare = work / "git-hub.git"
    run(["git", "init", "-q", "--bare", str(bare)], env=env)
    t_push = run(["git", "push", "-q", f"file://{bare}", "main"], repo, env)
    t_clone = run(["git", "clone", "-q", "--no-local", f"file://{bare}", str(work / "git-clone")], env=env)
    return {"add_s": t_add, "push_s": t_push, "clone_s": t_clone, "work": repo, "bare": bare, "env": env}


def git_refine_push(g: dict, plain: Path) -> tuple[float, int]:
    repo, bare, env = g["work"], g["bare"], g["env"]
    shutil.rmtree(repo / "data")
    shutil.copytree(plain, repo / "data")
    run(["git", "add", "-A"], repo, env)
    run(["git", "commit", "-q", "-m", "refine"], repo, env)
    before = du(bare / "objects")
    t = run(["git", "push", "-q", f"file://{bare}", "main"], repo, env)
    return t, du(bare / "objects") - before


def bench_dvc(work: Path, plain: Path, dvc: str) -> dict | None:
    repo = work / "dvc-work"
    shutil.copytree(plain, repo / "data")
    env = {**os.environ, "GIT_AUTHOR_NAME": "b", "GIT_AUTHOR_EMAIL": "b@b", "GIT_COMMITTER_NAME": "b", "GIT_COMMITTER_EMAIL": "b@b"}
    try:
        run(["git", "init", "-q"], repo, env)
        run([dvc, "init", "-q"], repo, env)
        run([dvc, "config", "core.analytics", "false"], repo, env)
        t_add = run([dvc, "add", "-q", "data"], repo, env)
        store = work / "dvc-store"
        run([dvc, "remote", "add", "-d", "local", str(store)], repo, env)
        t_push = run([dvc, "push", "-q"], repo, env)
    except (subprocess.CalledProcessError, FileNotFoundError) as e:
        print(f"  dvc: failed ({e}); skipped")
        return None
    return {"add_s": t_add, "push_s": t_push, "work": repo, "store": store, "env": env}


def dvc_refine_push(d: dict, plain: Path, dvc: str) -> tuple[float, int]:
    repo, env = d["work"], d["env"]
    shutil.rmtree(repo / "data")
    shutil.copytree(plain, repo / "data")
    run([dvc, "add", "-q", "data"], repo, env)
    before = du(d["store"])
    t = run([dvc, "push", "-q"], repo, env)
    return t, du(d["store"]) - before


def fmt_rate(nbytes: int, secs: float) -> str:
    return f"{nbytes / MB / secs:8.1f} MB/s ({secs:6.2f} s)"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size-gib", type=float, default=2.0, help="size of the big set (GiB)")
    ap.add_argument("--small-chunks", type=int, default=200_000)
    ap.add_argument("--small-bytes", type=int, default=2048)
    ap.add_argument("--dvc", default="/tmp/dvcenv/bin/dvc" if Path("/tmp/dvcenv/bin/dvc").exists() else shutil.which("dvc"))
    ap.add_argument("--workdir", type=Path)
    ap.add_argument("--only", choices=["big", "small"])
    ap.add_argument("--skip-s3", action="store_true")
    ap.add_argument("--skip-git", action="store_true")
    ap.add_argument("--skip-dvc", action="store_true")
    args = ap.parse_args()
    work = Path(args.workdir or tempfile.mkdtemp(prefix="mrepo-bench-transfer-"))
    work.mkdir(parents=True, exist_ok=True)
    print(f"mrepo transfer benchmark: {os.cpu_count()} cores, work dir {work}")
    print(f"  big set: {args.size_gib:g} GiB in 4 MiB chunks; small set: {args.small_chunks} chunks of {args.small_bytes} B in 200 arrays")
    srv = None
    if not args.skip_s3:
        srv, endpoint = start_s3()
        print(f"  S3: moto_server at {endpoint} (separate process, loopback)")
    try:
        for kind in ("big", "small"):
            if args.only and kind != args.only:
                continue
            d = work / kind
            d.mkdir()
            t0 = time.perf_counter()
            seed, plain, arrays, total = make_dataset(d, kind, args)
            n_chunks = sum(n for _, n in arrays)
            print(f"\n== {kind}: {n_chunks} chunks, {total / MB:.1f} MB (generated in {time.perf_counter() - t0:.1f} s)")
            results = {"path": bench_mrepo(d, seed, total, "path", None)}
            if srv is not None:
                results["s3"] = bench_mrepo(d, seed, total, "s3", f"s3://mrepo-bench/{kind}")
            for label, r in results.items():
                print(f"  mrepo push  -> {label:<5} {fmt_rate(total, r['push_s'])}  [{r['push'].requests} requests, {r['push'].packs} packs]")
                print(f"  mrepo clone <- {label:<5} {fmt_rate(total, r['clone_s'])}  [{r['clone'].requests} requests]")
                if label == "path":
                    print(f"    files in the chunk store: remote {r['hub_files']}, clone {r['clone_files']} (for {n_chunks} chunks)")
                print(f"  mrepo clone --lazy <- {label:<5} {r['lazy_s']:6.2f} s, {r['lazy_bytes'] / MB:.2f} MB on disk "
                      f"(full clone: {r['full_bytes'] / MB:.1f} MB)")
            g = None if args.skip_git else bench_git(d, plain)
            if g:
                print(f"  git push    -> path  {fmt_rate(total, g['push_s'])}  (git add+commit before it: {g['add_s']:.1f} s)")
                print(f"  git clone   <- path  {fmt_rate(total, g['clone_s'])}  (--no-local, with checkout)")
            dv = None if (args.skip_dvc or not args.dvc) else bench_dvc(d, plain, args.dvc)
            if dv:
                print(f"  dvc push    -> path  {fmt_rate(total, dv['push_s'])}  (dvc add before it: {dv['add_s']:.1f} s)")
            # refinement of 5% of the chunks
            changed = refine(seed, plain, kind, arrays, args)
            print(f"  refinement: {changed / MB:.2f} MB changed ({100 * changed / total:.1f}% of the bytes)")
            for label in results:
                t0 = time.perf_counter()
                res = push(seed, label)
                dt = time.perf_counter() - t0
                hist = res.history[1] if res.history else 0
                sent = res.chunks.wire + hist  # chunk objects as written (pack headers, indexes) + git objects
                print(f"  mrepo push after refinement -> {label:<5} sent {sent / MB:8.2f} MB = {sent / changed:.3f}x changed "
                      f"(chunks {res.chunks.bytes / MB:.2f} MB, pack overhead {(res.chunks.wire - res.chunks.bytes) / MB:.3f} MB, "
                      f"history {hist / MB:.3f} MB) in {dt:.2f} s")
            if g:
                t, added = git_refine_push(g, plain)
                print(f"  git push after refinement   -> path  added {added / MB:8.2f} MB = {added / changed:.3f}x changed in {t:.2f} s")
            if dv:
                t, added = dvc_refine_push(dv, plain, args.dvc)
                print(f"  dvc push after refinement   -> path  added {added / MB:8.2f} MB = {added / changed:.3f}x changed in {t:.2f} s")
            shutil.rmtree(d, ignore_errors=True)
    finally:
        if srv is not None:
            srv.kill()
            srv.wait()
    if not args.workdir:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
