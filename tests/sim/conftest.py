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
#: for its true-parameter reconstruction to reach Nyquist.
NOISELESS = dict(snr=None, n_movies=3, particles_per_movie=24, n_frames=4, tilt_step_deg=30.0,
                 particles_per_tilt_series=6)


@pytest.fixture(scope="session")
def noiseless(tmp_path_factory):
    out = tmp_path_factory.mktemp("sim") / "noiseless"
    return simulate(out, config=preset("tiny", **NOISELESS), seed=5, progress=False)


@pytest.fixture(autouse=True)
def _threads():
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)
