"""Species contributions as requests: create, list, collision check, merge."""

from __future__ import annotations

import os

import numpy as np
import pytest
from popgen import add_species, make_population, refine_species

import mrepo
from mrepo.collab import check_request, clone, create_request, list_requests, merge_request
from mrepo.errors import ConflictError, InvalidInput
from mrepo.model.population import read_population, write_population

GRID = np.array([(x, y, 500.0) for x in (125.0, 375.0, 625.0, 875.0) for y in (125.0, 375.0, 625.0, 875.0)])


@pytest.fixture
def central(tmp_path):
    """Species A (diameter 100 Å) on a 250 Å grid in each of 3 items."""
    repo = mrepo.init_repo(tmp_path / "central")
    make_population(repo, n_items=3, species={})
    txn = repo.transaction()
    pop = read_population(txn)
    digests = [it.data_digest for _, it in pop.items()]
    coords = np.concatenate([GRID] * 3)
    items = [d for d in digests for _ in range(len(GRID))]
    pop.species["A"] = add_species(txn, pop, "A", len(coords), coords=coords, items=items, diameter=100.0)
    write_population(txn, pop, items=False)
    txn.commit("species A")
    txn.discard()
    return repo


def contribute(repo, name="B", planted=()):
    """Add species ``name`` (diameter 100 Å): 16 clean particles per item between
    the A grid (176 Å from any A particle), plus ``planted`` (item index, offset Å)
    particles placed ``offset`` Å from an A particle. Returns the commit."""
    txn = repo.transaction()
    pop = read_population(txn)
    digests = [it.data_digest for _, it in pop.items()]
    clean = GRID[:9] + np.array([125.0, 125.0, 0.0])
    coords = [c for _ in digests for c in clean]
    items = [d for d in digests for _ in clean]
    for k, (item, off) in enumerate(planted):
        coords.append(GRID[k % len(GRID)] + np.array([off, 0.0, 0.0]))
        items.append(digests[item])
    pop.species[name] = add_species(txn, pop, name, len(coords), coords=np.array(coords), items=items, diameter=100.0, seed=11)
    write_population(txn, pop, items=False)
    sha = txn.commit(f"add species {name}")
    txn.discard()
    return sha


PLANTED = [(0, 30.0), (0, 50.0), (1, 10.0), (1, 99.0), (2, 0.0), (2, 60.0), (2, 80.0)]
NEAR_MISS = [(1, 100.0), (0, 150.0)]  # exactly the sum of radii, and farther: no collision


def test_clean_contribution_merges(central, tmp_path):
    lab = clone(str(central.path), tmp_path / "lab")
    contribute(lab, "B")
    req = create_request(lab, ["B"], message="Ribosome from lab B")
    assert req.number == 1 and central.refs.read("refs/mrepo/requests/1") == req.tag
    reqs = list_requests(central)
    assert [(r.number, r.species, r.merged) for r in reqs] == [(1, ["B"], False)]
    chk = check_request(central, 1)
    assert chk.colliding == 0 and chk.total == 27
    res, _ = merge_request(central, 1)
    info = central.commit_info(res.commit)
    assert info.parents[1] == req.commit and info.metadata["operation"] == "request-merge"
    assert central.verify() == [] and set(central.population().species) == {"A", "B"}
    assert list_requests(central)[0].merged
    with pytest.raises(InvalidInput, match="already merged"):
        merge_request(central, 1)


