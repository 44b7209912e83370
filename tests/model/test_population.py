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


def test_provenance_digests_are_fixed_by_their_definition():
    """Item and species digests from the definition in mrepo/model/provenance.py, written out by hand:
    the canonical JSON below is typed, not produced by mrepo, and the hex values are BLAKE3 of those bytes.
    Integer inputs (300 kV, 100 Å) and big-endian arrays give the same digests as floats and little-endian."""
    import blake3

    from mrepo.model import particles_digest, species_digest

    def content(header: bytes, values: np.ndarray) -> str:  # array_content_digest by its definition
        return blake3.blake3(header + b"\n" + values.tobytes()).hexdigest()

    data, ref = "ab" * 32, "cd" * 32
    grid = content(b'{"dtype":"<f4","shape":[2,1,1]}', np.array([0.5, -0.5], "<f4"))
    item_json = (
        '{"data":"' + data + '","model":{"dose":[1.0,1.0],"grids":{"GridMovementX":{"dims":[1,1,2],"margins":[0.0,0.0,0.0],'
        '"unit":"angstrom","values":"' + grid + '"}},"imaging":{"amplitude_contrast":0.07,"astigmatism_angle_deg":0.0,'
        '"astigmatism_angstrom":0.0,"beam_tilt_mrad":[0.0,0.0],"bfactor_a2":0.0,"cs_mm":2.7,"defocus_angstrom":15000.0,'
        '"even_zernike":[],"mag_matrix":[[1.0,0.0],[0.0,1.0]],"odd_zernike":[],"phase_shift_deg":0.0,"pixel_size_angstrom":1.5,'
        '"scale":1.0,"voltage_kv":300.0},"kind":"frames","pre_exposure":[0.0,1.0],"shape":[2,4,4],"tilt_angles_deg":null,'
        '"tilt_axis_deg":null,"tilt_axis_offset_angstrom":null,"use":[true,true]},"refined_with":[["apo","' + ref + '"]]}'
    )
    item_expect = "c72fcfa5e25208415081615100b77ac1d98963baf4c3229cbcfa6d74e234edf7"
    assert blake3.blake3(item_json.encode()).hexdigest() == item_expect
    item = Item("movie_001", "frames", data, (2, 4, 4), ImagingModel(1.5, voltage_kv=300), [0, 1], [1.0, 1.0],
                grids={"GridMovementX": CubicGrid((1, 1, 2), np.array([0.5, -0.5]))}, refined_with={"apo": ref})
    assert item_digest(item) == item_expect

    cols = {
        "angles": content(b'{"dtype":"<f4","shape":[2,1,3]}', np.array([0, 90, 180, -90, 45, 10], "<f4")),
        "coordinates": content(b'{"dtype":"<f4","shape":[2,1,3]}', np.array([10, 20, 0, 30, 40, 5], "<f4")),
        "half_set": content(b'{"dtype":"|i1","shape":[2]}', np.array([1, 2], "i1")),
        "item": content(b'{"dtype":"<i4","shape":[2]}', np.array([0, 0], "<i4")),
        "score": content(b'{"dtype":"<f4","shape":[2]}', np.array([0.25, 0.75], "<f4")),
    }
    parts_json = '{"columns":{' + ",".join(f'"{k}":"{v}"' for k, v in cols.items()) + '},"items":["' + data + '"]}'
    parts_expect = "836e800fdfcaf4aab2585c38a6606727b731492375638b09b96ea3e155f2af2f"
    assert blake3.blake3(parts_json.encode()).hexdigest() == parts_expect
    parts = Particles([data], np.array([0, 0], ">i4"), np.array([[[10, 20, 0]], [[30, 40, 5]]], ">f4"),
                      np.array([[[0, 90, 180]], [[-90, 45, 10]]], "<f8").astype(np.float32), np.array([1, 2], np.int8),
                      {"score": np.array([0.25, 0.75], np.float32)})
    assert particles_digest(parts) == parts_expect
    species_json = (
        '{"contributors":["' + item_expect + '"],"denoiser":{"description":{"arch":"unet"},"weights":{"conv1":"' + "33" * 32 + '"}},'
        '"maps":{"half1":"' + "11" * 32 + '","half2":"' + "22" * 32 + '"},"model":{"box":8,"diameter_angstrom":100.0,'
        '"pixel_size_angstrom":1.5,"symmetry":"C1"},"particles":"' + parts_expect + '"}'
    )
    species_expect = "7f4ae44d5fa3da490eab41edb1d821c3d9f6802ef84efed242b3aec415a2f9e5"
    assert blake3.blake3(species_json.encode()).hexdigest() == species_expect
    stored = {"species/apo/maps/half1": "11" * 32, "species/apo/maps/half2": "22" * 32, "species/apo/denoiser/conv1": "33" * 32}
    sp = Species("apo", 100, 1.5, 8, parts, maps={"half1": "species/apo/maps/half1", "half2": "species/apo/maps/half2"},
                 contributors={data: item_expect}, denoiser={"arch": "unet", "weights": {"conv1": "species/apo/denoiser/conv1"}})
    assert species_digest(sp, stored.__getitem__) == species_expect


def test_invalid_models_are_rejected():
    with pytest.raises(mrepo.InvalidInput):
        Species("x", -1, 1.0, 32, Particles.empty())
    with pytest.raises(mrepo.InvalidInput):
        Species("x", 100, 1.0, 32, Particles.empty(), symmetry="Q7")
    with pytest.raises(mrepo.InvalidInput):
        Item("t", "tilts", "0" * 64, (3, 8, 8), ImagingModel(1.0), np.zeros(3), np.ones(3))
    with pytest.raises(mrepo.InvalidInput):
        Item("t", "frames", "0" * 64, (3, 8, 8), ImagingModel(1.0), np.zeros(2), np.ones(3))
