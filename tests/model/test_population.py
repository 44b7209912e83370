"""The population model: typed objects, layout in the repository, digests."""

from __future__ import annotations

import json
import subprocess

import numpy as np
import pytest

import mrepo
from mrepo.model import (
    CubicGrid,
    DataSource,
    ImagingModel,
    Item,
    Particles,
    Population,
    Species,
    array_content_digest,
    item_digest,
    write_item,
    write_population,
)
from mrepo.store import write_array


def _population(repo, n_particles=1000, frames=4):
    rng = np.random.default_rng(0)
    raw = rng.normal(size=(frames, 64, 64)).astype(np.float32)
    item = Item(
        name="movie_001",
        kind="frames",
        data_digest=array_content_digest(raw),
        shape=raw.shape,
        imaging=ImagingModel(pixel_size_angstrom=1.1, defocus_angstrom=12000.0, astigmatism_angstrom=150.0, astigmatism_angle_deg=33.0),
        pre_exposure=np.arange(frames) * 1.5,
        dose=np.full(frames, 1.5),
        grids={"GridMovementX": CubicGrid((1, 1, frames), rng.normal(size=frames)), "GridMovementY": CubicGrid((1, 1, frames), rng.normal(size=frames))},
    )
    src = DataSource("frames1", "frames")
    src.add(item)
    txn = repo.index
    write_item(txn, "frames1", item, raw=raw)
    half = rng.normal(size=(32, 32, 32)).astype(np.float32)
    write_array(txn, "species/apo/maps/half1", half)
    write_array(txn, "species/apo/maps/half2", half + 0.1)
    parts = Particles.from_arrays(
        [item.data_digest] * n_particles,
        rng.uniform(0, 70, size=(n_particles, 3, 3)),
        rng.uniform(-180, 180, size=(n_particles, 3, 3)),
        rng.integers(1, 3, n_particles),
        score=rng.normal(size=n_particles).astype(np.float32),
    )
    sp = Species("apo", 120.0, 1.1, 32, parts, symmetry="O", maps={"half1": "species/apo/maps/half1", "half2": "species/apo/maps/half2"})
    pop = Population("test", {"frames1": src}, {"apo": sp})
    write_population(txn, pop, items=False)
    return pop, raw, txn.commit("population")


def test_population_roundtrip_and_git_readable(repo):
    pop, raw, sha = _population(repo)
    back = repo.population(sha)
    assert set(back.sources) == {"frames1"} and set(back.species) == {"apo"}
    it = back.sources["frames1"].items["movie_001"]
    orig = pop.sources["frames1"].items["movie_001"]
    assert it.imaging.defocus_u_angstrom == 12150.0 and it.imaging.astigmatism_angle_deg == 33.0
    assert it.grids["GridMovementX"] == orig.grids["GridMovementX"]
    assert item_digest(it) == item_digest(orig)
    sp = back.species["apo"]
    assert sp.symmetry == "O" and len(sp.particles) == 1000 and sp.particles.temporal_samples == 3
    assert sp.particles == pop.species["apo"].particles
    np.testing.assert_array_equal(repo.open_array(sha, it.raw_array)[:], raw)
    assert repo.verify(sha) == []
    doc = subprocess.run(["git", "-C", str(repo.path), "show", f"{sha}:docs/species/apo/species.json"], capture_output=True, text=True, check=True).stdout
    assert json.loads(doc)["particles"]["count"] == 1000


def test_verify_reports_tampered_objects(repo):
    pop, raw, sha = _population(repo)
    txn = repo.index
    # change a particle column behind the model's back: the species digest no longer matches
    write_array(txn, "species/apo/particles/half_set", np.ones(1000, np.int8), chunks=(65536,))
    # and replace the raw data of the item
    write_array(txn, "sources/frames1/items/movie_001/raw", raw + 1, chunks=(1, 64, 64))
    bad = txn.commit("tamper")
    problems = [str(p) for p in repo.verify(bad)]
    assert any("species apo" in p and "digest" in p for p in problems)
    assert any("item frames1/movie_001" in p and "raw data" in p for p in problems)


def test_digest_definition_is_stable():
    # computed from the definition in mrepo/model/digests.py by hand:
    # BLAKE3(b'{"dtype":"<f4","shape":[2,2]}' + b"\n" + little-endian float32 bytes)
    import blake3

    a = np.array([[1, 2], [3, 4]], dtype=">f4")  # big-endian input gives the same digest
    expect = blake3.blake3(b'{"dtype":"<f4","shape":[2,2]}\n' + np.array([1, 2, 3, 4], "<f4").tobytes()).hexdigest()
    assert array_content_digest(a) == expect


def test_invalid_models_are_rejected():
    with pytest.raises(mrepo.InvalidInput):
        Species("x", -1, 1.0, 32, Particles.empty())
    with pytest.raises(mrepo.InvalidInput):
        Species("x", 100, 1.0, 32, Particles.empty(), symmetry="Q7")
    with pytest.raises(mrepo.InvalidInput):
        Item("t", "tilts", "0" * 64, (3, 8, 8), ImagingModel(1.0), np.zeros(3), np.ones(3))
    with pytest.raises(mrepo.InvalidInput):
        Item("t", "frames", "0" * 64, (3, 8, 8), ImagingModel(1.0), np.zeros(2), np.ones(3))