def test_planted_collisions_are_found_exactly_and_dropped(central, tmp_path):
    lab = clone(str(central.path), tmp_path / "lab")
    contribute(lab, "B", PLANTED + NEAR_MISS)
    create_request(lab, ["B"])
    png = tmp_path / "overview.png"
    chk = check_request(central, 1, png=png)
    rep = chk.reports[0]
    assert rep.colliding == len(PLANTED) and rep.pairs == len(PLANTED)
    assert {c.item: c.colliding for c in rep.per_item} == {"frames1/movie_000": 2, "frames1/movie_001": 2, "frames1/movie_002": 3}
    assert sorted(rep.colliding_index.tolist()) == list(range(27, 27 + len(PLANTED)))
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000
    before = central.refs.list("refs/")
    with pytest.raises(ConflictError, match="7 particles of the request collide"):
        merge_request(central, 1)
    assert central.refs.list("refs/") == before
    res, _ = merge_request(central, 1, drop_colliding=True)
    meta = central.commit_info(res.commit).metadata
    assert meta["dropped_colliding"]["B"]["count"] == 7
    assert meta["dropped_colliding"]["B"]["per_item"] == {"frames1/movie_000": 2, "frames1/movie_001": 2, "frames1/movie_002": 3}
    b = central.population().species["B"]
    assert len(b.particles) == 27 + len(NEAR_MISS)
    assert central.verify() == []
    again = check_request(central, 1)  # the merged species no longer collides
    from mrepo.collab import find_collisions

    assert find_collisions(b.particles and b, list(central.population().species.values())).colliding == 0
    assert again.request.merged


def test_request_on_older_main_merges_three_way(central, tmp_path):
    lab = clone(str(central.path), tmp_path / "lab")
    contribute(lab, "B")
    req = create_request(lab, ["B"])
    maint = refine_species(central, "A")  # main moves on after the request was made
    res, _ = merge_request(central, req.number)
    assert central.commit_info(res.commit).parents == (maint, req.commit)
    pop = central.population()
    assert pop.species["A"].resolution_angstrom == 4.2 and "B" in pop.species
    assert central.verify() == []


def test_request_may_only_change_its_species(central, tmp_path):
    lab = clone(str(central.path), tmp_path / "lab")
    refine_species(lab, "A")
    contribute(lab, "B")
    with pytest.raises(InvalidInput, match="species A"):
        create_request(lab, ["B"])
    with pytest.raises(mrepo.NotFound):
        create_request(lab, ["nope"])
    assert list_requests(central) == []


def test_requests_over_git_daemon_with_cli(central, tmp_path, git_daemon, cli):
    packs = tmp_path / "packs"
    os.symlink(central.gitdir, git_daemon.root / "central.git")
    seedhub = clone(str(central.path), tmp_path / "seed")
    mrepo.collab.add_remote(seedhub, "hub", str(central.path), chunks=str(packs))
    # put central's chunks into the pack store beside the git server
    from mrepo.collab.transfer import chunks_of_commits, commits_between, open_remote

    _, _, cr = open_remote(seedhub, "hub")
    cr.upload(seedhub.chunks, chunks_of_commits(seedhub, commits_between(seedhub, [seedhub.head().commit], [])))
    url = git_daemon.url("central.git")
    cli("clone", "--chunks", str(packs), url, str(tmp_path / "lab"), check=True)
    cli("clone", "--lazy", "--chunks", str(packs), url, str(tmp_path / "maint"), check=True)
    contribute(mrepo.open_repo(tmp_path / "lab"), "B", PLANTED[:3])
    r = cli("request", "create", "--species", "B", "-m", "B from lab", cwd=tmp_path / "lab", check=True)
    assert "created request 1" in r.stdout
    maint = tmp_path / "maint"
    r = cli("request", "list", cwd=maint, check=True)
    assert r.stderr == ""
    assert "#1" in r.stdout and "open" in r.stdout and "species B" in r.stdout
    r = cli("request", "check", "1", "--png", str(tmp_path / "c.png"), cwd=maint, check=True)
    assert "3 of 30 particles collide" in r.stdout and (tmp_path / "c.png").exists()
    r = cli("request", "merge", "1", cwd=maint)
    assert r.returncode == 1 and "collide" in r.stderr
    r = cli("request", "merge", "1", "--drop-colliding", cwd=maint, check=True)
    assert "dropped 3 colliding particles of species B" in r.stdout
    cli("push", cwd=maint, check=True)
    # the served repository holds history; its chunks are in the pack store
    cli("remote", "add", "store", str(central.path), "--chunks", str(packs), cwd=central.path, check=True)
    cli("remote", "read-chunks", "store", cwd=central.path, check=True)
    central = mrepo.open_repo(central.path)
    assert central.fsck().ok
    assert central.verify() == [] and len(central.population().species["B"].particles) == 27
    r = cli("request", "list", cwd=tmp_path / "lab", check=True)
    assert "merged" in r.stdout
