"""Path remotes move chunks in packs (docs/remotes.md §2.4): push writes a few
packs into the remote repository's chunk store, which reads, checks and
collects them as its own; fetch and clone read them in large reads; every
chunk is verified on arrival; interrupted transfers resume."""

from __future__ import annotations

import os

import numpy as np
import pytest
from popgen import add_species_commit, make_population, refine_species

import mrepo
from mrepo.collab import add_remote, clone, fetch, push
from mrepo.errors import CorruptObject

# popgen seeds species A with 0 + hash("A") % 1000 (a different value in each
# run): seeds above that range give B and C chunks of their own, always
SEED_B, SEED_C = 1007, 1008


def _state(repo):
    return (repo.refs.list("refs/"), repo.refs.read_head(), sorted(repo.chunks.iter_digests()))


def _loose(repo):
    return list(repo.chunks.iter_loose_digests())


def _pack_files(repo):
    d = repo.chunks.packs_dir
    return sorted(p.name for p in d.iterdir()) if d.exists() else []


def _species_coords(repo, name="A", rev="HEAD"):
    return np.asarray(repo.population(rev).species[name].particles.coordinates[...])


@pytest.fixture
def central(tmp_path):
    repo = mrepo.init_repo(tmp_path / "central")
    make_population(repo, n_items=3, species={"A": 300})
    return repo


@pytest.fixture
def small_packs(monkeypatch):
    monkeypatch.setenv("MREPO_PACK_BYTES", str(16 << 10))  # several packs for a small population


def _seed_and_hub(central, tmp_path):
    seed = clone(str(central.path), tmp_path / "seed")
    hub = mrepo.init_repo(tmp_path / "hub")
    add_remote(seed, "hub", str(hub.path))
    return seed, hub


def test_path_push_and_clone_move_packs_not_files(central, tmp_path, small_packs, cli):
    seed, hub = _seed_and_hub(central, tmp_path)
    # a clone keeps what it received as packs too
    assert _loose(seed) == [] and len(seed.chunks.packs()) >= 2
    need = len(list(seed.chunks.iter_digests()))
    res = push(seed, "hub", force=True)
    assert res.chunks.chunks == need and res.chunks.packs >= 2
    assert res.chunks.requests == 2 * res.chunks.packs < need  # a pack and its index each, not a file per chunk
    assert _loose(hub) == []
    files = _pack_files(hub)
    assert len(files) == 2 * res.chunks.packs and {f.rsplit(".", 1)[1] for f in files} == {"pack", "idx"}
    # the remote repository reads, checks and verifies the packed chunks as its own
    assert hub.head().commit == seed.head().commit
    assert hub.verify() == [] and hub.fsck().ok
    np.testing.assert_array_equal(_species_coords(hub), _species_coords(central))
    assert "ok" in cli("fsck", cwd=hub.path, check=True).stdout
    # a clone reads the packs with a few large reads, each chunk verified
    c = clone(str(hub.path), tmp_path / "c")
    cs = c._clone_result.chunks
    assert cs.chunks == need and cs.requests <= cs.packs < need
    assert _loose(c) == [] and c.fsck().ok and c.verify() == []
    np.testing.assert_array_equal(_species_coords(c), _species_coords(central))
    # a refinement pushed over the path: only the changed chunks, in packs
    before = c.head().commit
    refine_species(c, "A")
    changed = sum(x.bytes_changed for x in c.diff(before, "HEAD"))
    res2 = push(c, "origin")
    assert res2.chunks.bytes == changed and res2.chunks.requests == 2 * res2.chunks.packs and res2.chunks.skipped > 0
    assert hub.fsck().ok and hub.verify() == []


