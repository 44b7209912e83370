"""Per-frame exposure weights: the model, the Warp/M grids, and the fit to per-frequency NCC."""

from __future__ import annotations

import math

import numpy as np
import pytest

from mrepo.errors import DegenerateResult
from mrepo.model import Item, ImagingModel
from mrepo.refine.weights import FrameWeights, NccStats, bin_indices, fit_frame_weights


def _stats(w: FrameWeights, box: int, px: float, profile, fsc, rng, noise: float, sectors: int = 12) -> NccStats:
    """NCC sums whose ratio is profile(|k|) · w_f(k) in every (shell, sector) bin, plus noise."""
    _idx, k, psi = bin_indices(box, px, sectors)
    f = len(w)
    kk, pp = np.meshgrid(k, psi, indexing="ij")
    b = w.bfactor[:, None, None] + w.delta[:, None, None] * np.cos(2 * (pp[None] - np.radians(w.angle_deg)[:, None, None]))
    ncc = profile(k)[None, :, None] * w.scale[:, None, None] * np.exp(-0.25 * b * kk[None] ** 2)
    ncc = ncc + rng.normal(scale=noise, size=ncc.shape)
    ones = np.ones_like(ncc)
    return NccStats(ncc, ones, ones, k, psi, fsc(k))


def test_exposure_model_and_grids_round_trip():
    expo = np.arange(10) + 0.5
    w = FrameWeights.exposure(expo)
    np.testing.assert_allclose(w.bfactor, 4.0 * expo)
    t = w.weights(64, 1.5).numpy()
    k2 = (np.arange(33) / (64 * 1.5)) ** 2
    np.testing.assert_allclose(t[3, 0, :], np.exp(-w.bfactor[3] * k2 / 4), rtol=1e-5)
    # the fitted weights live in the item as Warp's grids, Warp's sign (negative B dampens)
    fit = FrameWeights(np.linspace(0, 30, 10), np.r_[20.0, 10.0, np.zeros(8)], np.full(10, 35.0), np.linspace(1, 0.8, 10))
    item = Item("m", "frames", "d", (10, 64, 64), ImagingModel(pixel_size_angstrom=1.5), np.arange(10.0), np.ones(10),
                grids=fit.to_grids())
    assert float(item.grids["GridDoseBfacs"].values.reshape(-1)[5]) == pytest.approx(-fit.bfactor[5], abs=1e-4)
    back = FrameWeights.from_item(item)
    for a, b in zip((back.bfactor, back.delta, back.angle_deg, back.scale), (fit.bfactor, fit.delta, fit.angle_deg, fit.scale)):
        np.testing.assert_allclose(a, b, atol=1e-4)
    assert FrameWeights.from_item(Item("m", "frames", "d", (10, 64, 64), ImagingModel(pixel_size_angstrom=1.5),
                                       np.arange(10.0), np.ones(10))) is None
    # anisotropy: more damping along the axis than across it
    wt = fit.weights(64, 1.5).numpy()[0]
    ky, kx = np.meshgrid(np.fft.fftfreq(64, d=1.5), np.arange(33) / (64 * 1.5), indexing="ij")
    r = np.hypot(kx, ky)
    ang = np.degrees(np.arctan2(ky, kx)) % 180
    ring = (r > 0.2) & (r < 0.25)
    along = ring & (np.abs(ang - 35) < 10)
    across = ring & (np.abs(ang - 125) < 10)
    assert wt[along].mean() < wt[across].mean()
    # the crop frequency follows the least damped direction: frame 0 (B 0, ΔB 20) never falls below 1/4
    kc = fit.crop_frequency()
    assert np.isinf(kc[0])
    assert kc[-1] == pytest.approx(math.sqrt(4 * math.log(fit.scale[-1] / 0.25) / fit.bfactor[-1]))


def test_fit_recovers_planted_anisotropy_sign_and_axis():
    rng = np.random.default_rng(1)
    f = 12
    delta = np.zeros(f)
    delta[:3] = [60.0, 40.0, 20.0]  # blur in the first frames, along 130°
    true = FrameWeights(np.linspace(0, 80, f) + np.r_[60.0, 40.0, 20.0, np.zeros(f - 3)], delta, np.full(f, 130.0),
                        np.linspace(1.0, 0.9, f))
    stats = [_stats(true, 96, 1.5, lambda k: 0.4 * np.exp(-30 * k * k), lambda k: np.clip(1.2 - 4 * k, 0, 1), rng, 0.003),
             _stats(true, 60, 1.5, lambda k: 0.2 * np.exp(-50 * k * k), lambda k: np.clip(1.0 - 5 * k, 0, 1), rng, 0.003)]
    fit = fit_frame_weights(stats)
    rel = true.bfactor - true.bfactor.min()
    np.testing.assert_allclose(fit.bfactor, rel, atol=6.0)
    for i in range(3):
        assert fit.delta[i] == pytest.approx(true.delta[i], abs=8.0)
        d = (fit.angle_deg[i] - 130.0 + 90) % 180 - 90
        assert abs(d) < 8.0
    assert np.all(fit.delta[4:] < 10.0)
    np.testing.assert_allclose(fit.scale, true.scale / true.scale.max(), atol=0.03)
    iso = fit_frame_weights(stats, anisotropic=False)
    assert np.all(iso.delta == 0)


def test_fit_without_signal_is_an_error():
    rng = np.random.default_rng(0)
    w = FrameWeights.exposure(np.arange(6) + 0.5)
    st = _stats(w, 64, 1.5, lambda k: 0.3 * np.ones_like(k), lambda k: np.zeros_like(k), rng, 0.01)
    with pytest.raises(DegenerateResult, match="no signal"):
        fit_frame_weights([st])
