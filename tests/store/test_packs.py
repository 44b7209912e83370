"""Packs in a repository's own chunk store (docs/format.md §4.1): verified
reads, fsck of packs and indexes, gc that drops or rewrites whole packs."""

from __future__ import annotations

import os
import time

import numpy as np
import pytest

import mrepo
from mrepo.errors import CorruptObject, NotFound
from mrepo.store import write_array
from mrepo.store.chunks import ChunkStore
from mrepo.store.digest import blake3_hex
from mrepo.store.gc import reachable_chunks


def _pack_all(repo):
    """Move every loose chunk of ``repo`` into one pack (what a clone leaves)."""
    loose = list(repo.chunks.iter_loose_digests())
    idx = repo.chunks.write_pack([(d, repo.chunks.get(d)) for d in loose])
    for d in loose:
        repo.chunks.delete(d)
    assert list(repo.chunks.iter_loose_digests()) == []
    return idx


def _age(path, seconds):
    t = time.time() - seconds
    os.utime(path, (t, t))


@pytest.fixture
def packed(repo):
    a = np.random.default_rng(0).normal(size=(8, 32, 32)).astype(np.float32)
    write_array(repo.index, "keep", a, chunks=(1, 32, 32))
    repo.index.commit("keep")
    idx = _pack_all(repo)
    return repo, a, idx