def test_remote_written_the_old_way_and_mixed_stores_still_read(central, tmp_path, small_packs):
    # central holds loose chunk files only (its own commits, or a push by older mrepo)
    assert central.chunks.packs() == {} and _loose(central)
    lazy = clone(str(central.path), tmp_path / "lazy", lazy=True)
    seed = clone(str(central.path), tmp_path / "seed")
    assert seed.fsck().ok and _loose(seed) == []
    # a push to it adds packs beside the loose files; both serve clones and lazy reads
    add_species_commit(seed, "B", 120, seed=SEED_B)
    push(seed, "origin")
    assert central.chunks.packs() and _loose(central)
    assert central.fsck().ok and central.verify() == []
    full = clone(str(central.path), tmp_path / "full")
    assert full.fsck().ok and set(full.population().species) == {"A", "B"}
    assert lazy.fsck().promised_chunks > 0
    fetch(lazy, "origin")
    np.testing.assert_array_equal(_species_coords(lazy, "B", "origin/main"), _species_coords(seed, "B"))
    np.testing.assert_array_equal(_species_coords(lazy, "A", "origin/main"), _species_coords(central, "A"))
    rep = lazy.fsck(fetch_missing=True)
    assert rep.ok and rep.promised_chunks == 0


def _packed_hub(central, tmp_path):
    seed, hub = _seed_and_hub(central, tmp_path)
    push(seed, "hub", force=True)
    return seed, hub


