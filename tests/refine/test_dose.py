"""Exposure weighting and the per-frame Fourier crop."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from mrepo.errors import InvalidInput
from mrepo.refine.dose import dose_bfactor, dose_crop_box, dose_crop_frequency, dose_weights
from mrepo.refine.fourier import fourier_crop_rfft2, freq_grid_2d


def test_dose_weights_formula():
    box, px = 64, 1.2
    d = torch.tensor([0.0, 2.5, 10.0, 40.0])
    w = dose_weights(d, box, px, dtype=torch.float64)
    assert w.shape == (4, box, box // 2 + 1)
    ky, kx = np.meshgrid(np.fft.fftfreq(box, px), np.arange(box // 2 + 1) / (box * px), indexing="ij")
    for i, di in enumerate(d.tolist()):
        np.testing.assert_allclose(w[i].numpy(), np.exp(-4.0 * di * (kx**2 + ky**2) / 4.0), rtol=1e-12)
    np.testing.assert_allclose(dose_bfactor(d).numpy(), [0.0, 10.0, 40.0, 160.0])
    assert float(w[0].min()) == 1.0  # no exposure, no damping
    with pytest.raises(InvalidInput):
        dose_weights(-1.0, box, px)


def test_crop_frequency_is_where_the_weight_reaches_the_threshold():
    d = np.array([1.0, 5.0, 20.0, 60.0])
    f = dose_crop_frequency(d)
    np.testing.assert_allclose(np.exp(-4.0 * d * f**2 / 4.0), 0.25, rtol=1e-12)
    # with B = 4 Å²/(e⁻/Å²): f = sqrt(ln 4 / d) = 2·sqrt(ln 4 / (B d)), twice DESIGN's literal formula
    np.testing.assert_allclose(f, np.sqrt(math.log(4) / d))
    np.testing.assert_allclose(dose_crop_frequency(d, design_formula=True), np.sqrt(math.log(4) / (4 * d)))
    np.testing.assert_allclose(dose_crop_frequency(d, threshold=0.5, b_per_exposure=2.0),
                               np.sqrt(4 * math.log(2) / (2 * d)))
    assert np.isinf(dose_crop_frequency(0.0))


def test_crop_box_keeps_every_frequency_above_threshold_and_no_more_than_needed():
    box, px = 128, 1.0
    d = np.array([0.0, 0.5, 2.0, 8.0, 30.0, 90.0])
    sizes = dose_crop_box(d, box, px)
    assert sizes.dtype == np.int64 and sizes[0] == box
    assert np.all(np.diff(sizes) <= 0) and np.all(sizes % 2 == 0)
    for di, c in zip(d, sizes):
        w = dose_weights(float(di), box, px, dtype=torch.float64)
        ky, kx = freq_grid_2d(box, dtype=torch.float64)
        needed = (w >= 0.25) & (kx.abs() <= box // 2)
        kept = fourier_crop_rfft2(torch.ones(box, box // 2 + 1), int(c))
        # every needed frequency is inside the crop ...
        assert int(needed.sum()) == int((fourier_crop_rfft2(needed.double(), int(c))).sum())
        assert kept.shape == (c, c // 2 + 1)
        # ... and a crop 2 px smaller would drop some (unless at the minimum or full size)
        if 4 < c < box:
            assert int(fourier_crop_rfft2(needed.double(), int(c) - 2).sum()) < int(needed.sum())
    assert dose_crop_box(1e6, box, px)[()] == 4
