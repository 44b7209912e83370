"""Geometry conventions of simulated (and refined) series, shared by renderer, extractor and metrics.

Frame series
------------
* Particle coordinates are (x, y, z) in Å; (x, y) from the centre of pixel
  (0, 0) of the frame (pixel index = coordinate / pixel size, x along the
  last array axis, y along rows); z is the particle's defocus offset:
  its defocus is the item's ``defocus ± astigmatism`` plus z (positive =
  more underfocus).
* Trajectories: T temporal control points per particle, natural cubic
  spline over the normalised time ``t_i = i / (F − 1)`` of frame i
  (:func:`mrepo.refine.deformation.spline_basis`). Euler angles are
  interpolated component by component.
* Position of particle p in frame i (Å):
  ``λ_p(t_i) − Σ_grids G(x̂_p, ŷ_p, t_i)``, the grids (the item's
  ``GridMovementX/Y``, ``GridLocalMovementX/Y``, ``PyramidShiftX/Y_i`` and, in the
  ground truth, the true pyramid) evaluated at the particle's first
  control point, normalised over the field of view:
  ``x̂ = x / (s W)``, ``ŷ = y / (s H)``, clipped to [0, 1].
  A positive grid value moves the particle towards −x / −y: this is Warp's
  convention (``Movie.GetPositionInAllFrames`` subtracts ``GridMovementX/Y``,
  ``GridLocalMovementX/Y`` and ``PyramidShiftX/Y``), so grids read from or written to
  Warp/M XML mean the same thing here.
* Orientation: RELION's ZYZ Euler angles of the matrix ``A`` that maps map
  coordinates to image coordinates (:mod:`mrepo.refine.euler`).

Tilt series
-----------
* Particle coordinates (x, y, z) in Å in the specimen: (x, y) as in the
  untilted image, z the height above the specimen's mid-plane. The tilt
  centre is ``c = (s (W − 1)/2, s (H − 1)/2, 0)``.
* Stage rotation of tilt i: ``M_i = E_i · R(axis_i, θ_i)``, with ``R`` the
  right-handed rotation by the tilt angle θ_i about the in-plane axis at
  ``tilt_axis_deg`` from x towards y, and ``E_i = Rz(ωz) Ry(ωy) Rx(ωx)`` the
  per-tilt angle error (active rotations, degrees).
* Position in tilt i: ``(M_i (r − c))_xy + c_xy + offset_i + warp_i(x̂, ŷ)``,
  ``offset_i`` = ``tilt_axis_offset_angstrom[i]`` and ``warp_i`` the image-warp
  grid evaluated at the normalised tilted position and time ``t_i`` (tilt
  index in the stack, ordered by angle).
* Defocus in tilt i: the tilt's defocus plus the height ``(M_i (r − c))_z``.
* Orientation in tilt i: ``A_i = M_i · A_p`` (``A_p`` the particle's RELION matrix).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch

from ..model import CubicGrid, motion_grid_pairs, motion_shifts
from ..refine.deformation import normalised_time, spline_basis
from ..refine.euler import euler_to_matrix, matrix_to_euler
from ..refine.symmetry import symmetry_matrices

__all__ = [
    "time_basis",
    "interp_trajectory",
    "normalised_xy",
    "item_motion_grids",
    "eval_grid_pairs",
    "frame_positions",
    "axis_rotation",
    "stage_matrices",
    "tilt_projection",
    "random_rotations",
    "small_rotations",
    "rotation_angle_deg",
    "euler",
    "matrices",
]



def time_basis(n_frames: int, samples: int) -> np.ndarray:
    """(F, T) spline weights taking T control points to F frames (float64)."""
    return spline_basis(normalised_time(n_frames, dtype=torch.float64).numpy(), samples, dtype=torch.float64).numpy()


def interp_trajectory(values: np.ndarray, n_frames: int) -> np.ndarray:
    """(N, T, C) control points -> (N, F, C) values in every frame."""
    v = np.asarray(values, np.float64)
    return np.einsum("ft,ntc->nfc", time_basis(n_frames, v.shape[1]), v)


def normalised_xy(coords_angstrom: np.ndarray, shape_px: Sequence[int], pixel_size_angstrom: float) -> tuple[np.ndarray, np.ndarray]:
    """Normalised (x̂, ŷ) in [0, 1] of (…, 2+) Å coordinates in a (…, H, W) image: divided by
    the image's size in Å (W·s, H·s), as Warp does (``coords / ImageDimensionsPhysical``)."""
    h, w = int(shape_px[-2]), int(shape_px[-1])
    c = np.asarray(coords_angstrom, np.float64)
    x = c[..., 0] / (pixel_size_angstrom * max(1, w))
    y = c[..., 1] / (pixel_size_angstrom * max(1, h))
    return np.clip(x, 0.0, 1.0), np.clip(y, 0.0, 1.0)


