"""Distances between a population and the ground truth; plots; presets."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from mrepo.errors import InvalidInput
from mrepo.model import CubicGrid
from mrepo.sim import (
    PRESETS,
    defocus_rmse,
    motion_rmse_px,
    plot_frame,
    plot_motion,
    pose_error_deg,
    preset,
)
from mrepo.sim.config import parse_species_option


def _oracle(pop, truth):
    """The population with the true models: true trajectories, motion pyramid and defocus."""
    for sp in pop.species.values():
        t = truth.particles[sp.name]
        sp.particles = dataclasses.replace(sp.particles.load(), coordinates=np.asarray(t.coordinates),
                                           angles=np.asarray(t.angles))
    for src in pop.sources.values():
        for name, it in list(src.items.items()):
            true = truth.items[name]
            grids = {}
            for k, (gx, gy) in enumerate(true.motion):
                grids[f"PyramidShiftX_{k}"] = CubicGrid(gx.shape[::-1], gx)
                grids[f"PyramidShiftY_{k}"] = CubicGrid(gy.shape[::-1], gy)
            src.items[name] = dataclasses.replace(it, grids=grids, imaging=true.item.imaging)
    return pop


def test_metrics_measure_the_imported_errors(tiny):
    res, _, _ = tiny
    cfg, truth = res.config, res.truth
    pop = res.repo.population()
    pose = pose_error_deg(pop, truth)
    dfe = defocus_rmse(pop, truth)
    mot = motion_rmse_px(pop, truth)
    mot_only = motion_rmse_px(pop, truth, subtract_mean=True)
    print(f"imported: pose {pose:.2f}°, defocus {dfe:.0f} Å, positions {mot:.2f} px (motion only {mot_only:.2f} px)")
    # the configured perturbations (RMS 2.5°, 200 Å, 1.5 px) plus the trajectories and local motion
    assert 0.6 * cfg.pose_angle_error_deg < pose < 1.5 * cfg.pose_angle_error_deg
    assert 0.6 * cfg.defocus_error_angstrom < dfe < 1.5 * cfg.defocus_error_angstrom
    assert mot > mot_only > 0.1
    assert mot > 0.7 * cfg.pose_shift_error_px
    per_species = [pose_error_deg(pop, truth, s) for s in pop.species]
    assert min(per_species) <= pose <= max(per_species)


def test_metrics_are_zero_for_the_truth(tiny):
    res, _, _ = tiny
    truth = res.truth
    pop = _oracle(res.repo.population(), truth)
    assert motion_rmse_px(pop, truth) < 1e-4
    assert pose_error_deg(pop, truth) < 0.05  # float32 storage of angles
    assert defocus_rmse(pop, truth) < 1e-2
    # a symmetry mate of the true orientation is no error for a symmetric species
    sp = pop.species["large"]
    from mrepo.refine.symmetry import symmetry_matrices
    from mrepo.sim.geometry import euler, matrices

    a = np.asarray(sp.particles.angles, np.float64)
    mate = euler(matrices(a) @ symmetry_matrices("D2")[1])
    sp.particles = dataclasses.replace(sp.particles, angles=mate.astype(np.float32))
    assert pose_error_deg(pop, truth, "large") < 0.05
    with pytest.raises(InvalidInput):
        pose_error_deg(pop, truth, "nonexistent")


def test_plots(tiny, tmp_path):
    res, _, _ = tiny
    name = next(n for n, it in res.truth.items.items() if it.item.kind == "frames")
    for fn, out in ((plot_frame, tmp_path / "frame.png"), (plot_motion, tmp_path / "motion.png")):
        p = fn(res.path, name, out)
        data = p.read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 20000
    with pytest.raises(InvalidInput):
        plot_frame(res.path, next(n for n, it in res.truth.items.items() if it.item.kind == "tilts"), tmp_path / "t.png")


def test_presets_and_options():
    assert set(PRESETS) == {"tiny", "small", "paper"}
    small, tiny = PRESETS["small"], PRESETS["tiny"]
    assert small.n_frames == 40 and tiny.n_frames < small.n_frames
    assert small.tilt_angles()[0] == -60 and small.tilt_angles()[-1] == 60 and len(small.tilt_angles()) == 41
    with pytest.raises(InvalidInput):
        preset("huge")
    with pytest.raises(InvalidInput):
        preset("tiny", no_such_field=1)
    assert parse_species_option("large=0.6, small=0.35,rare=0.05") == {"large": 0.6, "small": 0.35, "rare": 0.05}
    for bad in ("large", "large=x", "giant=1", "large=-1", "large=0"):
        with pytest.raises(InvalidInput):
            parse_species_option(bad)
    cfg = preset("small", species={"small": 1.0, "large": 3.0})
    assert [s.name for s in cfg.species] == ["small", "large"] and cfg.proportions()["large"] == 0.75
    with pytest.raises(InvalidInput):
        preset("tiny", snr=-1.0)
