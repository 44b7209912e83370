"""Local resolution from windowed FSC of the half-maps (mrepo.refine.localres)."""

from __future__ import annotations

import numpy as np
import pytest

from mrepo.errors import InvalidInput
from mrepo.refine.localres import default_window_px, local_resolution, plot_local_resolution
from mrepo.refine.phantom import pseudo_atomic_phantom


@pytest.fixture(scope="module")
def phantom():
    return pseudo_atomic_phantom(48, 1.6, core_radii_angstrom=(14, 12, 12), domain_radii_angstrom=(11, 10, 10),
                                 atom_density=1 / 40, atom_sigma_angstrom=1.2, flex_shift_angstrom=2.5,
                                 flex_rotation_deg=5.0, noise_std=1.0, seed=1)


def test_flexible_domain_has_worse_local_resolution_than_the_core(phantom):
    p = phantom
    lr = local_resolution(p.half1, p.half2, p.pixel_size_angstrom)
    assert lr.map.shape == p.truth.shape and lr.map.dtype == np.float32
    core = float(np.median(lr.map[p.core_mask]))
    domain = float(np.median(lr.map[p.domain_mask]))
    assert core + 1.5 < domain, (core, domain)
    # bounded by the finest band (near Nyquist) and the window
    assert lr.map.min() >= 1 / lr.band_freqs_per_angstrom[-1] - 1e-4
    assert lr.map.max() <= lr.window_px * p.pixel_size_angstrom + 1e-4


def test_limits_identical_halves_and_pure_noise():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(32, 32, 32)).astype(np.float32)
    b = rng.normal(size=(32, 32, 32)).astype(np.float32)
    same = local_resolution(a, a, 2.0, window_px=12)
    assert np.allclose(same.map, 1 / same.band_freqs_per_angstrom[-1])  # agrees at every band: finest value
    noise = local_resolution(a, b, 2.0, window_px=12)
    finest = 1 / noise.band_freqs_per_angstrom[-1]
    assert np.median(noise.map) > 3 * finest  # independent noise agrees nowhere
    with pytest.raises(InvalidInput):
        local_resolution(a, b[:, :, :31], 2.0)
    with pytest.raises(InvalidInput):
        local_resolution(a, b, 2.0, window_px=40)


def test_default_window_is_about_24_angstrom():
    assert default_window_px(128, 1.0) == 24
    assert default_window_px(64, 4.0) == 12
    assert default_window_px(20, 1.0) == 10  # at most half the box


def test_png_of_central_slices(phantom, tmp_path):
    p = phantom
    lr = local_resolution(p.half1, p.half2, p.pixel_size_angstrom)
    path = plot_local_resolution(p.expected, lr.map, tmp_path / "lr.png", pixel_size_angstrom=1.6, title="phantom")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 5000
    with pytest.raises(InvalidInput):
        plot_local_resolution(p.expected, lr.map[:-1], tmp_path / "x.png")
