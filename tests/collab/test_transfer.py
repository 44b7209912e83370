"""clone / fetch / pull / push over a path, a git daemon and an S3 server; lazy clones."""

from __future__ import annotations

import os

import numpy as np
import pytest
from popgen import add_species_commit, make_population, refine_species

import mrepo
from mrepo.collab import clone, fetch, prefetch, pull, push
from mrepo.collab.packs import build_pack, parse_index
from mrepo.errors import ConflictError, CorruptObject, MrepoError, NotFound


def _state(repo):
    """Everything a failed operation must leave unchanged."""
    return (repo.refs.list("refs/"), repo.refs.read_head(), sorted(repo.chunks.iter_digests()))


def _digests(repo, rev="HEAD"):
    pop = repo.population(rev)
    return {
        "species": {n: repo.read_document(rev, f"species/{n}/species.json") for n in pop.species},
        "population": repo.read_document(rev, "population.json"),
    }


@pytest.fixture
def central(tmp_path):
    repo = mrepo.init_repo(tmp_path / "central")
    make_population(repo, n_items=3, species={"A": 300})
    return repo


def _central_over(kind, central, tmp_path, request):
    """(repository URL, chunk URL or None, hub repository) of a central
    population served over ``kind``: the path itself, or a git daemon for
    history with an S3 bucket for chunks (seeded by a push)."""
    if kind == "path":
        return str(central.path), None, central
    daemon = request.getfixturevalue("git_daemon")
    endpoint, bucket = request.getfixturevalue("s3")
    hub = mrepo.init_repo(tmp_path / "hub")
    os.symlink(hub.gitdir, daemon.root / "central.git")
    url, chunks = daemon.url("central.git"), f"s3://{bucket}/pop"
    seed = clone(str(central.path), tmp_path / "seed")
    mrepo.collab.add_remote(seed, "hub", url, chunks=chunks)
    push(seed, "hub", force=True)
    return url, chunks, hub


@pytest.mark.parametrize("kind", ["path", "git+s3"])
def test_diverge_push_pull_converge(kind, central, tmp_path, request):
    url, chunks, central = _central_over(kind, central, tmp_path, request)
    a = clone(url, tmp_path / "a", chunks=chunks)
    b = clone(url, tmp_path / "b", chunks=chunks)
    assert a.head().commit == b.head().commit == central.head().commit
    a_commit = refine_species(a, "A")              # lab A refines species A
    b_commit = add_species_commit(b, "B", 150, seed=9)  # lab B adds species B
    push(a, "origin")
    with pytest.raises(ConflictError, match="mrepo pull"):
        push(b, "origin")
    _, mres = pull(b, "origin")
    assert mres.commit and set(b.commit_info(mres.commit).parents) == {b_commit, a_commit}
    assert mres.taken == ["species A"]
    push(b, "origin")
    _, mres_a = pull(a, "origin")
    assert mres_a.fast_forward
    assert a.head().commit == b.head().commit == central.head().commit
    assert _digests(a) == _digests(b)
    for r in (a, b):
        assert r.verify() == [] and r.fsck().ok
        pop = r.population()
        assert set(pop.species) == {"A", "B"} and pop.species["A"].resolution_angstrom == 4.2
        # nothing lost: both parents' versions are still there
        assert len(r.population(a_commit).species) == 1 and set(r.population(b_commit).species) == {"A", "B"}
    assert central.head().commit == a.head().commit
    if kind == "path":
        assert central.verify() == [] and central.fsck().ok
    np.testing.assert_array_equal(
        np.asarray(a.population().species["B"].particles.coordinates[...]),
        np.asarray(b.population(b_commit).species["B"].particles.coordinates[...]),
    )


