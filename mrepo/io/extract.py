"""Particle images from stored raw frames: ``mrepo export relion --extract BOX``.

Positions follow Warp's frame-series model (``Movie.GetPositionInAllFrames``,
warpem/warp e321344): the particle at ``c`` (Å) sits in frame f at

    c − GridMovement(c/D, t_f) − GridLocalMovement(c/D, t_f) − Σ_i PyramidShift_i(c/D, t_f)

with ``D`` the frame size in Å and ``t_f = f / (n − 1)``. Warp's grids are
cubic B-splines through their control points (einspline, natural boundary
conditions) on ``[margin, 1 − margin]`` along each axis; mrepo evaluates the
same interpolating spline (clamped outside that range). Frames are cropped at
the integer position, shifted by the sub-pixel rest in Fourier space, and
averaged (a plain sum when the item has no motion grids). Images are then
inverted (dark protein → white, as RELION expects) and normalised to mean 0,
standard deviation 1 outside the particle radius, as ``relion_preprocess``
does. A particle's CTF is the item's, with the local defocus of ``GridCTF``
(µm) when that grid holds values.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from ..errors import InvalidInput
from ..model import CubicGrid, Item, defocus_at, motion_grid_pairs, motion_shifts, natural_spline_weights

__all__ = [
    "natural_spline_weights",
    "evaluate_grid",
    "frame_shifts",
    "frame_positions",
    "particle_defocus",
    "extract_particles",
    "background_normalise",
]



def evaluate_grid(grid: CubicGrid, x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
    """Values of a grid at normalised positions (each in [0, 1]); (N,) float64."""
    return grid.evaluate(x, y, z)


def frame_shifts(item: Item, xy_angstrom: np.ndarray) -> np.ndarray:
    """(N, n, 2) motion grids' values (Å) at points ``xy_angstrom`` (N, 2) in each of the
    item's n frames: what Warp subtracts from the positions there."""
    n = item.n
    xy = np.asarray(xy_angstrom, np.float64).reshape(-1, 2)
    size = np.array([item.shape[2], item.shape[1]], np.float64) * item.imaging.pixel_size_angstrom
    norm = xy / size
    t = np.arange(n) / max(1, n - 1)
    out = motion_shifts(motion_grid_pairs(item.grids), np.repeat(norm[:, 0], n), np.repeat(norm[:, 1], n), np.tile(t, len(xy)))
    return out.reshape(len(xy), n, 2)


def frame_positions(item: Item, coordinates_angstrom: np.ndarray) -> np.ndarray:
    """(N, n, 2) x, y (Å) of particles in each frame of a frame-series item.

    ``coordinates_angstrom`` is (N, T, 3) (T temporal samples, interpolated
    linearly over the exposure) or (N, 3).
    """
    c = np.asarray(coordinates_angstrom, np.float64)
    if c.ndim == 2:
        c = c[:, None, :]
    n = item.n
    t = np.arange(n) / max(1, n - 1)
    if c.shape[1] == 1:
        per_frame = np.repeat(c[:, :, :2], n, axis=1)
    else:
        ts = np.linspace(0, 1, c.shape[1])
        per_frame = np.stack([np.stack([np.interp(t, ts, c[p, :, k]) for k in range(2)], axis=-1) for p in range(len(c))])
    mean_xy = c[:, :, :2].mean(axis=1)
    return per_frame - frame_shifts(item, mean_xy)


def particle_defocus(item: Item, coordinates_angstrom: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(defocus U, defocus V in Å, angle in degrees) of each particle (N, 3) or (N, T, 3) at
    mid-exposure: the item's defocus there (:func:`mrepo.model.defocus_at`: ``GridCTF`` (µm)
    where it holds values, else the imaging model's, plus ``GridCTFDoming``; astigmatism
    from ``GridCTFDefocusDelta``/``Angle`` or the imaging model) plus the particle's z (Å)."""
    c = np.asarray(coordinates_angstrom, np.float64)
    if c.ndim == 3:
        c = c.mean(axis=1)
    size = np.array([item.shape[2], item.shape[1]], np.float64) * item.imaging.pixel_size_angstrom
    u, v, angle = defocus_at(item, c[:, 0] / size[0], c[:, 1] / size[1], np.full(len(c), 0.5))
    return u + c[:, 2], v + c[:, 2], angle


