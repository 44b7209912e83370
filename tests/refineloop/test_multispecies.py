"""M's multi-species benefit (Tegunov et al. 2021, Extended Data Fig. 2) on simulated data.

A species holding 5% of the particles shares its series with a 95% species.
Refined alone, its particles must determine the series' motion by
themselves; co-refined, the motion is determined by all particles. Each
species is reconstructed only from its own particles, so the rare species'
map improves only through the shared motion. The simulation plants strong
local beam-induced motion that the imported model lacks, and small pose
errors, so that motion is what limits the rare species.
"""

from __future__ import annotations

import copy

import pytest
import torch

import mrepo
from mrepo.refine.run import RefineOptions, apply_models, collect_series, refine_repository
from mrepo.sim import fsc_to_truth, load_truth, motion_rmse_px, preset, simulate

CONFIG = dict(species={"large": 0.95, "rare": 0.05}, n_movies=16, particles_per_movie=48, frame_shape_px=(512, 512),
              n_tilt_series=0, local_motion_angstrom=8.0, pose_shift_error_px=0.5, pose_angle_error_deg=1.0)


def _refine(repo, truth, names):
    out = refine_repository(repo, RefineOptions(iterations=2, species=names, denoise=False), commit=False)
    pop = copy.deepcopy(repo.population("HEAD"))
    parts = {n: pop.species[n].particles.load() for n in names}
    series, items_of = collect_series(repo.snapshot("HEAD"), pop, list(names), parts, device=torch.device("cpu"))
    apply_models(pop, parts, series, out.models, items_of, list(names), 1)
    h1, h2 = out.maps["rare"]
    vs_truth = fsc_to_truth((h1 + h2) / 2, truth.maps["rare"], truth.pixel_size_angstrom, truth.species["rare"].diameter_angstrom)
    return out.species["rare"], motion_rmse_px(pop, truth, "rare"), vs_truth.resolution(0.5)


def test_rare_species_gains_from_co_refinement(tmp_path):
    d = tmp_path / "sim"
    simulate(d, config=preset("tiny", **{k: v for k, v in CONFIG.items() if k != "species"}, species=CONFIG["species"]),
             seed=0, progress=False)
    repo = mrepo.open_repo(d)
    truth = load_truth(d)
    start = repo.population("HEAD")
    n_rare, n_all = len(start.species["rare"].particles), sum(len(s.particles) for s in start.species.values())
    assert 0.03 < n_rare / n_all < 0.07
    m0 = motion_rmse_px(start, truth, "rare")
    alone, m_alone, t_alone = _refine(repo, truth, ("rare",))
    both, m_both, t_both = _refine(repo, truth, ("large", "rare"))
    print(f"rare ({n_rare} of {n_all} particles): start {alone.resolution_before:.2f} Å, motion {m0:.3f} px; "
          f"alone {alone.resolution_after:.2f} Å (vs truth {t_alone:.2f} Å at 0.5), motion {m_alone:.3f} px; "
          f"co-refined {both.resolution_after:.2f} Å (vs truth {t_both:.2f} Å), motion {m_both:.3f} px")
    assert m_both < m_alone < m0
    assert both.resolution_after < alone.resolution_after
    assert t_both < t_alone