def test_lazy_clone_reads_on_demand_and_prefetches(central, tmp_path):
    full = sum(central.chunks.size(d) for d in central.chunks.iter_digests())
    lazy = clone(str(central.path), tmp_path / "lazy", lazy=True)
    assert list(lazy.chunks.iter_digests()) == []  # metadata only
    rep = lazy.fsck()
    assert rep.ok and rep.promised_chunks == rep.chunks > 0
    assert lazy.gc(grace_seconds=0).removed_chunks == 0  # gc needs no chunk of a lazy clone
    assert list(lazy.chunks.iter_digests()) == []  # ... and fsck fetched nothing
    # first read fetches and caches exactly what it needs
    pop = lazy.population()
    coords = np.asarray(pop.species["A"].particles.coordinates[...])
    np.testing.assert_array_equal(coords, np.asarray(central.population().species["A"].particles.coordinates[...]))
    got = set(lazy.chunks.iter_digests())
    assert 0 < len(got) < rep.chunks
    stats = prefetch(lazy, species=["A"])
    assert stats.chunks > 0 and stats.skipped == len(got)
    assert prefetch(lazy, species=["A"]).chunks == 0
    prefetch(lazy, sources=["frames1"])
    rep2 = lazy.fsck()
    assert rep2.promised_chunks == 0 and rep2.ok
    # asked to, fsck fetches and checks what is promised
    lazy2 = clone(str(central.path), tmp_path / "lazy2", lazy=True)
    rep3 = lazy2.fsck(fetch_missing=True)
    assert rep3.ok and rep3.promised_chunks == 0 and len(list(lazy2.chunks.iter_digests())) == rep3.chunks
    # a chunk missing locally and absent from the remote is an error even in a lazy clone
    victim = next(iter(central.chunks.iter_digests()))
    central.chunks.delete(victim)
    lazy3 = clone(str(central.path), tmp_path / "lazy3", lazy=True)
    bad = lazy3.fsck()
    assert not bad.ok and [p.object for p in bad.problems] == [victim]
    cached = sum(lazy.chunks.size(d) for d in lazy.chunks.iter_digests())
    assert cached == full
    with pytest.raises(NotFound):
        prefetch(lazy, species=["nope"])


def test_lazy_clone_over_s3_and_git(central, tmp_path, request):
    url, chunks, _ = _central_over("git+s3", central, tmp_path, request)
    lazy = clone(url, tmp_path / "lazy", chunks=chunks, lazy=True)
    assert list(lazy.chunks.iter_digests()) == []
    assert lazy.verify() == []  # reads every raw array through the fetcher, verified
    assert lazy.fsck().promised_chunks == 0
    # a lazy clone can push: chunks it never read are already on the remote
    refine_species(lazy, "A")
    res = push(lazy, "origin")
    assert res.chunks.chunks > 0 and res.chunks.packs >= 1


def test_push_sends_only_changed_chunks_in_packs(central, tmp_path, request):
    url, chunks, _ = _central_over("git+s3", central, tmp_path, request)
    a = clone(url, tmp_path / "a", chunks=chunks)
    assert a._clone_result.chunks.requests < a._clone_result.chunks.chunks  # grouped reads, not one per chunk
    before = a.head().commit
    refine_species(a, "A")
    changed = {c.name: c.bytes_changed for c in a.diff(before, "HEAD")}
    res = push(a, "origin")
    assert res.chunks.bytes == sum(changed.values())
    assert res.chunks.packs == 1 and res.chunks.requests == 2
    # on the wire: the chunks, the pack header (8 B) and the index (88 B + 48 B per chunk)
    assert res.chunks.wire == res.chunks.bytes + 8 + 88 + 48 * res.chunks.chunks
    assert push(a, "origin").up_to_date


