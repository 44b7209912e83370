"""Three-way merges of populations: clean merges, conflicts by object, resolutions."""

from __future__ import annotations

import json

import numpy as np
import pytest
from popgen import add_species_commit, make_population, refine_species

import mrepo
from mrepo.collab import MergeConflict, abort_merge, merge, merge_state
from mrepo.model import write_item
from mrepo.model.population import read_population, write_population


@pytest.fixture
def forked(repo):
    make_population(repo, n_items=3, species={"A": 100})
    base = repo.head().commit
    repo.create_branch("other")
    return repo, base


def _on(repo, branch, fn, *a, **kw):
    repo.checkout(branch)
    sha = fn(repo, *a, **kw)
    return sha


def _change_item(repo, item="movie_001", defocus=20000.0):
    txn = repo.transaction()
    pop = read_population(txn)
    it = pop.sources["frames1"].items[item]
    it.imaging.defocus_angstrom = defocus
    write_item(txn, "frames1", it)
    write_population(txn, pop, items=False)
    sha = txn.commit(f"refine item {item}")
    txn.discard()
    return sha


def test_clean_merge_of_different_species_and_items(forked):
    repo, base = forked
    _on(repo, "other", add_species_commit, "B", 80, seed=3)
    _change_item(repo, "movie_002", 21000.0)
    ours_a = _on(repo, "main", refine_species, "A")
    ours = _change_item(repo, "movie_001")
    res = merge(repo, "other")
    assert res.commit and not res.fast_forward
    info = repo.commit_info(res.commit)
    assert info.parents == (ours, repo.resolve("other"))
    assert info.metadata["operation"] == "merge" and info.metadata["base"] == base
    assert set(res.taken) == {"species B", "item frames1/movie_002"}
    assert repo.verify() == []
    pop = repo.population()
    assert set(pop.species) == {"A", "B"} and pop.species["A"].resolution_angstrom == 4.2
    items = pop.sources["frames1"].items
    assert items["movie_001"].imaging.defocus_angstrom == 20000.0 and items["movie_002"].imaging.defocus_angstrom == 21000.0
    doc = json.loads(repo.read_document("HEAD", "population.json"))
    stored = {n: json.loads(repo.read_document("HEAD", f"species/{n}/species.json"))["digest"] for n in ("A", "B")}
    assert doc["species"] == stored
    assert repo.fsck().ok
    assert ours_a in {c.id for c in repo.log()}


def test_same_species_on_both_sides_is_a_conflict_until_resolved(forked):
    repo, base = forked
    _on(repo, "other", refine_species, "A", seed=1)
    _on(repo, "other", add_species_commit, "C", 10, seed=4)
    ours = _on(repo, "main", refine_species, "A", seed=2)
    before = (repo.refs.list("refs/"), repo.index.staged())
    with pytest.raises(MergeConflict) as ei:
        merge(repo, "other")
    assert ei.value.conflicts == ["species A"]
    assert (repo.refs.list("refs/"), repo.index.staged()) == before  # repository unchanged
    assert merge_state(repo)["conflicts"] == ["species A"]
    # resolving the wrong object, or merging something else, is refused
    with pytest.raises(mrepo.InvalidInput):
        merge(repo, resolutions={"species/Z": "ours"})
    assert abort_merge(repo) and merge_state(repo) is None
    with pytest.raises(MergeConflict):
        merge(repo, "other")
    res = merge(repo, resolutions={"species/A": "theirs"})  # continue the pending merge
    assert res.resolved == {"species A": "theirs"} and "species C" in res.taken
    theirs_a = repo.population("other").species["A"]
    np.testing.assert_array_equal(np.asarray(repo.population().species["A"].particles.coordinates[...]),
                                  np.asarray(theirs_a.particles.coordinates[...]))
    assert repo.verify() == [] and merge_state(repo) is None
    assert repo.commit_info(res.commit).parents[0] == ours


def test_item_conflict_ours_for_all_and_fast_forward(forked):
    repo, base = forked
    _on(repo, "other", _change_item, "movie_000", 19000.0)
    _on(repo, "main", _change_item, "movie_000", 18000.0)
    with pytest.raises(MergeConflict) as ei:
        merge(repo, "other")
    assert ei.value.conflicts == ["item frames1/movie_000"]
    res = merge(repo, "other", resolutions={"all": "ours"})
    assert res.resolved == {"item frames1/movie_000": "ours"}
    assert repo.population().sources["frames1"].items["movie_000"].imaging.defocus_angstrom == 18000.0
    assert repo.verify() == []
    assert merge(repo, "other").up_to_date
    repo.create_branch("ahead")
    repo.checkout("ahead")
    tip = add_species_commit(repo, "D", 5)
    repo.checkout("main")
    ff = merge(repo, "ahead")
    assert ff.fast_forward and repo.head().commit == tip == ff.commit


def test_cli_merge_conflict_and_resolution(forked, cli):
    repo, base = forked
    _on(repo, "other", refine_species, "A", seed=1)
    _on(repo, "main", refine_species, "A", seed=2)
    r = cli("merge", "other", cwd=repo.path)
    assert r.returncode == 1
    assert "conflict: species A" in r.stderr and r.stderr.strip().splitlines()[-1].startswith("error: merge conflict")
    r = cli("merge", "--theirs", "species/A", cwd=repo.path, check=True)
    assert "resolved: species A (theirs)" in r.stdout
    assert len(repo.commit_info(repo.head().commit).parents) == 2
    r = cli("merge", "--abort", cwd=repo.path, check=True)
    assert "no merge in progress" in r.stdout