def test_untrusted_path_remote_wrong_chunk_truncated_pack_damaged_index(central, tmp_path, small_packs, cli):
    _, hub = _packed_hub(central, tmp_path)
    pack = max(hub.chunks.packs_dir.glob("*.pack"), key=lambda p: p.stat().st_size)
    original = pack.read_bytes()
    c = mrepo.init_repo(tmp_path / "c")
    add_remote(c, "hub", str(hub.path))
    before = _state(c)

    def unchanged():
        after = _state(c)
        assert after[:2] == before[:2]  # refs and HEAD never move
        kept = after[2]
        assert len(c.chunks.get_many(kept)) == len(kept)  # whatever chunk was kept arrived verified

    os.chmod(pack, 0o644)
    # 1. a substituted chunk (same length, other bytes)
    bad = bytearray(original)
    bad[len(bad) // 2] ^= 0xFF
    pack.write_bytes(bytes(bad))
    with pytest.raises(CorruptObject, match="does not match its digest"):
        fetch(c, "hub")
    unchanged()
    r = cli("fetch", "hub", cwd=c.path)
    assert r.returncode == 1 and r.stderr.count("\n") == 1 and r.stderr.startswith("error: ") and "digest" in r.stderr
    unchanged()
    # 2. a truncated pack
    pack.write_bytes(original[: len(original) // 2])
    with pytest.raises(CorruptObject, match="truncated pack") as ei:
        fetch(c, "hub")
    assert pack.name in str(ei.value.obj)
    unchanged()
    r = cli("fetch", "hub", cwd=c.path)
    assert r.returncode == 1 and r.stderr.count("\n") == 1 and "truncated pack" in r.stderr
    pack.write_bytes(original)
    # 3. a damaged index: refused before anything moves
    idx = pack.with_suffix(".idx")
    good_idx = idx.read_bytes()
    os.chmod(idx, 0o644)
    idx.write_bytes(good_idx[:-10])
    c2 = mrepo.init_repo(tmp_path / "c2")
    add_remote(c2, "hub", str(hub.path))
    before2 = _state(c2)
    with pytest.raises(CorruptObject, match="index"):
        fetch(c2, "hub")
    assert _state(c2) == before2
    # the remote's own fsck names the damaged index
    rep = mrepo.open_repo(hub.path).fsck()
    assert not rep.ok and any(p.object.endswith(idx.name) for p in rep.problems)
    idx.write_bytes(good_idx)
    assert hub.fsck().ok
    fetch(c, "hub")
    fetch(c2, "hub")
    assert c.refs.read("refs/remotes/hub/main") == c2.refs.read("refs/remotes/hub/main") == hub.head().commit
    assert c.fsck().ok and c2.fsck().ok


class _Stop(Exception):
    pass


def _stop_after(limit):
    moved = [0]

    def progress(n):
        moved[0] += n
        if moved[0] > limit:
            raise _Stop("interrupted")

    return progress


def test_interrupted_path_push_and_fetch_resume(central, tmp_path, small_packs, monkeypatch):
    monkeypatch.setenv("MREPO_TRANSFER_THREADS", "1")
    seed, hub = _seed_and_hub(central, tmp_path)
    need = len(list(seed.chunks.iter_digests()))
    hub_refs = hub.refs.list("refs/")
    with pytest.raises(_Stop):
        push(seed, "hub", force=True, progress=_stop_after(40 << 10))
    assert hub.refs.list("refs/") == hub_refs  # no ref without its chunks
    sent = len(list(hub.chunks.iter_digests()))
    assert 0 < sent < need and hub.fsck().ok
    res = push(seed, "hub", force=True)
    assert res.chunks.skipped == sent and res.chunks.chunks == need - sent  # only what was still missing
    assert hub.refs.read("refs/heads/main") == seed.head().commit and hub.fsck().ok
    # a fetch interrupted: refs do not move, verified chunks stay, a re-run completes
    c = mrepo.init_repo(tmp_path / "c")
    add_remote(c, "hub", str(hub.path))
    before = c.refs.list("refs/")
    with pytest.raises(_Stop):
        fetch(c, "hub", progress=_stop_after(30 << 10))
    assert c.refs.list("refs/") == before
    partial = len(list(c.chunks.iter_digests()))
    assert 0 < partial < need
    res = fetch(c, "hub")
    assert res.chunks.skipped == partial and res.chunks.chunks == need - partial
    assert c.refs.read("refs/remotes/hub/main") == seed.head().commit and c.fsck().ok


def test_remote_side_gc_keeps_reachable_packed_chunks(central, tmp_path, cli):
    seed = clone(str(central.path), tmp_path / "seed")
    hub = mrepo.init_repo(tmp_path / "hub")
    add_remote(seed, "hub", str(hub.path))
    seed.create_branch("extra")
    seed.create_branch("extra2")
    seed.checkout("extra")
    add_species_commit(seed, "B", 400, seed=SEED_B)
    # one push brings main's and B's chunks together: one pack mixes them
    push(seed, "hub", "extra")
    push(seed, "hub", "main", force=True)
    seed.checkout("extra2")
    add_species_commit(seed, "C", 300, seed=SEED_C)
    push(seed, "hub", "extra2")  # a pack of C's chunks alone
    kept = set(central.chunks.iter_digests())
    dead = set(seed.chunks.iter_digests()) - kept
    assert dead and len(hub.chunks.packs()) == 2 and _loose(hub) == []
    lazy = clone(str(hub.path), tmp_path / "lazy", lazy=True)
    lazy.population().species["A"].particles.coordinates[...]  # its fetcher has read the hub's indexes
    hub.delete_branch("extra")
    hub.delete_branch("extra2")
    # within the grace period nothing goes
    rep = hub.gc()
    assert rep.removed_chunks == 0 and rep.kept_recent_chunks == len(dead)
    dry = hub.gc(grace_seconds=0, dry_run=True)
    assert dry.removed_chunks == len(dead) and dry.rewritten_packs == 1 and dry.dropped_packs == 1
    assert set(hub.chunks.iter_digests()) == kept | dead
    r = cli("gc", "--grace", "0", cwd=hub.path, check=True)
    assert f"freed {len(dead)} chunks" in r.stdout
    assert set(hub.chunks.iter_digests()) == kept and len(hub.chunks.packs()) == 1
    assert _loose(hub) == [] and hub.fsck().ok and hub.verify() == []
    assert "ok" in cli("fsck", cwd=hub.path, check=True).stdout
    assert hub.gc(grace_seconds=0).removed_chunks == 0
    # readers that loaded the old indexes find the chunks in the rewritten pack
    np.testing.assert_array_equal(_species_coords(lazy), _species_coords(central))
    assert lazy.verify() == []
    for b in ("extra", "extra2"):  # branches the hub deleted (and collected)
        lazy.refs.delete(f"refs/remotes/origin/{b}")
    assert lazy.fsck(fetch_missing=True).ok
    c = clone(str(hub.path), tmp_path / "c")
    assert c.fsck().ok and c.verify() == []
