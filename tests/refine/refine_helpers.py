"""Shared helpers for the forward-model tests (mrepo.refine); imported by the test modules."""

from __future__ import annotations

import numpy as np
from scipy import ndimage


def random_map(box: int, *, sigma_px: float = 0.7, radius_frac: float = 0.4, seed: int = 0) -> np.ndarray:
    """A random smooth map: Gaussian-filtered white noise inside a soft sphere, float64 (z, y, x)."""
    rng = np.random.default_rng(seed)
    v = ndimage.gaussian_filter(rng.standard_normal((box,) * 3), sigma_px)
    z, y, x = np.mgrid[:box, :box, :box] - box // 2
    r = np.sqrt(x * x + y * y + z * z)
    return v * np.clip((radius_frac * box - r) / 3.0, 0.0, 1.0)


def lowpass(volume: np.ndarray, radius_px: float) -> np.ndarray:
    """Keep the Fourier components of ``volume`` with ``|k| < radius_px`` (sharp cut)."""
    n = volume.shape[0]
    f = np.fft.rfftn(volume)
    k = np.fft.fftfreq(n) * n
    kx = np.arange(n // 2 + 1)
    r2 = k[:, None, None] ** 2 + k[None, :, None] ** 2 + kx[None, None, :] ** 2
    return np.fft.irfftn(f * (r2 < radius_px**2), s=volume.shape, axes=(0, 1, 2))


def random_euler(n: int, seed: int = 0) -> np.ndarray:
    """``(n, 3)`` RELION (rot, tilt, psi) in degrees, uniform over rotations."""
    rng = np.random.default_rng(seed)
    rot = rng.uniform(-180, 180, n)
    tilt = np.degrees(np.arccos(rng.uniform(-1, 1, n)))
    psi = rng.uniform(-180, 180, n)
    return np.stack([rot, tilt, psi], axis=1)