def test_packed_chunks_read_verified(packed, cli):
    repo, a, idx = packed
    np.testing.assert_array_equal(repo.open_array("HEAD", "keep")[:], a)
    fresh = mrepo.open_repo(repo.path)  # another reader, indexes loaded on first miss
    np.testing.assert_array_equal(fresh.open_array("HEAD", "keep")[:], a)
    digests = idx.digests_hex()
    d = digests[0]
    assert repo.chunks.has(d) and repo.chunks.size(d) == int(idx.entries["size"][0])
    assert sorted(repo.chunks.iter_digests()) == digests
    assert repo.chunks.missing([*digests, "0" * 64]) == ["0" * 64]
    assert repo.chunks.delete(d) == 0 and repo.chunks.has(d)  # packed chunks go only with their pack
    got = repo.chunks.get_many(digests)
    assert all(blake3_hex(got[x]) == x for x in digests)
    rep = repo.fsck()
    assert rep.ok and rep.chunks == len(digests)
    assert "ok" in cli("fsck", cwd=repo.path, check=True).stdout
    # a damaged chunk inside a pack is never returned
    pack = repo.chunks.pack_path(idx.pack_id)
    raw = bytearray(pack.read_bytes())
    off = int(idx.entries["offset"][0])
    raw[off] ^= 0xFF
    os.chmod(pack, 0o644)
    pack.write_bytes(bytes(raw))
    with pytest.raises(CorruptObject, match="does not match its digest") as ei:
        mrepo.open_repo(repo.path).chunks.get(d)
    assert ei.value.obj == d
    with pytest.raises(CorruptObject):
        repo.chunks.get_many(digests)
    rep = repo.fsck()
    assert [(p.kind, p.object) for p in rep.problems] == [("corrupt", d)]
    # a truncated pack: the chunks past the cut are errors, and fsck names the pack
    pack.write_bytes(bytes(raw[: len(raw) // 2]))
    rep = mrepo.open_repo(repo.path).fsck()
    assert not rep.ok and any(p.object == str(pack) and "index says" in p.message for p in rep.problems)
    r = cli("fsck", cwd=repo.path)
    assert r.returncode == 1 and "error: corrupt" in r.stderr


def test_damaged_index_is_reported_and_skipped(packed):
    repo, a, idx = packed
    write_array(repo.index, "more", a + 1, chunks=(1, 32, 32))
    repo.index.commit("more")
    idx2 = _pack_all(repo)  # a second pack with the new chunks
    name = repo.chunks.packs_dir / f"{idx.pack_id}.idx"
    os.chmod(name, 0o644)
    name.write_bytes(name.read_bytes()[:-5])
    r2 = mrepo.open_repo(repo.path)
    np.testing.assert_array_equal(r2.open_array("HEAD", "more")[:], a + 1)  # the other pack still reads
    with pytest.raises(NotFound):
        r2.chunks.get(idx.digests_hex()[0])
    rep = r2.fsck()
    assert any(p.object == str(name) and "index" in p.message for p in rep.problems)
    assert sum(p.kind == "missing" for p in rep.problems) == len(idx)
    with pytest.raises(CorruptObject, match="index"):  # a store read as a remote is strict
        ChunkStore(repo.chunks.root, strict_packs=True).missing(idx2.digests_hex())


def test_put_of_a_packed_chunk_protects_its_pack(packed):
    repo, a, idx = packed
    pack = repo.chunks.pack_path(idx.pack_id)
    _age(pack, 30 * 86400)
    d = idx.digests_hex()[0]
    repo.chunks.put(repo.chunks.get(d))
    assert list(repo.chunks.iter_loose_digests()) == []  # not stored twice
    assert time.time() - pack.stat().st_mtime < 60  # the pack's grace period starts again
    write_array(repo.index, "again", a, chunks=(1, 32, 32))  # same chunks: nothing new written
    assert list(repo.chunks.iter_loose_digests()) == []


def test_pack_writer_streams_packs_and_keeps_what_arrived(repo):
    chunks = [os.urandom(5000) for _ in range(20)]
    ds = [blake3_hex(c) for c in chunks]
    with repo.chunks.pack_writer(12_000) as w:
        for d, c in zip(ds, chunks):
            w.add(d, c)
            w.add(d, c)  # twice: stored once
    assert len(w.packs) == 7 and sum(len(i) for i in w.packs) == 20
    assert sorted(repo.chunks.iter_digests()) == sorted(ds)
    assert repo.chunks.get_many(ds) == dict(zip(ds, chunks))
    more = [os.urandom(3000) for _ in range(3)]
    with pytest.raises(RuntimeError):
        with repo.chunks.pack_writer() as w:
            for c in more:
                w.add(blake3_hex(c), c)
            raise RuntimeError("the remote went away")
    assert all(repo.chunks.has(blake3_hex(c)) for c in more)  # committed: a re-run skips them
    assert list(repo.chunks.tmp.iterdir()) == []


def test_gc_drops_or_rewrites_whole_packs(repo, cli):
    rng = np.random.default_rng(1)
    a = rng.normal(size=(8, 32, 32)).astype(np.float32)
    write_array(repo.index, "keep", a, chunks=(1, 32, 32))
    repo.index.commit("keep")
    repo.create_branch("tmp")
    repo.checkout("tmp")
    write_array(repo.index, "gone", a + 5, chunks=(1, 32, 32))
    repo.index.commit("on tmp")
    repo.checkout("main")
    mixed = _pack_all(repo)  # keep and gone in one pack
    repo.checkout("tmp")
    write_array(repo.index, "gone2", a + 7, chunks=(1, 32, 32))
    repo.index.commit("more on tmp")
    repo.checkout("main")
    only_dead = _pack_all(repo)  # gone2 alone
    repo.delete_branch("tmp")
    keep = reachable_chunks(repo)
    assert len(keep) == 8 and keep < set(mixed.digests_hex())
    rep = repo.gc(grace_seconds=0, dry_run=True)
    assert (rep.removed_chunks, rep.rewritten_packs, rep.dropped_packs) == (16, 1, 1)
    rep = repo.gc()  # the packs are new: the grace period keeps them whole
    assert rep.removed_chunks == 0 and rep.kept_recent_chunks == 16
    for idx in (mixed, only_dead):
        _age(repo.chunks.pack_path(idx.pack_id), 30 * 86400)
    # a pack left without its index by a killed writer, and an old temporary file
    orphan = repo.chunks.packs_dir / ("ab" * 32 + ".pack")
    orphan.write_bytes(b"MRPK\x01\x00\x00\x00partial")
    stale = repo.chunks.tmp / "0123.pack"
    stale.write_bytes(b"MRPK")
    for p in (orphan, stale):
        _age(p, 30 * 86400)
    other = mrepo.open_repo(repo.path)  # a reader that loaded the indexes before gc
    assert other.chunks.has(next(iter(keep)))
    r = cli("gc", cwd=repo.path, check=True)
    assert "freed 16 chunks" in r.stdout
    assert not orphan.exists() and not stale.exists()
    packs = repo.chunks.packs()
    assert len(packs) == 1 and mixed.pack_id not in packs and only_dead.pack_id not in packs
    assert set(next(iter(packs.values())).digests_hex()) == keep
    assert repo.fsck().ok
    np.testing.assert_array_equal(repo.open_array("HEAD", "keep")[:], a)
    np.testing.assert_array_equal(other.open_array("HEAD", "keep")[:], a)  # found in the rewritten pack
    assert other.chunks.get_many(sorted(keep)).keys() == keep
    assert repo.gc(grace_seconds=0).removed_chunks == 0