def test_interrupted_s3_push_and_fetch_resume(central, tmp_path, s3, cut_proxy, monkeypatch):
    endpoint, bucket = s3
    port = int(endpoint.rsplit(":", 1)[1])
    monkeypatch.setenv("MREPO_PACK_BYTES", str(16 << 10))  # many packs: a cut leaves some done
    monkeypatch.setenv("MREPO_TRANSFER_THREADS", "1")
    proxy = cut_proxy(port, cut_after=60 << 10)
    chunk_url = f"s3://{bucket}/pop?endpoint=http://127.0.0.1:{proxy.port}"
    seed = clone(str(central.path), tmp_path / "seed")
    remote_dir = tmp_path / "hub"
    mrepo.init_repo(remote_dir)
    mrepo.collab.add_remote(seed, "hub", str(remote_dir), chunks=chunk_url)
    hub = mrepo.open_repo(remote_dir)
    hub_before = hub.refs.list("refs/")
    with pytest.raises(MrepoError):
        push(seed, "hub", force=True)
    assert proxy.cut.is_set()
    assert hub.refs.list("refs/") == hub_before  # remote ref unchanged: no commit without its chunks
    proxy.restart()
    need = sum(1 for _ in seed.chunks.iter_digests())
    res = push(seed, "hub", force=True)
    assert 0 < res.chunks.chunks < need and res.chunks.skipped > 0  # only what was still missing
    assert res.chunks.chunks + res.chunks.skipped == need
    assert hub.refs.read("refs/heads/main") == seed.head().commit
    # fetch interrupted: the local repository does not move; re-run completes
    c = mrepo.init_repo(tmp_path / "c")
    mrepo.collab.add_remote(c, "hub", str(remote_dir), chunks=chunk_url)
    proxy.restart()
    proxy.cut_after = 40 << 10
    before = _state(c)
    with pytest.raises(MrepoError):
        fetch(c, "hub")
    assert c.refs.list("refs/") == before[0]
    partial = len(list(c.chunks.iter_digests()))
    proxy.restart()
    res = fetch(c, "hub")
    assert res.chunks.skipped == partial and res.chunks.chunks == need - partial
    assert c.refs.read("refs/remotes/hub/main") == seed.head().commit


def test_git_daemon_killed_between_chunks_and_history(central, tmp_path, git_daemon, s3):
    endpoint, bucket = s3
    url, chunks = git_daemon.url("hub.git"), f"s3://{bucket}/hub"
    hub = mrepo.init_repo(tmp_path / "hubrepo")
    os.symlink(hub.gitdir, git_daemon.root / "hub.git")
    seed = clone(str(central.path), tmp_path / "seed")
    mrepo.collab.add_remote(seed, "hub", url, chunks=chunks)
    # the history server dies: chunks arrive, the ref does not move
    from mrepo.collab import transfer

    real = transfer.open_remote

    def dying(repo, name):
        r, hist, cr = real(repo, name)
        hist.refs()
        git_daemon.stop()
        return r, hist, cr

    transfer.open_remote = dying
    try:
        with pytest.raises(MrepoError, match="git remote"):
            push(seed, "hub", force=True)
    finally:
        transfer.open_remote = real
    assert hub.refs.read("refs/heads/main") != seed.head().commit
    git_daemon.start()
    res = push(seed, "hub", force=True)
    assert res.chunks.chunks == 0 and res.chunks.skipped > 0  # chunks were already there
    assert hub.refs.read("refs/heads/main") == seed.head().commit


def _dir_remote(central, tmp_path):
    """A central population whose chunks are packs in a directory."""
    packs = tmp_path / "packs"
    seed = clone(str(central.path), tmp_path / "seed")
    hub = mrepo.init_repo(tmp_path / "hub")
    mrepo.collab.add_remote(seed, "hub", str(hub.path), chunks=str(packs))
    push(seed, "hub", force=True)
    return hub, packs