def item_motion_grids(item) -> list[tuple[CubicGrid, CubicGrid]]:
    """The (x, y) motion grid pairs of an item, in Warp's order (:func:`mrepo.model.motion_grid_pairs`)."""
    return motion_grid_pairs(item.grids)


def _as_grid(g) -> CubicGrid:
    if isinstance(g, CubicGrid):
        return g
    v = np.asarray(g)
    return CubicGrid((v.shape[2], v.shape[1], v.shape[0]), v)


def eval_grid_pairs(grids: Sequence[tuple], x: np.ndarray, y: np.ndarray, t: np.ndarray) -> np.ndarray:
    """(M, 2) summed (x, y) values of grid pairs (CubicGrids, or (Z, Y, X) value arrays without
    margins) at normalised points (float64)."""
    return motion_shifts([(_as_grid(gx), _as_grid(gy)) for gx, gy in grids], np.asarray(x), np.asarray(y), np.asarray(t))


def frame_positions(coords: np.ndarray, n_frames: int, shape_px: Sequence[int], pixel_size_angstrom: float,
                    grids: Sequence[tuple[np.ndarray, np.ndarray]] = ()) -> np.ndarray:
    """(N, F, 2) particle positions (Å) in every frame of a frame series: trajectory minus
    the grids' shifts (Warp's sign; see the module docstring)."""
    c = np.asarray(coords, np.float64)
    pos = interp_trajectory(c[..., :2], n_frames)
    n = c.shape[0]
    if grids and n:
        x, y = normalised_xy(c[:, 0, :2], shape_px, pixel_size_angstrom)
        t = normalised_time(n_frames, dtype=torch.float64).numpy()
        shift = eval_grid_pairs(grids, np.repeat(x, n_frames), np.repeat(y, n_frames), np.tile(t, n))
        pos = pos - shift.reshape(n, n_frames, 2)
    return pos


# ---------------------------------------------------------------------------- rotations
def axis_rotation(axis: np.ndarray, angle_rad: np.ndarray) -> np.ndarray:
    """(..., 3, 3) right-handed (active) rotations about unit axes (…, 3) by angles (…)."""
    a = np.asarray(axis, np.float64)
    a = a / np.linalg.norm(a, axis=-1, keepdims=True)
    th = np.asarray(angle_rad, np.float64)
    x, y, z = a[..., 0], a[..., 1], a[..., 2]
    c, s = np.cos(th), np.sin(th)
    C = 1 - c
    return np.stack([
        np.stack([c + x * x * C, x * y * C - z * s, x * z * C + y * s], -1),
        np.stack([y * x * C + z * s, c + y * y * C, y * z * C - x * s], -1),
        np.stack([z * x * C - y * s, z * y * C + x * s, c + z * z * C], -1),
    ], -2)


def _rotvec_matrices(rotvec: np.ndarray) -> np.ndarray:
    v = np.asarray(rotvec, np.float64)
    ang = np.linalg.norm(v, axis=-1)
    axis = np.where(ang[..., None] > 0, v / np.maximum(ang, 1e-300)[..., None], np.array([0.0, 0.0, 1.0]))
    return axis_rotation(axis, ang)


