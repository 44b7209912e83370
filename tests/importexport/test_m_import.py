"""mrepo import m: an M population built the way M's Save methods write it (no real one is public)."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import leftover_transactions

from mrepo.errors import FormatError, InvalidInput
from mrepo.io.m_import import import_m
from mrepo.io.relion_export import export_relion
from mrepo.io.relion_import import import_relion

import synth


def _population(tmp_path, **kw):
    proj = synth.frame_project(tmp_path / "pop" / "movies", n_items=2, frames=3, size=176, spacing=60)
    rng = np.random.default_rng(4)
    half = rng.normal(size=(24, 24, 24)).astype(np.float32)
    path, traj, ang = synth.m_population(tmp_path / "pop", proj, half, half + 0.5, (half > 0).astype(np.float32), **kw)
    return proj, path, traj, ang


def test_m_population_becomes_repository_content(repo, tmp_path, cli):
    proj, path, traj, ang = _population(tmp_path)
    rep = import_m(repo, path)
    assert rep.sources == {"movies": 2} and rep.species == {"apo": len(proj.coords_px)}
    pop = repo.population()
    assert pop.name == "toy population" and pop.extra["m"]["last_refinement_options"]["NIterations"] == "3"
    src = pop.sources["movies"]
    assert src.kind == "frames" and src.extra["m"]["params"]["GUID"] == synth.guid(2)
    for name in proj.items:
        it = src.items[name]
        assert it.m_hash == synth.m_hash(name, proj.folder / f"{name}.mrc")  # the .source's Hash, as M defines it
        assert np.allclose(it.dose, 1.5)  # DosePerAngstromFrame of the source
    sp = pop.species["apo"]
    assert sp.resolution_angstrom == 7.5 and sp.diameter_angstrom == 90 and sp.box == 24 and sp.symmetry == "C1"
    assert set(sp.maps) == {"half1", "half2", "mask"}
    p = sp.particles.load()
    assert p.temporal_samples == 3 and p.angles.shape == (len(traj), 3, 3)
    np.testing.assert_array_equal(p.coordinates, traj.astype(np.float32))
    np.testing.assert_array_equal(p.angles, ang.astype(np.float32))
    np.testing.assert_array_equal(p.half_set, proj.half)
    np.testing.assert_array_equal(p.extra["aisFilamentID"], np.arange(len(traj)) % 7)
    # joined by wrpSourceHash: every particle refers to the item of its movie, by data digest
    digests = p.item_digest()
    for k, name in enumerate(proj.items):
        assert set(digests[proj.item_of == k]) == {src.items[name].data_digest}
    assert repo.verify() == []
    res = cli("show", "HEAD:species/apo", cwd=repo.path, check=True)
    assert "3 temporal sample(s)" in res.stdout and "resolution:  7.50 Å" in res.stdout
    # the trajectories survive a RELION export (--trajectories) and re-import
    ex = export_relion(repo, "HEAD", "apo", tmp_path / "rel", trajectories=True)
    import_relion(repo, ex.particles_star, ex.maps["half1"], ex.maps["half2"], species="again", diameter_angstrom=90)
    q = repo.population().species["again"].particles.load()
    np.testing.assert_array_equal(q.coordinates, p.coordinates)
    np.testing.assert_array_equal(q.angles, p.angles)
    assert list(q.item_digest()) == list(p.item_digest())


def test_m_hash_mismatch_and_unmatched_particles(repo, tmp_path):
    proj, path, _, _ = _population(tmp_path, hash_override={"movie_002": "AAAAAAAAAAAAAAAAAAAAAAAAAAA"})
    head = repo.head().commit
    with pytest.raises(FormatError, match="item movie_002: the source records M hash AAAAAAAAAAAAAAAAAAAAAAAAAAA but its raw data give"):
        import_m(repo, path)
    assert repo.head().commit == head and leftover_transactions(repo) == []
    # a particle naming a hash no item has
    proj, path, _, _ = _population(tmp_path / "b")
    star = next((tmp_path / "b" / "pop" / "species").glob("*/apo_particles.star"))
    text = star.read_text().splitlines()
    text[-1] = text[-1].rsplit(maxsplit=3)[0] + "  movie_009.mrc  ZZZZZZZZZZZZZZZZZZZZZZZZZZZ  " + text[-1].split()[-1]
    star.write_text("\n".join(text) + "\n")
    with pytest.raises(InvalidInput, match=r"1 of \d+ particles match no item \(first: movie_009.mrc \(ZZZZ"):
        import_m(repo, path)
    assert repo.head().commit == head
    rep = import_m(repo, path, allow_unmatched=True)
    assert rep.unmatched == {"apo": 1} and rep.species["apo"] == len(proj.coords_px) - 1