def background_normalise(images: np.ndarray, radius_px: float) -> np.ndarray:
    """Mean 0 and standard deviation 1 outside a centred circle of ``radius_px`` (in place)."""
    box = images.shape[-1]
    yy, xx = np.mgrid[:box, :box] - box // 2
    outside = (xx**2 + yy**2) > radius_px**2
    if not outside.any():
        outside[:] = True
    bg = images[:, outside]
    mean = bg.mean(axis=1)
    std = bg.std(axis=1)
    std[std == 0] = 1.0
    images -= mean[:, None, None]
    images /= std[:, None, None]
    return images


def extract_particles(
    raw: Any,
    positions_px: np.ndarray,
    box: int,
    *,
    use: np.ndarray | None = None,
    invert: bool = True,
    radius_px: float | None = None,
    progress: Callable[[int], None] | None = None,
) -> np.ndarray:
    """Average the particles' boxes over the frames of one item.

    Parameters
    ----------
    raw:
        (n, y, x) frames (numpy, memmap or zarr array; read one frame at a time).
    positions_px:
        (N, n, 2) x, y of each particle in each frame, px (0-based, the box
        centre lands on index ``box // 2`` as in RELION's extraction).
    box:
        Box edge in px (even).
    use:
        (n,) bool, frames to average (default all).
    radius_px:
        Background radius for normalisation (default 3/8 of the box); None and
        ``invert=False`` together leave the average as it is.

    Returns
    -------
    (N, box, box) float32 images.
    """
    if box < 8 or box % 2:
        raise InvalidInput(f"box must be an even number ≥ 8, got {box}")
    n = int(raw.shape[0])
    pos = np.asarray(positions_px, np.float64)
    N = pos.shape[0]
    use = np.ones(n, bool) if use is None else np.asarray(use, bool)
    pad = 4
    big = box + 2 * pad
    k = np.fft.fftfreq(big)
    acc = np.zeros((N, box, box), np.float64)
    used = 0
    half = box // 2
    for f in range(n):
        if not use[f]:
            continue
        frame = np.asarray(raw[f], np.float32)
        fill = float(frame.mean())
        padded = np.pad(frame, big, mode="constant", constant_values=fill)
        ip = np.floor(pos[:, f, :]).astype(np.int64)
        frac = pos[:, f, :] - ip
        x0 = ip[:, 0] - half - pad + big
        y0 = ip[:, 1] - half - pad + big
        ok = (x0 >= 0) & (y0 >= 0) & (x0 + big <= padded.shape[1]) & (y0 + big <= padded.shape[0])
        for start in range(0, N, 256):
            sel = np.arange(start, min(N, start + 256))
            crops = np.full((len(sel), big, big), fill, np.float32)
            for j, p in enumerate(sel):
                if ok[p]:
                    crops[j] = padded[y0[p] : y0[p] + big, x0[p] : x0[p] + big]
            fx = frac[sel, 0][:, None, None] * k[None, None, :]
            fy = frac[sel, 1][:, None, None] * k[None, :, None]
            shifted = np.fft.ifft2(np.fft.fft2(crops) * np.exp(2j * np.pi * (fx + fy))).real
            acc[sel] += shifted[:, pad : pad + box, pad : pad + box]
        used += 1
        if progress:
            progress(1)
    if used == 0:
        raise InvalidInput("no frame is marked as used")
    out = (acc / used).astype(np.float32)
    if invert:
        out *= -1
    if radius_px is not None or invert:
        background_normalise(out, radius_px if radius_px is not None else 0.375 * box)
    return out
