"""Dedup, corruption detection and bad input (issue 2's "must hold" list)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

import mrepo
from mrepo.io.mrc import write_mrc
from mrepo.store import write_array


def _store_bytes(repo) -> int:
    total = 0
    for root, _dirs, files in os.walk(repo.gitdir):
        for f in files:
            total += os.path.getsize(os.path.join(root, f))
    return total


def test_dedup_one_percent_change_adds_about_one_percent(repo):
    rng = np.random.default_rng(0)
    a = rng.normal(size=(200, 128, 128)).astype(np.float32)  # 12.5 MiB, 200 chunks of 64 KiB
    txn = repo.index
    write_array(txn, "stack", a, chunks=(1, 128, 128))
    txn.commit("v1")
    before = _store_bytes(repo)
    b = a.copy()
    b[[3, 50, 199]] += 1.0  # 3 of 200 chunks = 1.5 %
    write_array(repo.index, "stack", b, chunks=(1, 128, 128))
    repo.index.commit("v2")
    added = _store_bytes(repo) - before
    assert added <= 0.02 * a.nbytes, f"added {added} bytes for a {a.nbytes}-byte array"
    # a second array with the same content costs no chunk bytes
    before = _store_bytes(repo)
    write_array(repo.index, "copy", b, chunks=(1, 128, 128))
    repo.index.commit("copy")
    assert _store_bytes(repo) - before < 0.01 * a.nbytes


def _flip(path: Path, offset: int) -> None:
    os.chmod(path, 0o644)
    data = bytearray(path.read_bytes())
    data[offset % len(data)] ^= 0x01
    path.write_bytes(bytes(data))


@pytest.fixture
def committed(repo):
    a = np.random.default_rng(1).normal(size=(8, 32, 32)).astype(np.float32)
    write_array(repo.index, "m", a, chunks=(2, 32, 32))
    sha = repo.index.commit("data")
    return repo, sha, a


@pytest.mark.parametrize("offset", [0, 1, 100, 4095, -1])
def test_flipped_chunk_byte_is_detected(committed, cli, offset):
    repo, sha, a = committed
    digest = next(iter(repo.snapshot_of(sha).manifest("data/m").values())).digest
    _flip(repo.chunks.path(digest), offset)
    r = cli("fsck", cwd=repo.path)
    assert r.returncode != 0 and digest in r.stderr and "corrupt" in r.stderr
    fresh = mrepo.open_repo(repo.path)
    with pytest.raises(mrepo.CorruptObject):
        fresh.open_array(sha, "m")[:]
    r = cli("export", "HEAD:m", str(repo.path / "x.npy"), cwd=repo.path)
    assert r.returncode == 1 and r.stderr.startswith("error:") and len(r.stderr.strip().splitlines()) == 1


def _loose(repo, sha: str) -> Path:
    return repo.gitdir / "objects" / sha[:2] / sha[2:]


@pytest.mark.parametrize("offset", [0, 1, 2, 10, 30, -5, -1])
def test_flipped_manifest_byte_is_detected(committed, cli, offset):
    repo, sha, _ = committed
    blob = repo.snapshot_of(sha).blob_id("data/m/manifest.json")
    _flip(_loose(repo, blob), offset)
    r = cli("fsck", cwd=repo.path)
    assert r.returncode != 0 and blob in r.stderr
    fresh = mrepo.open_repo(repo.path)
    with pytest.raises(mrepo.CorruptObject):
        fresh.open_array(sha, "m")[:]


@pytest.mark.parametrize("offset", list(range(0, 41, 5)))
def test_flipped_ref_byte_is_detected(committed, cli, offset):
    repo, sha, _ = committed
    _flip(repo.gitdir / "refs" / "heads" / "main", offset)
    r = cli("fsck", cwd=repo.path)
    assert r.returncode != 0 and "refs/heads/main" in r.stderr
    r = cli("log", cwd=repo.path)
    assert r.returncode == 1 and r.stderr.startswith("error:")


def test_flipped_head_byte_is_detected(committed, cli):
    """HEAD is a ref too: every one-bit flip of it is reported, including
    those that leave a well-formed name of a branch that does not exist."""
    repo, sha, _ = committed
    head = repo.gitdir / "HEAD"
    orig = head.read_bytes()
    for offset in range(len(orig)):
        _flip(head, offset)
        rep = mrepo.open_repo(repo.path).fsck()
        assert not rep.ok and any(p.object == "HEAD" for p in rep.problems), head.read_bytes()
        head.write_bytes(orig)
    _flip(head, len(orig) - 2)  # refs/heads/main -> refs/heads/maio
    r = cli("fsck", cwd=repo.path)
    assert r.returncode == 1 and "HEAD names branch refs/heads/maio" in r.stderr
    r = cli("log", cwd=repo.path)
    assert r.returncode == 1 and r.stderr.startswith("error:")


def test_fsck_clean_and_missing_chunk(committed, cli):
    repo, sha, _ = committed
    assert cli("fsck", cwd=repo.path).returncode == 0
    digest = next(iter(repo.snapshot_of(sha).manifest("data/m").values())).digest
    os.unlink(repo.chunks.path(digest))
    r = cli("fsck", cwd=repo.path)
    assert r.returncode == 1 and f"missing {digest}" in r.stderr


def _state(repo) -> tuple:
    """Everything a failed command must leave unchanged."""
    idx = repo.gitdir / "mrepo" / "txn" / "index" / "log"
    return (
        (repo.gitdir / "HEAD").read_bytes(),
        tuple(sorted(repo.refs.list().items())),
        idx.read_bytes() if idx.exists() else b"",
        tuple(sorted(repo.chunks.iter_digests())),
    )


def test_bad_input_one_line_errors_and_no_change(committed, cli, tmp_path, fixtures):
    repo, sha, a = committed
    good = tmp_path / "good.mrc"
    write_mrc(good, a, 1.0)
    trunc = tmp_path / "trunc.mrc"
    trunc.write_bytes(good.read_bytes()[:-100])
    tiny = tmp_path / "tiny.mrc"
    tiny.write_bytes(b"\x00" * 300)
    badtif = tmp_path / "bad.tif"
    badtif.write_bytes(b"II*\x00" + b"\x00" * 20)
    import tifffile

    tif = tmp_path / "stack.tif"
    tifffile.imwrite(tif, np.zeros((4, 64, 64), np.uint16), photometric="minisblack")
    trunctif = tmp_path / "trunc.tif"
    trunctif.write_bytes(tif.read_bytes()[: len(tif.read_bytes()) // 2])
    before = _state(repo)
    cases = [
        (("log", "nosuchrev"), "unknown revision"),
        (("show", "deadbeef"), "unknown revision"),
        (("show", "HEAD~99"), "beyond"),
        (("export", "HEAD:nope", str(tmp_path / "o.mrc")), "no such"),
        (("show", "HEAD:m/c/0"), "no such"),  # chunk keys inside an array are not folders
        (("add", str(good), "--as", "../escape"), "'..'"),
        (("add", str(good), "--as", "/abs/name"), "absolute"),
        (("add", str(good), "--as", "a//b"), "empty"),
        (("add", str(good), "--as", "maps/.git"), "git reserves"),
        (("add", str(good), "--as", ".GitModules"), "git reserves"),
        (("add", str(good), "--as", "m/inner"), "'m' is an array"),
        (("add", str(good), str(trunc)), "truncated"),
        (("add", str(tiny)), "truncated"),
        (("add", str(badtif)), "TIFF"),
        (("add", str(trunctif)), "TIFF"),
        (("add", str(tmp_path / "missing.mrc")), "no such file"),
        (("add", str(fixtures / "relion" / "relion31_particles.star"), "--as", "m"), "already an array"),
        (("checkout", "nosuch"), "unknown revision"),
        (("revert", "nosuch"), "unknown revision"),
        (("branch", "bad..name"), "invalid ref name"),
        (("commit", "-m", "nothing staged"), "nothing to commit"),
    ]
    for args, needle in cases:
        r = cli(*args, cwd=repo.path)
        assert r.returncode != 0, args
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: "), (args, r.stderr)
        assert needle in lines[0], (args, lines[0])
        assert _state(repo) == before, args
    # not a repository
    r = cli("log", cwd=tmp_path)
    assert r.returncode == 1 and "not an mrepo repository" in r.stderr
    r = cli("-C", str(tmp_path / "nowhere"), "status")
    assert r.returncode == 1 and r.stderr.startswith("error:")


def test_an_array_cannot_hold_a_staged_or_committed_array(repo, cli, tmp_path):
    a = np.zeros((2, 8, 8), np.float32)
    src = tmp_path / "a.mrc"
    write_mrc(src, a, 1.0)
    cli("add", str(src), "--as", "x", cwd=repo.path, check=True)  # staged, not committed
    before = _state(repo)
    r = cli("add", str(src), "--as", "x/y", cwd=repo.path)
    assert r.returncode == 1 and r.stderr.strip().splitlines() == ["error: 'x' is an array and cannot hold other arrays (x/y)"]
    assert _state(repo) == before
    with pytest.raises(mrepo.InvalidInput, match="'x' is an array"):
        write_array(repo.index, "x/y/z", a)
    sha = repo.index.commit("x")
    with pytest.raises(mrepo.InvalidInput, match="is an array"):
        write_array(repo.index, "x/y", a)
    np.testing.assert_array_equal(repo.open_array(sha, "x")[:], a)


@pytest.mark.parametrize("key", ["data/../evil", "data/a/./b/c/0", "data/.git/zarr.json", "data/m/.GIT./c/0", "docs/.gitmodules", "docs/git~1"])
def test_keys_git_would_reject_are_refused_by_the_store(repo, key):
    """Every commit stays readable by stock git: `git fsck` rejects trees with
    '.', '..' or '.git'-like entries, so neither the CLI, nor a transaction,
    nor zarr writing through the Store may stage one."""
    txn = repo.transaction()
    with pytest.raises(mrepo.InvalidInput, match="names git reserves"):
        txn.set(key, b"{}")
    import zarr

    with pytest.raises(mrepo.InvalidInput):
        zarr.create_array(txn.store, name="x/.git", shape=(2,), dtype="f4")
