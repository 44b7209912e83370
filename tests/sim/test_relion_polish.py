"""RELION 3.1 Bayesian polishing as the peer of ``mrepo refine`` (mrepo.sim.relion_polish).

One very small simulation (2 movies of 10 frames, 384² px, SNR 1) is exported as a
RELION polishing project; the export's conventions are checked without RELION, and
``relion_motion_refine`` is run on it where RELION is installed.
"""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from mrepo.io.star import read_star
from mrepo.sim import load_truth, motion_rmse_px, preset, simulate
from mrepo.sim.reconstruct import fsc_to_truth
from mrepo.sim.relion_polish import (
    export_polishing_project,
    initial_positions,
    polishing_errors,
    position_errors,
    relion_row_counts,
    run_polishing,
)

SPECIES = "large"
CONFIG = dict(n_movies=2, particles_per_movie=30, frame_shape_px=(384, 384), snr=1.0, n_tilt_series=0, n_frames=10)


@pytest.fixture(scope="module")
def polish_sim(tmp_path_factory):
    out = tmp_path_factory.mktemp("polish") / "sim"
    res = simulate(out, config=preset("tiny", **CONFIG), seed=0, progress=False)
    return out, res


@pytest.fixture(scope="module")
def project(polish_sim, tmp_path_factory):
    sim_dir, _ = polish_sim
    return export_polishing_project(sim_dir, tmp_path_factory.mktemp("polish") / "project", species=SPECIES)


def test_export_conventions(polish_sim, project):
    """Coordinates, origins and drift as RELION reads them give back mrepo's imported model exactly."""
    sim_dir, res = polish_sim
    pop = res.repo.population("HEAD")
    truth = load_truth(sim_dir)
    px = project.pixel_size_angstrom
    stored = np.asarray(pop.species[SPECIES].particles.load().coordinates, np.float64)
    assert len(project) == len(stored) and sorted(project.rows.tolist()) == list(range(len(stored)))

    star = read_star(project.root / project.particles_star)
    df = star.blocks["particles"]
    x = df["rlnCoordinateX"].to_numpy() * px - df["rlnOriginXAngst"].to_numpy()
    y = df["rlnCoordinateY"].to_numpy() * px - df["rlnOriginYAngst"].to_numpy()
    assert np.all(df["rlnCoordinateX"].to_numpy() == np.round(df["rlnCoordinateX"].to_numpy()))  # whole pixels
    np.testing.assert_allclose(np.c_[x, y], stored[project.rows, 0, :2], atol=1e-3)
    assert np.abs(df[["rlnOriginXAngst", "rlnOriginYAngst"]].to_numpy()).max() <= px / 2 + 1e-6  # sub-pixel rest only
    assert set(df["rlnRandomSubset"]) == {1, 2}
    assert star.blocks["optics"]["rlnImageSize"].iloc[0] == project.box

    # RELION's initial track is −rlnMicrographShift, the particles' displacement, which is
    # minus the imported drift grid (Warp's sign): the shifts are the grid values (px)
    for m, (_src, it) in zip(project.movies, sorted(((s, i) for s, i in pop.items() if i.kind == "frames"),
                                                    key=lambda si: si[1].name)):
        shift = read_star(project.root / m.motion_star).blocks["global_shift"]
        np.testing.assert_allclose(shift["rlnMicrographShiftX"].to_numpy() * px,
                                   it.grids["GridMovementX"].values.reshape(-1), atol=1e-4)
        np.testing.assert_allclose(shift["rlnMicrographShiftY"].to_numpy() * px,
                                   it.grids["GridMovementY"].values.reshape(-1), atol=1e-4)

    # same particles, frames and definition as mrepo.sim.metrics: RELION's starting point is mrepo's import
    d = position_errors(project, initial_positions(project), truth)
    assert float(np.sqrt((d**2).sum(1).mean()) / px) == pytest.approx(motion_rmse_px(pop, truth, SPECIES), rel=1e-6)


@pytest.mark.relion
def test_relion_polishes_the_export(polish_sim, project, tmp_path):
    for program in ("relion_motion_refine", "relion_reconstruct", "relion_star_printtable"):
        if shutil.which(program) is None:
            pytest.skip(f"RELION not installed ({program} not on PATH)")
    sim_dir, _ = polish_sim
    truth = load_truth(sim_dir)

    # RELION reads every exported table
    rows = relion_row_counts(project)
    assert rows["particles"] == len(project)
    assert rows["micrographs"] == len(project.movies) == 2
    assert rows["fsc"] == project.box // 2 + 1
    assert all(rows[f"{m.name}/global_shift"] == 10 for m in project.movies)

    # no iteration: RELION's tracks are the exported drift (sign and units of the track files)
    r0 = run_polishing(project, tmp_path / "polish0", max_iters=0, combine_frames=False)
    np.testing.assert_allclose(r0.positions_angstrom, initial_positions(project), atol=1e-3)

    res = run_polishing(project, tmp_path / "polish", threads=2)
    print(f"relion_motion_refine {res.wall_s:.1f} s, relion_reconstruct {res.reconstruct_wall_s:.1f} s")
    assert res.tracks_angstrom.shape == (len(project), 10, 2)
    assert np.isfinite(res.tracks_angstrom).all()
    err = polishing_errors(res, truth)
    print({k: round(v, 3) if isinstance(v, float) else v for k, v in err.items()})
    assert all(np.isfinite(v) for v in err.values())
    assert err["initial_px"] == pytest.approx(err["before_px"], rel=1e-6)
    assert err["after_px"] < err["before_px"]  # RELION moved the particles towards the truth

    # the polished particles reconstruct to a map of the species
    h1, h2 = res.half_maps
    assert h1.shape == h2.shape == (project.box,) * 3 and np.isfinite(h1).all() and h1.std() > 0
    assert res.resolution_angstrom is not None and res.resolution_angstrom < 40.0
    c = fsc_to_truth(0.5 * (h1 + h2), truth.maps[SPECIES], project.pixel_size_angstrom, project.diameter_angstrom)
    assert c.fsc[1:6].min() > 0.5, c.fsc[:8]