def stage_matrices(tilt_deg: np.ndarray, axis_deg: np.ndarray, errors_deg: np.ndarray | None = None) -> np.ndarray:
    """(n, 3, 3) stage rotations ``M_i = E_i · R(axis_i, θ_i)`` (see the module docstring)."""
    t = np.deg2rad(np.asarray(tilt_deg, np.float64))
    ax = np.deg2rad(np.broadcast_to(np.asarray(axis_deg, np.float64), t.shape))
    axis = np.stack([np.cos(ax), np.sin(ax), np.zeros_like(ax)], -1)
    m = axis_rotation(axis, t)
    if errors_deg is not None:
        e = np.deg2rad(np.asarray(errors_deg, np.float64))
        ex = axis_rotation(np.array([1.0, 0, 0]), e[:, 0])
        ey = axis_rotation(np.array([0, 1.0, 0]), e[:, 1])
        ez = axis_rotation(np.array([0, 0, 1.0]), e[:, 2])
        m = ez @ ey @ ex @ m
    return m


def tilt_projection(coords: np.ndarray, stage: np.ndarray, shape_px: Sequence[int], pixel_size_angstrom: float,
                    offsets_angstrom: np.ndarray | None = None, warp: tuple[np.ndarray, np.ndarray] | None = None
                    ) -> tuple[np.ndarray, np.ndarray]:
    """Positions (N, n, 2) Å and heights (N, n) Å of specimen points (N, 3) in every tilt."""
    h, w = int(shape_px[-2]), int(shape_px[-1])
    s = float(pixel_size_angstrom)
    centre = np.array([s * (w - 1) / 2, s * (h - 1) / 2, 0.0])
    rel = np.asarray(coords, np.float64)[:, :3] - centre
    tilted = np.einsum("tij,nj->nti", stage, rel)  # (N, n, 3)
    pos = tilted[..., :2] + centre[:2]
    if offsets_angstrom is not None:
        pos = pos + np.asarray(offsets_angstrom, np.float64)[None]
    if warp is not None and len(pos):
        n, nt = pos.shape[:2]
        x, y = normalised_xy(pos, shape_px, s)
        t = normalised_time(nt, dtype=torch.float64).numpy()
        d = eval_grid_pairs([warp], x.reshape(-1), y.reshape(-1), np.tile(t, n))
        pos = pos + d.reshape(n, nt, 2)
    return pos, tilted[..., 2]


def random_rotations(n: int, rng: np.random.Generator) -> np.ndarray:
    """(n, 3, 3) rotations uniform over SO(3) (normalised Gaussian quaternions)."""
    q = rng.normal(size=(n, 4))
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    w, x, y, z = q.T
    return np.stack([
        np.stack([1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)], -1),
        np.stack([2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)], -1),
        np.stack([2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)], -1),
    ], -2)


def small_rotations(n: int, rms_deg: float, rng: np.random.Generator) -> np.ndarray:
    """(n, 3, 3) random rotations whose angles have the RMS ``rms_deg`` (isotropic rotation vectors)."""
    v = rng.normal(scale=math.radians(rms_deg) / math.sqrt(3.0), size=(n, 3))
    return _rotvec_matrices(v)


def rotation_angle_deg(a: np.ndarray, b: np.ndarray, symmetry: str = "C1") -> np.ndarray:
    """(…,) angle (deg) of the rotation between RELION matrices ``a`` and ``b`` (…, 3, 3),
    the smallest over the point group (``b`` and ``b·S`` image the same map)."""
    ops = symmetry_matrices(symmetry)
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    best = None
    for s in ops:
        r = np.einsum("...ij,...kj->...ik", a, b @ s)  # a (b s)ᵀ
        tr = np.clip((np.trace(r, axis1=-2, axis2=-1) - 1.0) / 2.0, -1.0, 1.0)
        ang = np.degrees(np.arccos(tr))
        best = ang if best is None else np.minimum(best, ang)
    return best


def matrices(angles_deg: np.ndarray) -> np.ndarray:
    """RELION matrices (…, 3, 3) of Euler angles (…, 3), float64."""
    return euler_to_matrix(torch.as_tensor(np.asarray(angles_deg, np.float64))).numpy()


def euler(mats: np.ndarray) -> np.ndarray:
    """RELION Euler angles (…, 3) (deg) of matrices (…, 3, 3), float64."""
    return matrix_to_euler(torch.as_tensor(np.asarray(mats, np.float64))).numpy()
