"""The optional flexible domain of a simulated species (mrepo.sim.flexible): off by default; when on,
the domain varies between particles and the core does not; the truth records it."""

from __future__ import annotations

import numpy as np
import pytest

from mrepo.errors import InvalidInput
from mrepo.sim import domain_correlation, load_truth, preset, simulate
from mrepo.sim.maps import pseudo_atomic_map

#: A very small population: 1 short movie and a 4-tilt series (seconds).
MINI = dict(n_movies=1, n_frames=3, particles_per_movie=16, n_tilt_series=1, tilt_step_deg=30.0,
            particles_per_tilt_series=6, reconstruct_half_maps=False)
FLEX = dict(flexible_angstrom=4.0, flexible_fraction=0.25, flexible_conformations=6)


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    """(without, with) the flexible domain: the same preset and seed."""
    d = tmp_path_factory.mktemp("flex")
    off = simulate(d / "off", config=preset("tiny", **MINI), seed=4, progress=False)
    on = simulate(d / "on", config=preset("tiny", **MINI, **FLEX), seed=4, progress=False)
    return off, on


def test_off_by_default(pair):
    off, _ = pair
    for name in ("tiny", "small", "paper"):
        cfg = preset(name)
        assert cfg.flexible_angstrom == 0 and cfg.flexible_name() is None
    assert off.truth.flexible == {}
    assert "flexible" not in off.summary["species"]["large"]
    # the true map is the atomic model's, as before
    s = off.truth.species["large"]
    m, _ = pseudo_atomic_map(s.diameter_angstrom, s.symmetry, off.truth.boxes["large"], off.truth.pixel_size_angstrom,
                             s.seed())
    np.testing.assert_array_equal(off.truth.maps["large"], m)
    # flexible settings without a displacement change nothing
    again = simulate(off.path.parent / "off_again", config=preset("tiny", **MINI, flexible_fraction=0.5,
                                                                  flexible_conformations=3), seed=4, progress=False)
    assert again.repo.snapshot("HEAD").tree == off.repo.snapshot("HEAD").tree


def test_domain_varies_between_particles_and_core_does_not(pair):
    off, on = pair
    fl = on.truth.flexible["large"]
    assert on.config.flexible_name() == "large" and set(on.truth.flexible) == {"large"}
    k = fl.n_conformations
    assert k == 6 and fl.maps.shape == (k, *on.truth.maps["large"].shape)
    # each particle has a conformation; they differ between particles
    n = len(on.truth.particles["large"])
    assert fl.conformation.shape == (n,) and len(np.unique(fl.conformation)) > 2
    assert fl.conformation.min() >= 0 and fl.conformation.max() < k
    # a quarter of each asymmetric unit's atoms (D2: 4 copies), moved by the configured RMS
    assert abs(fl.domain_atoms.mean() - 0.25) < 0.01
    assert abs(fl.measured_rms_angstrom - 4.0) < 0.05
    assert fl.core_mask.sum() > 1000 and fl.domain_mask.sum() > 1000 and not (fl.core_mask & fl.domain_mask).any()
    # the core is the same in every conformation, the domain is not
    spread = fl.maps - fl.maps.mean(axis=0)
    scale = float(fl.rest_map[fl.core_mask | fl.domain_mask].std())
    core_rms = float(np.sqrt((spread[:, fl.core_mask] ** 2).mean()))
    dom_rms = float(np.sqrt((spread[:, fl.domain_mask] ** 2).mean()))
    print(f"RMS over conformations / map std: core {core_rms / scale:.4f}, domain {dom_rms / scale:.3f}")
    assert core_rms < 0.01 * scale and dom_rms > 0.2 * scale
    rs = [domain_correlation(fl.maps[c], on.truth, "large", against="rest") for c in range(k)]
    print("correlation of each conformation with the rest map, core / domain:",
          ", ".join(f"{r['core']:.4f} / {r['domain']:.3f}" for r in rs))
    assert min(r["core"] for r in rs) > 0.999
    assert max(r["domain"] for r in rs) < 0.99 and np.mean([r["domain"] for r in rs]) < 0.9
    # the true map is the mean over the particles' conformations (blurred domain, same core)
    avg = np.tensordot(fl.counts() / n, fl.maps, axes=1)
    np.testing.assert_allclose(on.truth.maps["large"], avg, atol=1e-5)
    r = domain_correlation(fl.rest_map, on.truth, "large")
    assert r["core"] > 0.999 and r["domain"] < 0.98
    # the other species is rigid and unchanged
    np.testing.assert_array_equal(on.truth.maps["small"], off.truth.maps["small"])
    summ = on.summary["species"]["large"]["flexible"]
    assert summ["conformations"] == k and sum(summ["particles_per_conformation"]) == n


def test_only_the_images_change(pair):
    off, on = pair
    # same particles, poses and items; the large species' images differ
    for name in ("large", "small"):
        a, b = off.truth.particles[name], on.truth.particles[name]
        np.testing.assert_array_equal(np.asarray(a.coordinates), np.asarray(b.coordinates))
        np.testing.assert_array_equal(np.asarray(a.angles), np.asarray(b.angles))
    assert off.truth.contrast == on.truth.contrast
    assert {i.item.data_digest for i in off.truth.items.values()}.isdisjoint(
        {i.item.data_digest for i in on.truth.items.values()})


def test_truth_round_trip_and_determinism(pair, tmp_path):
    _, on = pair
    t = load_truth(on.path)
    a, b = on.truth.flexible["large"], t.flexible["large"]
    for f in ("maps", "rest_map", "core_mask", "domain_mask", "domain_atoms", "rotvecs", "conformation"):
        np.testing.assert_array_equal(getattr(a, f), getattr(b, f))
    np.testing.assert_array_equal(t.maps["large"], on.truth.maps["large"])
    assert t.config.flexible_angstrom == 4.0
    again = simulate(tmp_path / "again", config=on.config, seed=4, progress=False)
    assert again.repo.snapshot("HEAD").tree == on.repo.snapshot("HEAD").tree
    np.testing.assert_array_equal(again.truth.flexible["large"].conformation, a.conformation)


def test_checks():
    with pytest.raises(InvalidInput):
        preset("tiny", flexible_angstrom=-1.0)
    with pytest.raises(InvalidInput):
        preset("tiny", flexible_angstrom=2.0, flexible_fraction=1.0)
    with pytest.raises(InvalidInput):
        preset("tiny", flexible_angstrom=2.0, flexible_conformations=1)
    with pytest.raises(InvalidInput):
        preset("tiny", flexible_angstrom=2.0, flexible_species="rare")
    assert preset("tiny", flexible_angstrom=2.0, flexible_species="small").flexible_name() == "small"
