"""FSC, resolution at a threshold, and the FSC plot."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mrepo.errors import DegenerateResult, InvalidInput
from mrepo.refine.fsc import FscCurve, fsc, plot_fsc, resolution_at
from refine_helpers import random_map


def test_identical_maps_give_one_and_shell_frequencies():
    m = random_map(32, seed=1)
    c = fsc(m, m, 1.5)
    assert c.fsc.shape == (17,) and c.freqs_per_angstrom.shape == (17,)
    np.testing.assert_allclose(c.fsc, 1.0, atol=1e-12)
    np.testing.assert_allclose(c.freqs_per_angstrom, np.arange(17) / (32 * 1.5))
    # torch input, any scale: FSC is scale-invariant per shell
    c2 = fsc(torch.tensor(m), 3.0 * torch.tensor(m), 1.5)
    np.testing.assert_allclose(c2.fsc, 1.0, atol=1e-12)


def test_independent_noise_gives_about_zero():
    rng = np.random.default_rng(2)
    a, b = rng.standard_normal((2, 48, 48, 48))
    c = fsc(a, b)
    # shell r holds ~4πr² voxels: the FSC of independent noise has sd ~ 1/sqrt(4πr²)
    r = np.arange(4, 25)
    assert np.all(np.abs(c.fsc[r]) < 4 / np.sqrt(4 * np.pi * r**2))
    assert abs(c.fsc[4:].mean()) < 0.01


def test_signal_plus_noise_follows_snr():
    """Two copies of a white signal with independent white noise of equal power: FSC = SNR/(1+SNR) = 0.5."""
    rng = np.random.default_rng(3)
    s = rng.standard_normal((48, 48, 48))
    a = s + rng.standard_normal(s.shape)
    b = s + rng.standard_normal(s.shape)
    c = fsc(a, b)
    assert np.all(np.abs(c.fsc[6:] - 0.5) < 0.08)
    assert abs(c.fsc[6:].mean() - 0.5) < 0.01


def test_fsc_with_mask_and_2d_images():
    rng = np.random.default_rng(4)
    a = rng.standard_normal((40, 40))
    c = fsc(a, a, 2.0, mask=np.ones((40, 40)))
    np.testing.assert_allclose(c.fsc, 1.0, atol=1e-12)
    with pytest.raises(InvalidInput):
        fsc(a, rng.standard_normal((40, 41)))


def test_resolution_at_interpolates_the_crossing():
    freqs = np.arange(11) / 100.0  # 0 .. 0.1 1/Å
    values = np.array([1.0, 0.99, 0.95, 0.9, 0.7, 0.5, 0.3, 0.2, 0.1, 0.05, 0.0])
    # 0.143 lies between shells 7 (0.2) and 8 (0.1): f = 0.07 + 0.57·0.01
    assert resolution_at((freqs, values), 0.143) == pytest.approx(1 / 0.0757, rel=1e-9)
    assert resolution_at(FscCurve(freqs, values), 0.5) == pytest.approx(1 / 0.05, rel=1e-9)
    assert FscCurve(freqs, values).resolution(0.6) == pytest.approx(1 / 0.045, rel=1e-9)
    # the first crossing counts, not a later bump above the threshold
    bumpy = values.copy()
    bumpy[9] = 0.4
    assert resolution_at((freqs, bumpy), 0.143) == pytest.approx(1 / 0.0757, rel=1e-9)
    # never below: the last shell's resolution
    assert resolution_at((freqs, np.ones(11)), 0.143) == pytest.approx(10.0)
    with pytest.raises(DegenerateResult):
        resolution_at((freqs, np.r_[1.0, np.zeros(10)]), 0.143)


def test_plot_fsc_writes_a_png(tmp_path):
    m = random_map(24, seed=5)
    rng = np.random.default_rng(6)
    curves = {
        "half-maps": fsc(m + 0.1 * rng.standard_normal(m.shape), m + 0.1 * rng.standard_normal(m.shape), 2.0),
        "raw": (np.arange(13) / 48.0, np.linspace(1, 0, 13)),
    }
    out = plot_fsc(curves, tmp_path / "plots" / "fsc.png", title="test")
    data = out.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000
    with pytest.raises(InvalidInput):
        plot_fsc({}, tmp_path / "empty.png")