def test_untrusted_remote_wrong_chunk_truncated_pack_missing_object(central, tmp_path):
    hub, packs = _dir_remote(central, tmp_path)
    pack = max((packs / "packs").glob("*.pack"), key=lambda p: p.stat().st_size)
    original = pack.read_bytes()
    c = mrepo.init_repo(tmp_path / "c")
    mrepo.collab.add_remote(c, "hub", str(hub.path), chunks=str(packs))
    before = _state(c)
    # 1. a substituted chunk (same length, other bytes)
    bad = bytearray(original)
    bad[len(bad) // 2] ^= 0xFF
    os.chmod(pack, 0o644)
    pack.write_bytes(bytes(bad))
    with pytest.raises(CorruptObject, match="does not match its digest"):
        fetch(c, "hub")
    assert _state(c)[:2] == before[:2]
    # 2. a truncated pack
    pack.write_bytes(original[: len(original) // 2])
    with pytest.raises(CorruptObject, match="truncated pack"):
        fetch(c, "hub")
    assert _state(c)[:2] == before[:2]
    pack.write_bytes(original)
    # 3. a damaged index (seen by a client that has not cached it yet)
    idx = pack.with_suffix(".idx")
    good_idx = idx.read_bytes()
    os.chmod(idx, 0o644)
    idx.write_bytes(good_idx[:-10])
    c2 = mrepo.init_repo(tmp_path / "c2")
    mrepo.collab.add_remote(c2, "hub", str(hub.path), chunks=str(packs))
    before2 = _state(c2)
    with pytest.raises(CorruptObject, match="index"):
        fetch(c2, "hub")
    assert _state(c2) == before2
    idx.write_bytes(good_idx)
    # 4. a ref pointing to a missing object
    (hub.gitdir / "refs" / "heads" / "broken").write_text("0123456789abcdef0123456789abcdef01234567\n")
    with pytest.raises(CorruptObject, match="lacks an object"):
        fetch(c, "hub")
    assert c.refs.list("refs/") == before[0]
    (hub.gitdir / "refs" / "heads" / "broken").unlink()
    fetch(c, "hub")
    assert c.refs.read("refs/remotes/hub/main") == hub.head().commit


def test_git_remote_with_ref_to_missing_object(central, tmp_path, git_daemon):
    hub = mrepo.init_repo(tmp_path / "hubrepo")
    os.symlink(hub.gitdir, git_daemon.root / "hub.git")
    (hub.gitdir / "refs" / "heads" / "main").write_text("0123456789abcdef0123456789abcdef01234567\n")
    c = mrepo.init_repo(tmp_path / "c")
    mrepo.collab.add_remote(c, "hub", git_daemon.url("hub.git"), chunks=str(tmp_path / "packs"))
    before = _state(c)
    with pytest.raises(MrepoError):
        fetch(c, "hub")
    assert _state(c) == before


def test_pack_format_roundtrip_and_checks():
    import blake3

    chunks = [(blake3.blake3(b).hexdigest(), b) for b in (b"a" * 10, b"\0" * 7, b"xyz")]
    pid, pack, idx = build_pack(chunks)
    assert pid == blake3.blake3(pack).hexdigest() and pack[:4] == b"MRPK"
    back = parse_index(idx.to_bytes(), f"packs/{pid}.idx")
    assert sorted(back.digests_hex()) == back.digests_hex() == sorted(d for d, _ in chunks)
    for e, d in zip(back.entries, back.digests_hex()):
        data = pack[int(e["offset"]) : int(e["offset"]) + int(e["size"])]
        assert blake3.blake3(data).hexdigest() == d
    raw = bytearray(idx.to_bytes())
    raw[20] ^= 1
    with pytest.raises(CorruptObject):
        parse_index(bytes(raw), f"packs/{pid}.idx")
    with pytest.raises(CorruptObject, match="names another pack"):
        parse_index(idx.to_bytes(), "packs/" + "0" * 64 + ".idx")


def test_cli_clone_remote_push_pull(central, tmp_path, cli):
    r = cli("clone", str(central.path), str(tmp_path / "a"), check=True)
    assert "cloned" in r.stdout
    cli("clone", "--lazy", str(central.path), str(tmp_path / "b"), check=True)
    a = mrepo.open_repo(tmp_path / "a")
    refine_species(a, "A")
    r = cli("push", cwd=tmp_path / "a", check=True)
    assert "sent" in r.stdout
    r = cli("pull", cwd=tmp_path / "b", check=True)
    assert "fast-forward" in r.stdout
    r = cli("fetch", "--species", "A", cwd=tmp_path / "b", check=True)
    assert "prefetched" in r.stdout
    r = cli("remote", "add", "x", "git://127.0.0.1:1/x", cwd=tmp_path / "a")
    assert r.returncode == 1 and r.stderr.startswith("error: a git:// remote needs a chunk URL")
    r = cli("remote", "add", "x", "http://example.org/x", cwd=tmp_path / "a")
    assert r.returncode == 1 and "unsupported repository URL scheme" in r.stderr
    cli("remote", "add", "y", str(tmp_path / "b"), cwd=tmp_path / "a", check=True)
    assert "y\t" in cli("remote", "list", cwd=tmp_path / "a", check=True).stdout
    r = cli("clone", str(tmp_path / "nowhere"), str(tmp_path / "z"))
    assert r.returncode == 1 and r.stderr.count("\n") == 1 and not (tmp_path / "z").exists()


def test_credentials_are_never_stored_nor_printed(central, tmp_path, cli):
    from mrepo.collab.remotes import parse_chunk_url, parse_repo_url

    secret = "wJalrXUtnFEMI-K7MDENG"
    for bad in (f"s3://AKIAEXAMPLE:{secret}@bucket/pop", f"s3://bucket/pop?endpoint=http://AKIAEXAMPLE:{secret}@127.0.0.1:9"):
        with pytest.raises(mrepo.InvalidInput, match="credentials") as ei:
            parse_chunk_url(bad)
        assert secret not in str(ei.value)
    with pytest.raises(mrepo.InvalidInput, match="credentials") as ei:
        parse_repo_url(f"git://user:{secret}@127.0.0.1:1/x")
    assert secret not in str(ei.value)
    assert parse_chunk_url("file:///data/user@lab/packs").path.name == "packs"  # '@' in a path is fine
    a = clone(str(central.path), tmp_path / "a")
    config = (a.gitdir / "config").read_bytes()
    for args in (("remote", "add", "x", str(central.path), "--chunks", f"s3://AKIAEXAMPLE:{secret}@bucket/pop"),
                 ("remote", "add", "y", f"git://user:{secret}@127.0.0.1:1/x", "--chunks", str(tmp_path / "packs")),
                 ("clone", f"git://user:{secret}@127.0.0.1:1/x", str(tmp_path / "z"), "--chunks", str(tmp_path / "packs"))):
        r = cli(*args, cwd=a.path)
        assert r.returncode == 1 and r.stderr.count("\n") == 1 and r.stderr.startswith("error: ")
        assert secret not in r.stdout + r.stderr and "***@" in r.stderr
    assert (a.gitdir / "config").read_bytes() == config and not (tmp_path / "z").exists()
    # a remote written with credentials by hand is refused when used, and can be removed
    with open(a.gitdir / "config", "a") as f:
        f.write(f'[remote "old"]\n\turl = {central.path}\n\tmrepochunks = s3://AKIAEXAMPLE:{secret}@bucket/pop\n')
    r = cli("fetch", "old", cwd=a.path)
    assert r.returncode == 1 and "credentials" in r.stderr and secret not in r.stderr
    cli("remote", "remove", "old", cwd=a.path, check=True)
    assert secret.encode() not in (a.gitdir / "config").read_bytes()


def test_missing_bucket_is_one_clear_error(central, tmp_path, s3):
    seed = clone(str(central.path), tmp_path / "seed")
    hub = mrepo.init_repo(tmp_path / "hub")
    mrepo.collab.add_remote(seed, "hub", str(hub.path), chunks="s3://no-such-bucket/pop")
    with pytest.raises(NotFound, match="no such bucket") as ei:
        push(seed, "hub", force=True)
    assert ei.value.obj == "s3://no-such-bucket"
    assert hub.refs.read("refs/heads/main") != seed.head().commit


def test_cli_prefetch_of_unknown_names_moves_nothing(central, tmp_path, cli):
    cli("clone", "--lazy", str(central.path), str(tmp_path / "b"), check=True)
    b = mrepo.open_repo(tmp_path / "b")
    refine_species(central, "A")  # the remote moves on: a fetch would move origin/main
    before = _state(b)
    for args in (("--species", "nope"), ("--source", "nope"), ("--rev", "nosuch", "--species", "A"), ("--species", "../x")):
        r = cli("fetch", *args, cwd=b.path)
        assert r.returncode == 1 and r.stdout == "" and r.stderr.count("\n") == 1 and r.stderr.startswith("error: "), (args, r)
    assert _state(b) == before
    r = cli("fetch", "--species", "A", cwd=b.path, check=True)
    assert "prefetched" in r.stdout and b.refs.read("refs/remotes/origin/main") == central.head().commit
