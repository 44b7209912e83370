"""Simulated populations shared by the simulator's tests (built once per session)."""

from __future__ import annotations

import time

import pytest
import torch

from mrepo.sim import preset, simulate


@pytest.fixture(scope="session")
def tiny(tmp_path_factory):
    """The ``tiny`` preset, seed 1, with its build time: (SimResult, wall s, CPU s)."""
    out = tmp_path_factory.mktemp("sim") / "tiny"
    w0, c0 = time.perf_counter(), time.process_time()
    res = simulate(out, "tiny", 1, progress=False)
    return res, time.perf_counter() - w0, time.process_time() - c0


#: Noiseless variant of tiny with more, shorter movies: enough views of the large species
#: for its true-parameter reconstruction to reach Nyquist. Without anisotropic magnification and
#: intra-frame blur: the simulator's reconstruction (mrepo.sim.reconstruct) models neither, so
#: with them its "true-parameter" map is not one with all true parameters (measured: FSC against
#: the truth 0.897 instead of 0.939 at its worst shell up to 0.9 Nyquist, mostly from the blur of
#: 3 of these 4 frames). Doming stays on: the reconstruction does model it (frame_records).
NOISELESS = dict(snr=None, n_movies=3, particles_per_movie=24, n_frames=4, tilt_step_deg=30.0,
                 particles_per_tilt_series=6, mag_anisotropy=0.0, blur_frames=0)


@pytest.fixture(scope="session")
def noiseless(tmp_path_factory):
    out = tmp_path_factory.mktemp("sim") / "noiseless"
    return simulate(out, config=preset("tiny", **NOISELESS), seed=5, progress=False)


@pytest.fixture(autouse=True)
def _threads():
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)
