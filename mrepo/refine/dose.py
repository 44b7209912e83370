"""Exposure (dose) weighting and the per-frame Fourier crop it allows.

Weight (M/Warp convention)
--------------------------
A frame (or tilt) recorded after an accumulated exposure ``d`` (e⁻/Å²) gets
the B-factor ``B = b · d`` with ``b = 4 Å²`` per e⁻/Å² (DESIGN §4), and the
amplitude weight

    w(k) = exp(−B |k|² / 4) = exp(−b d |k|² / 4)        (k in 1/Å)

the B-factor envelope of :mod:`mrepo.refine.ctf` (RELION's sign: positive B
dampens). This is what Warp/M do: ``GetRelevantImageSizes`` gives a frame
the CTF ``Bfactor = −4·d`` in Warp's own sign, whose envelope is
``exp(Bfactor·k²/4)``, and keeps the shells whose weight is above the
threshold (0.25 by default).

Fourier crop
------------
The weight falls below ``t`` (default 0.25) at

    f_max = sqrt(−4 ln t / B) = 2 · sqrt(ln 4 / (b d))  for t = 1/4.

DESIGN §4 writes ``f_max = sqrt(ln 4 / (B·d))``; that expression is the point
where ``exp(−B d k²)`` (no factor 1/4) reaches 0.25, i.e. where the weight
defined above is ``0.25^(1/4) ≈ 0.71`` — half the frequency, which would
discard frequencies that still carry more than a quarter of their signal.
This module keeps the definition the DESIGN states in words ("the frequency
where its dose weight falls below 0.25") with the weight above, and
:func:`dose_crop_frequency` is exact for it; ``design_formula=True`` gives
the literal DESIGN expression for comparison.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from ..errors import InvalidInput
from .fourier import freq_grid_2d

__all__ = [
    "B_PER_EXPOSURE_A2",
    "dose_bfactor",
    "dose_weights",
    "dose_crop_frequency",
    "dose_crop_box",
]

#: Default B-factor increase per unit of accumulated exposure (Å² per e⁻/Å²).
B_PER_EXPOSURE_A2 = 4.0


def _exposure(exposure_e_per_a2) -> torch.Tensor:
    d = torch.as_tensor(exposure_e_per_a2)
    if not d.is_floating_point():
        d = d.to(torch.float64)
    if bool((d < 0).any()):
        raise InvalidInput("accumulated exposure must be >= 0 (e⁻/Å²)", str(d.tolist()))
    return d


def dose_bfactor(exposure_e_per_a2, *, b_per_exposure: float = B_PER_EXPOSURE_A2) -> torch.Tensor:
    """B-factor (Å², positive dampens) of a frame after an accumulated exposure (e⁻/Å²)."""
    return b_per_exposure * _exposure(exposure_e_per_a2)


def dose_weights(
    exposure_e_per_a2,
    box: int,
    pixel_size_angstrom: float,
    *,
    b_per_exposure: float = B_PER_EXPOSURE_A2,
    rfft: bool = True,
    device=None,
    dtype=torch.float32,
) -> torch.Tensor:
    """Amplitude weights ``exp(−b d |k|²/4)`` on the Fourier grid of a ``box``-pixel image.

    Parameters
    ----------
    exposure_e_per_a2: accumulated exposure ``d`` per frame, shape ``E`` (scalar or ``(F,)``).
    box, pixel_size_angstrom: image size (px) and pixel size (Å/px).
    b_per_exposure: ``b`` (Å² per e⁻/Å²).
    rfft: half layout (default) or full.

    Returns
    -------
    ``(*E, box, box // 2 + 1)`` (or ``(*E, box, box)``) real weights in (0, 1].
    """
    d = _exposure(exposure_e_per_a2).to(device=device, dtype=dtype)
    ky, kx = freq_grid_2d(box, pixel_size_angstrom, rfft=rfft, device=device, dtype=dtype)
    k2 = kx * kx + ky * ky
    return torch.exp(-0.25 * b_per_exposure * d.reshape(d.shape + (1, 1)) * k2)


def dose_crop_frequency(
    exposure_e_per_a2,
    *,
    b_per_exposure: float = B_PER_EXPOSURE_A2,
    threshold: float = 0.25,
    design_formula: bool = False,
) -> np.ndarray:
    """Frequency (1/Å) beyond which a frame's dose weight is below ``threshold``.

    ``sqrt(−4 ln(threshold) / (b d))`` (``inf`` for ``d = 0``). With
    ``design_formula=True``: DESIGN §4's literal ``sqrt(ln 4 / (b d))`` (see the
    module docstring for why it differs by a factor 2).
    """
    if not 0 < threshold < 1:
        raise InvalidInput("weight threshold must be in (0, 1)", str(threshold))
    d = _exposure(exposure_e_per_a2).to(torch.float64).numpy()
    with np.errstate(divide="ignore"):
        if design_formula:
            return np.sqrt(math.log(4.0) / (b_per_exposure * d))
        return np.sqrt(-4.0 * math.log(threshold) / (b_per_exposure * d))


def dose_crop_box(
    exposure_e_per_a2,
    box: int,
    pixel_size_angstrom: float,
    *,
    b_per_exposure: float = B_PER_EXPOSURE_A2,
    threshold: float = 0.25,
    min_box: int = 4,
) -> np.ndarray:
    """Per-frame Fourier-crop size (even, px) keeping every frequency whose weight is ≥ ``threshold``.

    The crop keeps the frequency step ``1/(box·s)`` of the full box and the
    indices ``-c/2 <= k <= c/2 - 1`` (see :func:`mrepo.refine.fourier.fourier_crop_rfft2`);
    every index with ``|k| <= r = f_max · box · s`` is kept when
    ``c = 2·(floor(r) + 1)``, limited to ``[min_box, box]``.

    Returns an integer array of the exposure's shape.
    """
    f = dose_crop_frequency(exposure_e_per_a2, b_per_exposure=b_per_exposure, threshold=threshold)
    r = np.minimum(f * box * pixel_size_angstrom, box / 2.0)
    c = 2 * (np.floor(r) + 1)  # r is finite: f = inf (no exposure) is capped at box/2
    return np.clip(c, min(min_box, box), box).astype(np.int64)
